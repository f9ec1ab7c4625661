"""Keyed activities: one call at a time per key, different keys side by side.

:class:`KeyedActivity` is what ASP on COM+ gave every user session: an
activity of its own per key (a user, a session, an order), made on demand,
synchronized, and reclaimed when idle. It is built on the public
:class:`~activity.Activity`: a *parent* activity, opened with ``open()``,
whose ``max_concurrency`` bounds how many keys run at once, and a child
activity per key (``Activity(parent=...)``), synchronized
(``Synchronization.NEW``) and one call at a time (``max_concurrency=1``), so
that its FIFO queue is the key's order and its ``max_pending`` the key's own
bound.

A call of a key is a call of the key's child; when its turn comes it takes a
place in the parent (a ``synchronous_call`` there, which waits in the
parent's FIFO line) and runs its body in the child's call: ``current_activity()``
is the key's child, ``ActivityLocal`` values set there are the key's, and a
nested call of the same chain re-enters. The housekeeping (closing idle and
evicted children) runs in an activity of its own, so that it takes no place
from the keys.

This module is the public face. The table of live keys, their eviction and
retirement, the housekeeping and the body every key's call runs are the
keyed activity's core, :class:`~activity._keyed_core.KeyedCore`, as an
``Activity`` runs on its ``CoreState``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple, Unpack, final, overload

from ._activity import Activity, Call
from ._call import COROUTINE
from ._errors import ActivityError, InvalidArgumentError
from ._keyed_core import MAX_NAME, CallEnded, KeyedCore, per_key_config
from ._validate import refuse_coroutine

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Hashable, Mapping
    from types import EllipsisType, TracebackType

    from ._activity import AsyncServiceCall, ServiceCall
    from ._config import ActivityConfig
    from ._tracking import ActivityStatistics

__all__ = ["KeyedActivity"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


@final
class KeyedActivity:
    """One call at a time per key, in submission order; different keys side by side.

    A synchronized child activity per key (a user, a session, an order), made
    on the key's first call and closed once it has been idle for
    ``idle_timeout`` seconds, under a parent activity whose ``max_concurrency``
    bounds how many keys run at once::

        async with KeyedActivity(max_keys=10_000, idle_timeout=60,
                                 per_key=ActivityConfig(max_pending=100),
                                 max_concurrency=50, name="orders") as orders:
            call = await orders.asynchronous_call(order_id, process, event)
            total = await orders.synchronous_call(order_id, total_of)

    * Calls of one key run one at a time, in the order they were submitted
      (``asynchronous_call``, its ``_nowait`` twin and ``synchronous_call``
      share one FIFO line per key). A call that waits for its key is
      *pending* in the key's activity; once its turn comes it is *running*
      there, and takes a place in the parent (its FIFO line is fair between
      keys) before its body starts.
    * Each key has its own ``max_pending`` (from ``per_key``): a hot key is
      rejected with :class:`AsyncWorkRejectedError` without touching the
      others.
    * At most ``max_keys`` keys are live. A new key evicts the key idle the
      longest; when every key is busy, the new key's call is rejected with
      :class:`AsyncWorkRejectedError`.
    * A key's activity is closed after ``idle_timeout`` idle seconds (and on
      eviction), and made again by the key's next call: its ``ActivityLocal``
      values go with it. Nothing accepted is lost: a key is retired only when
      nothing is pending, running or being submitted for it.

    The body of a call runs in the key's activity (``current_activity()`` is
    it, ``ActivityLocal`` values set there are the key's); a coroutine runs in
    the task of the key's call, a plain callable in the parent's worker
    threads (the parent's ``thread_limit``). A call of the same chain (a
    ``synchronous_call`` made from a running call, of any key) runs within the
    place its caller holds in the parent.

    :param config: the parent's :class:`ActivityConfig` (or a mapping of its fields)
    :param max_keys: how many keys may be live at once
    :param idle_timeout: seconds after which an idle key's activity is closed
        (``None``: only eviction closes it)
    :param per_key: the config of every key's activity (or a mapping): its
        ``max_pending``, ``overflow``, ``timeout``, ``error_handler``,
        ``shutdown_timeout``, ``local_scope``... Its ``max_concurrency`` is 1
        and its synchronization ``NEW``; other values are refused, and so is a
        ``partition``.
    :param parent: the parent activity's own parent, as for :class:`Activity`
    :param options: fields of the parent's :class:`ActivityConfig`
    :raises InvalidArgumentError: if an option is unknown or has a bad value

    .. versionadded:: 0.2
    """

    __slots__ = ("__weakref__", "_core")

    def __init__(
        self,
        config: ActivityConfig | Mapping[str, Any] | None = None,
        /,
        *,
        max_keys: int = 1000,
        idle_timeout: float | None = 60.0,
        per_key: ActivityConfig | Mapping[str, Any] | None = None,
        parent: Activity | EllipsisType | None = ...,
        **options: Any,
    ) -> None:
        if (
            isinstance(max_keys, bool)
            or not isinstance(max_keys, int)  # pyright: ignore[reportUnnecessaryIsInstance]
            or max_keys < 1
        ):
            raise InvalidArgumentError(
                f"max_keys must be a whole number >= 1, got {max_keys!r}",
                field="max_keys",
                value=max_keys,
            )
        if idle_timeout is not None and (
            isinstance(idle_timeout, bool)
            or not isinstance(idle_timeout, int | float)  # pyright: ignore[reportUnnecessaryIsInstance]
            or not idle_timeout > 0
            or not math.isfinite(idle_timeout)
        ):
            raise InvalidArgumentError(
                f"idle_timeout must be a finite number of seconds > 0 or None, "
                f"got {idle_timeout!r}",
                field="idle_timeout",
                value=idle_timeout,
            )
        per_key_checked = per_key_config(per_key)  # refused before the parent is made
        self._core = KeyedCore(
            Activity(config, parent=parent, **options),
            per_key_checked,
            max_keys,
            None if idle_timeout is None else float(idle_timeout),
        )

    # -- properties ---------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The parent activity's name."""
        return self._core.name

    @property
    def activity(self) -> Activity:
        """The parent activity: the keys' activities are its children."""
        return self._core.parent

    @property
    def max_keys(self) -> int:
        """How many keys may be live at once."""
        return self._core.max_keys

    @property
    def idle_timeout(self) -> float | None:
        """Seconds after which an idle key's activity is closed, if any."""
        return self._core.idle_timeout

    def keys(self) -> list[Hashable]:
        """The live keys: those that have an activity now.

        Idle keys come in the order they became idle, the one idle the longest
        first (the next to be evicted).
        """
        return list(self._core.slots)

    def activity_of(self, key: Hashable) -> Activity | None:
        """The activity of a live key, or ``None`` if the key has none now."""
        slot = self._core.slots.get(key)
        return None if slot is None or slot.ready is not None else slot.child

    def key_statistics(self, key: Hashable) -> ActivityStatistics | None:
        """A snapshot of one live key's counters, or ``None`` if the key has no activity now.

        ``running`` counts the key's call whose turn has come, ``pending`` those
        that wait behind it, ``rejected`` those refused for the key's ``max_pending``.
        """
        slot = self._core.slots.get(key)
        return None if slot is None else slot.child.statistics()

    def statistics(self) -> ActivityStatistics:
        """A snapshot of the counters of every key, live or closed, added up.

        ``accepted == pending + waiting_for_thread + running + completed + failed +
        cancelled`` holds;
        ``rejected`` adds the calls refused for ``max_keys`` to those each key
        refused. ``max_concurrency`` is the parent's, ``max_pending`` the bound
        of one key.
        """
        return self._core.statistics()

    def __repr__(self) -> str:
        core = self._core
        return f"<KeyedActivity {self.name!r} {core.state} keys={len(core.slots)}>"

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> KeyedActivity:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._core.close(exc)

    async def open(self) -> KeyedActivity:
        """Open the parent activity and the housekeeping; close with :meth:`aclose`.

        ``async with`` does the same and closes it at the end of the block.

        :return: the keyed activity
        :raises ActivityError: if it was opened before
        """
        await self._core.open()
        return self

    async def aclose(self) -> None:
        """Close every key's activity (each drains for its ``shutdown_timeout``), then the parent.

        Closing a closed keyed activity does nothing.

        :raises ExceptionGroup: the failures nobody observed, of every key's
            activity (those closed before included) and of the parent
        """
        await self._core.close(None)

    # -- submission ---------------------------------------------------------------------

    @overload
    async def asynchronous_call(
        self,
        key: Hashable,
        fn: Callable[[Unpack[Ts]], Awaitable[T]],
        /,
        *args: *Ts,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Call[T]: ...
    @overload
    async def asynchronous_call(
        self,
        key: Hashable,
        fn: Awaitable[T],
        /,
        *,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Call[T]: ...
    @overload
    async def asynchronous_call(
        self,
        key: Hashable,
        fn: AsyncServiceCall[T],
        /,
        *,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Call[T]: ...
    @overload
    async def asynchronous_call(
        self,
        key: Hashable,
        fn: ServiceCall[T],
        /,
        *,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Call[T]: ...
    @overload
    async def asynchronous_call(
        self,
        key: Hashable,
        fn: Callable[[Unpack[Ts]], T],
        /,
        *args: *Ts,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Call[T]: ...
    async def asynchronous_call(  # type: ignore[misc]  # mypy and TypeVarTuple overloads
        self,
        key: Hashable,
        fn: Any,
        /,
        *args: Any,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Queue ``fn(*args)`` behind the key's earlier calls; return once it is accepted.

        As :meth:`Activity.asynchronous_call`, in the key's activity, which is
        made first if the key has none.

        :param key: the key (hashable): calls of one key run one at a time, in order
        :param fn: the work: a coroutine function, a plain callable, an object
            with ``on_call()`` (without ``on_error``) or a coroutine object
        :param args: positional arguments for ``fn``
        :param name: a name for the call
        :param timeout: seconds the call may take once its turn has come,
            waiting for a place in the parent included (default: ``per_key``'s)
        :return: the call's handle, a call of the key's activity
        :raises AsyncWorkRejectedError: if the key's queue is full, or every one of
            the ``max_keys`` keys is busy
        :raises ActivityClosedError: if the keyed activity is not open
        :raises InvalidArgumentError: if ``fn``, ``name`` or ``timeout`` is not valid
        """
        core = self._core
        kind, body = core.check(fn, args)
        try:
            slot = await core.enter(key)
        except BaseException:
            refuse_coroutine(body)
            raise
        try:
            call: Call[Any] = await slot.child.asynchronous_call(
                core.run, kind, body, args, name=_name_of(fn, name), timeout=timeout
            )
        except ActivityError:
            refuse_coroutine(body)  # refused: it never runs
            raise
        finally:
            core.release(slot)
        call.add_done_callback(CallEnded(core, slot, body if kind is COROUTINE else None))
        return call

    @overload
    def asynchronous_call_nowait(
        self,
        key: Hashable,
        fn: Callable[[Unpack[Ts]], Awaitable[T]],
        /,
        *args: *Ts,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Call[T]: ...
    @overload
    def asynchronous_call_nowait(
        self,
        key: Hashable,
        fn: Awaitable[T],
        /,
        *,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Call[T]: ...
    @overload
    def asynchronous_call_nowait(
        self,
        key: Hashable,
        fn: AsyncServiceCall[T],
        /,
        *,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Call[T]: ...
    @overload
    def asynchronous_call_nowait(
        self,
        key: Hashable,
        fn: ServiceCall[T],
        /,
        *,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Call[T]: ...
    @overload
    def asynchronous_call_nowait(
        self,
        key: Hashable,
        fn: Callable[[Unpack[Ts]], T],
        /,
        *args: *Ts,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Call[T]: ...
    def asynchronous_call_nowait(  # type: ignore[misc]  # mypy and TypeVarTuple overloads
        self,
        key: Hashable,
        fn: Any,
        /,
        *args: Any,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Queue ``fn(*args)`` like :meth:`asynchronous_call`, without waiting.

        Accepted or refused before it returns, whatever the ``overflow``
        setting. On trio, opening a key's activity needs an ``await``: a key
        that has no activity yet (or whose activity is being opened) is
        refused there with :class:`AsyncWorkRejectedError`; on asyncio the
        activity is made at once.

        :raises AsyncWorkRejectedError: if the key's queue is full, every key is
            busy, or (on trio) the key has no open activity
        :raises ActivityClosedError: if the keyed activity is not open
        :raises InvalidArgumentError: if ``fn``, ``name`` or ``timeout`` is not valid
        """
        core = self._core
        kind, body = core.check(fn, args)
        try:
            slot = core.enter_nowait(key)
            try:
                call: Call[Any] = slot.child.asynchronous_call_nowait(
                    core.run, kind, body, args, name=_name_of(fn, name), timeout=timeout
                )
            finally:
                core.release(slot)
        except BaseException:
            refuse_coroutine(body)
            raise
        call.add_done_callback(CallEnded(core, slot, body if kind is COROUTINE else None))
        return call

    @overload
    async def synchronous_call(
        self,
        key: Hashable,
        fn: Callable[[Unpack[Ts]], Awaitable[T]],
        /,
        *args: *Ts,
        timeout: float | None = None,
    ) -> T: ...
    @overload
    async def synchronous_call(
        self, key: Hashable, fn: Awaitable[T], /, *, timeout: float | None = None
    ) -> T: ...
    @overload
    async def synchronous_call(
        self, key: Hashable, fn: AsyncServiceCall[T], /, *, timeout: float | None = None
    ) -> T: ...
    @overload
    async def synchronous_call(
        self, key: Hashable, fn: ServiceCall[T], /, *, timeout: float | None = None
    ) -> T: ...
    @overload
    async def synchronous_call(
        self,
        key: Hashable,
        fn: Callable[[Unpack[Ts]], T],
        /,
        *args: *Ts,
        timeout: float | None = None,
    ) -> T: ...
    async def synchronous_call(  # type: ignore[misc]  # mypy and TypeVarTuple overloads
        self, key: Hashable, fn: Any, /, *args: Any, timeout: float | None = None
    ) -> Any:
        """Run ``fn(*args)`` in the key's turn and return its result.

        As :meth:`Activity.synchronous_call` in the key's activity: it waits in
        the key's line (it is never rejected for a full queue, only when every
        one of the ``max_keys`` keys is busy), and the body's own exception is
        raised unchanged. Made from a running call of the same key, it runs at
        once instead of waiting behind its caller.

        :param key: the key
        :param fn: the work, as for :meth:`asynchronous_call`
        :param args: positional arguments for ``fn``
        :param timeout: seconds the call may take once its turn has come
        :return: what ``fn`` returned
        :raises AsyncWorkRejectedError: if every one of the ``max_keys`` keys is busy
        :raises CallTimeoutError: if the call took longer than ``timeout``
        :raises CallCancelledError: if the call was cancelled by the activity
        :raises ActivityClosedError: if the keyed activity is not open
        :raises InvalidArgumentError: if ``fn`` or ``timeout`` is not valid
        """
        core = self._core
        kind, body = core.check(fn, args)
        try:
            slot = await core.enter(key)
        except BaseException:
            refuse_coroutine(body)
            raise
        try:
            return await slot.child.synchronous_call(core.run, kind, body, args, timeout=timeout)
        finally:
            if kind is COROUTINE:
                refuse_coroutine(body)  # a no-op once it ran
            core.release(slot)


def _name_of(fn: Any, name: str | None) -> str | None:
    if name is not None:
        return name
    qualname = getattr(fn, "__qualname__", None)
    if isinstance(qualname, str) and qualname:
        return qualname[:MAX_NAME]
    owner = getattr(fn, "on_call", None)
    if owner is not None:
        return type(fn).__qualname__[:MAX_NAME]
    code = getattr(fn, "cr_code", None)
    return None if code is None else str(code.co_qualname)[:MAX_NAME]


KeyedActivity.__module__ = "activity"
