"""The core of an activity whose calls' bodies run elsewhere (``executor=``).

:class:`RemoteCore` is :class:`~activity._lifecycle.Core` with two steps
changed, so that an activity without an executor pays nothing for this one:

- making a call (``new_call``): the call's body becomes a
  :class:`~activity._backends._dask.RemoteBody`, a coroutine function that
  sends the body to the cluster and waits for it, carrying a pickled snapshot
  of the ``ActivityLocal`` values the call sees. A value that cannot be pickled
  refuses the call there, before anything is accepted;
- opening: the Dask backend waits for results on asyncio, so a trio loop is
  refused; the inline shortcut of ``synchronous_call`` is turned off, so that
  every call is made through ``new_call``.

Everything else (admission, the queue, timeouts, cancellation, failures,
statistics) is the core's own: the call is a coroutine call of the loop's
dispatcher, whose task waits for the cluster.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final

from ._backends._dask import DaskExecutor, RemoteBody, pickler
from ._call import COROUTINE, COROUTINE_FUNCTION
from ._config import ThreadPool
from ._context import CallLocals
from ._errors import InvalidArgumentError
from ._lifecycle import Core
from ._validate import refuse_coroutine

if TYPE_CHECKING:
    from ._backends._dask import _Lease  # pyright: ignore[reportPrivateUsage]
    from ._call import BaseCall, Kind
    from ._config import ActivityConfig
    from ._context import Frame

__all__ = ["OWN_LOCALS", "RemoteCore", "check_executor"]

#: The prefix of the package's own ``ActivityLocal`` names (the web integrations'
#: app and request activities, their job table): those values travel when they can
#: be pickled (the request's info does) and stay here when they cannot.
OWN_LOCALS: Final = "activity."


def check_executor(config: ActivityConfig) -> None:
    """Refuse an executor the activity cannot use, before anything runs."""
    executor = config.executor
    if not isinstance(executor, DaskExecutor):
        raise InvalidArgumentError(
            f"executor must be None or an activity.dask.DaskExecutor, got {executor!r}",
            field="executor",
            value=executor,
        )
    if config.thread_pool is ThreadPool.STA:
        raise InvalidArgumentError(
            "an activity whose calls run on a Dask cluster has no threads of its own: "
            "thread_pool=ThreadPool.STA does not apply",
            field="thread_pool",
            value=config.thread_pool,
        )


def _snapshot(host: Any, origin: Any) -> dict[str, Any]:
    """The ``ActivityLocal`` values a call sees, by name, the nearest first (run in its context)."""
    tables: list[dict[Any, Any]] = []
    table = host.locals
    tables.append(table.current() if isinstance(table, CallLocals) else table)
    while origin is not None:
        table = origin.locals
        tables.append(table.current() if isinstance(table, CallLocals) else table)
        origin = origin.origin
    values: dict[str, Any] = {}
    for table in tables:
        for local, value in table.items():
            values.setdefault(local.name, value)
    return values


class RemoteCore(Core):
    """An activity's core whose calls' bodies run on a Dask cluster."""

    __slots__ = ("lease",)

    lease: _Lease | None

    async def open(self, block: bool) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise InvalidArgumentError(
                f"activity {self.name!r} runs its calls on a Dask cluster, which this "
                "package drives from asyncio (or uvloop) only, not from trio",
                field="executor",
                value=self.config.executor,
            ) from None
        await super().open(block)
        # Every call is made by new_call, which makes its body the remote one.
        self.fast_submit = self.fast_sync = False
        config = self.config
        partition = config.partition
        executor: DaskExecutor = config.executor
        self.lease = (
            None if partition is None else executor.lease(partition, config.max_concurrency)
        )

    def new_call(
        self,
        kind: Kind,
        body: Any,
        args: tuple[Any, ...],
        target: Any,
        name: str | None,
        timeout: float | None,
        frame: Frame | None,
        synchronous: bool,
    ) -> BaseCall[Any]:
        if kind is COROUTINE:
            refuse_coroutine(body)
            raise InvalidArgumentError(
                f"activity {self.name!r} runs its calls on a Dask cluster, where a coroutine "
                "object cannot travel: pass the coroutine function and its arguments",
                field="fn",
                value=body,
            )
        call = super().new_call(kind, body, args, target, name, timeout, frame, synchronous)
        context = call.context
        assert context is not None
        values = context.run(_snapshot, self, call.origin)
        if values:
            values = self.pickle_values(values)
        remote = RemoteBody(
            self.config.executor, body, args, kind is COROUTINE_FUNCTION, values, self.lease
        )
        remote.name = call.name
        remote.ident = call.ident
        call.fn = remote
        call.kind = COROUTINE_FUNCTION
        call.args = ()
        return call

    def pickle_values(self, values: dict[str, Any]) -> dict[str, Any]:
        """Each value pickled, now: the snapshot the call carries."""
        pickled: dict[str, Any] = {}
        for name, value in values.items():
            try:
                pickled[name] = pickler().dumps(value)
            except Exception as exc:
                if name.startswith(OWN_LOCALS):
                    continue  # the package's own plumbing (an Activity, a job table) stays
                raise InvalidArgumentError(
                    f"the value of ActivityLocal {name!r} ({type(value).__name__}) cannot be "
                    f"pickled to travel with a call to the Dask cluster: {exc}",
                    field="ActivityLocal",
                    value=name,
                ) from exc
        return pickled
