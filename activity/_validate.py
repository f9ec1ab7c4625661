"""Validation: what a submission is, and whether it and a configuration may be accepted.

The first step of a call's flow. Everything here runs before anything is
accepted, and raises :class:`InvalidArgumentError` naming what was wrong, so a
refused call leaves nothing half-done (a refused coroutine object is closed).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from types import FunctionType
from typing import Any, Final, cast

from ._call import BLOCKING, COROUTINE, COROUTINE_FUNCTION, Kind
from ._config import ActivityConfig, Binding, ThreadPool
from ._errors import InvalidArgumentError
from ._hresult import HResult

__all__ = [
    "CO_COROUTINE",
    "CO_GENERATORS",
    "check_name",
    "check_services",
    "check_timeout",
    "classify",
    "is_async",
    "keywords_refused",
    "make_config",
    "refuse_coroutine",
]

#: The code flags that tell a coroutine function, and a generator of either kind.
CO_COROUTINE: Final = inspect.CO_COROUTINE
CO_GENERATORS: Final = inspect.CO_GENERATOR | inspect.CO_ASYNC_GENERATOR


def classify(fn: Any, args: tuple[Any, ...]) -> tuple[Kind, Any, Any]:
    """Decide how ``fn`` runs: (kind, body, object whose on_error observes failures)."""
    # The common case first, without inspect's unwrapping.
    if type(fn) is FunctionType:
        flags = fn.__code__.co_flags
        if flags & CO_COROUTINE:
            return COROUTINE_FUNCTION, fn, None
        if not flags & CO_GENERATORS:
            return BLOCKING, fn, None
    if inspect.iscoroutine(fn):
        if args:
            raise InvalidArgumentError(
                f"a coroutine object takes no arguments, got {len(args)} for {fn!r}",
                field="args",
                value=args,
            )
        return COROUTINE, fn, None
    on_call = getattr(fn, "on_call", None)
    if on_call is not None:
        if not callable(on_call):
            raise InvalidArgumentError(
                f"{fn!r} has an on_call attribute that is not callable", field="fn", value=fn
            )
        if args:
            raise InvalidArgumentError(
                f"an object with on_call() takes no arguments, got {len(args)}",
                field="args",
                value=args,
            )
        on_error = getattr(fn, "on_error", None)
        target = fn if callable(on_error) else None
        kind = COROUTINE_FUNCTION if is_async(on_call) else BLOCKING
        return kind, on_call, target
    if not callable(fn):
        raise InvalidArgumentError(
            "fn must be a coroutine function, a callable, an object with on_call() or a "
            f"coroutine object; got {type(fn).__name__} {fn!r}",
            field="fn",
            value=fn,
        )
    if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
        raise InvalidArgumentError(
            f"{fn!r} is a generator function; wrap it in a function that consumes it",
            field="fn",
            value=fn,
        )
    return (COROUTINE_FUNCTION if is_async(fn) else BLOCKING), fn, None


def is_async(fn: Any) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(type(cast("object", fn)), "__call__", None)  # noqa: B004 - an object with an async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def check_timeout(timeout: Any, default: float | None) -> float | None:
    if timeout is None:
        return default
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or math.isnan(timeout)
        or timeout <= 0
    ):
        raise InvalidArgumentError(
            f"timeout must be a positive number of seconds or None, got {timeout!r}",
            field="timeout",
            value=timeout,
        )
    return None if math.isinf(timeout) else float(timeout)


def check_name(name: Any) -> str | None:
    # The same rule as ActivityConfig.name: a str of 1 to 200 characters.
    if name is not None and (not isinstance(name, str) or not 1 <= len(name) <= 200):
        raise InvalidArgumentError(
            f"name must be a str of 1 to 200 characters or None, got {name!r}",
            field="name",
            value=name,
        )
    return name


def make_config(config: object, options: dict[str, Any]) -> ActivityConfig:
    if config is None:
        return ActivityConfig(**options)
    if isinstance(config, ActivityConfig):
        return config.with_options(options)
    if isinstance(config, Mapping):
        return ActivityConfig(**{**cast("Mapping[str, Any]", config), **options})
    raise InvalidArgumentError(
        f"config must be an ActivityConfig, a mapping or None, got {config!r}",
        field="config",
        value=config,
    )


def check_services(config: ActivityConfig) -> None:
    """Refuse the combinations COM+ refuses for an activity, before anything runs."""
    if config.thread_pool is ThreadPool.NONE:
        raise InvalidArgumentError(
            "thread_pool=ThreadPool.NONE is refused for an activity, as CoCreateActivity "
            "refuses it (CO_E_THREADPOOL_CONFIG): choose MTA, STA or INHERIT",
            field="thread_pool",
            value=config.thread_pool,
            hresult=HResult.CO_E_THREADPOOL_CONFIG,
        )
    if (
        config.binding is Binding.BIND_TO_POOL_THREAD
        and config.effective_thread_pool is ThreadPool.MTA
    ):
        raise InvalidArgumentError(
            "binding=Binding.BIND_TO_POOL_THREAD needs thread_pool=ThreadPool.STA (or INHERIT "
            "from an STA parent): an MTA activity has no thread to bind to",
            field="binding",
            value=config.binding,
            hresult=HResult.CO_E_THREADPOOL_CONFIG,
        )


def refuse_coroutine(fn: Any) -> None:
    """Close a coroutine object that will never run, so Python does not warn about it."""
    if inspect.iscoroutine(fn):
        fn.close()


def keywords_refused(method: str, fn: Any, keywords: Mapping[str, Any]) -> TypeError:
    """The error for keyword arguments given to a method that forwards positional ones only.

    The methods keep ``name`` and ``timeout`` for themselves, so they forward
    no keywords to ``fn`` (as anyio and trio do); the message shows the
    ``functools.partial`` that does.
    """
    names = ", ".join(repr(key) for key in keywords)
    target = getattr(fn, "__qualname__", None) or type(fn).__name__
    passed = ", ".join(f"{key}=..." for key in keywords)
    plural = "s" if len(keywords) > 1 else ""
    return TypeError(
        f"{method}() got unexpected keyword argument{plural} {names}: it forwards only "
        f"positional arguments to the work; pass keywords with "
        f"functools.partial({target}, {passed})"
    )
