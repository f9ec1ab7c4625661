"""What both backends share: the inline driver, a call's outcome, re-entry on a waiting thread.

:func:`drive_in_context` runs a ``synchronous_call``'s coroutine in the
caller's task (see the package's doc); :func:`outcome_of_result`,
:func:`cancelled_outcome` and :func:`timeout_error` turn how a body ended into
the call's :data:`Outcome` alike on every loop.

A blocking body that calls back into its own activity with
``synchronous_call_from_thread`` blocks its thread until the nested call ends.
That thread is the apartment's, or holds one of the activity's places in the
pool: a nested blocking call of the same call chain that waited for a thread
would wait for itself. As COM+ re-enters an apartment on the thread that waits
in it, the waiting thread becomes a :class:`ReentryHost` for its chain: the
chain's blocking calls run on it, one at a time, until the call back returns.

:class:`ReentryHost` lives here, not beside the apartment: the backends make
it, it takes a chain's calls by reading the call, and its call back is a task
on the loop. Beside the apartment it would make that module, which knows only
threads, know calls and activities too.
"""

from __future__ import annotations

import contextvars
import functools
import queue
import types
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeGuard, cast

import anyio

from .._call import BLOCKING, CANCELLED, COMPLETED, FAILED, BaseCall, CallStatus
from .._errors import CallTimeoutError, InvalidArgumentError, error_from_hresult
from .._hresult import HResult
from .._workers import WorkItem, stop_iteration_error, worker_threads

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Generator
    from typing import TypeAlias

    from .._apartment import Apartment
    from .._config import ActivityConfig
    from .._context import Frame, SynchronizationDomain
    from ._runner import Runner

    #: Starts ``fn()`` as a task on a loop, in ``context``, from another thread;
    #: raises ``anyio.RunFinishedError`` if the loop has finished.
    _StartTask: TypeAlias = Callable[
        [Callable[[], Coroutine[Any, Any, None]], contextvars.Context], None
    ]

__all__ = [
    "CHECKED_RESULTS",
    "DispatchHost",
    "Outcome",
    "ReentryHost",
    "cancelled_outcome",
    "context_run",
    "coroutine_send",
    "drive_in_context",
    "host_of",
    "hosting",
    "is_coroutine",
    "outcome_of_result",
    "reentry_host",
    "run_here",
    "timeout_error",
]


class DispatchHost(Protocol):
    """What a backend needs of its activity (the activity's core meets it)."""

    @property
    def name(self) -> str: ...
    @property
    def config(self) -> ActivityConfig: ...
    @property
    def domain(self) -> SynchronizationDomain | None: ...
    @property
    def synchronization_timeout(self) -> float | None:
        """Seconds its call chains wait for their turn in its domain (``None``: no limit)."""
        ...

    @property
    def bound_to_loop(self) -> bool: ...
    @property
    def running_calls(self) -> set[BaseCall[Any]]:
        """Its running calls that no runner holds (the activity's ``cancel()`` reaches them)."""
        ...

    @property
    def runners(self) -> set[Runner]:
        """Its runners, each holding the call it runs (see ``_runner``)."""
        ...

    def finish(
        self,
        call: BaseCall[Any],
        status: CallStatus,
        result: Any,
        exc: BaseException | None,
        take: bool = False,
    ) -> BaseCall[Any] | None:
        """Record how ``call`` ended, tell whoever waits, route a failure, admit more.

        With ``take`` (a runner settling its call), the call of this activity
        that takes the place ``call`` freed is returned, counted as running,
        for the runner to run next, instead of being started.
        """
        ...

    def complete(self, call: BaseCall[Any], result: Any) -> BaseCall[Any] | None:
        """``finish(call, COMPLETED, result, None, take=True)``, on its fast path."""
        ...


#: (status, result, exception) of a finished call.
Outcome = tuple[CallStatus, Any, BaseException | None]


_CoroutineType: Final = types.CoroutineType
#: ``Context.run`` and a coroutine's ``send``, unbound: a step that calls them makes no
#: bound method (``context_run(context, coroutine_send, coro, value)``).
context_run: Final[Callable[..., Any]] = contextvars.Context.run
coroutine_send: Final[Callable[[Any, Any], Any]] = types.CoroutineType.send  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]


@types.coroutine
def drive_in_context(
    coro: Coroutine[Any, Any, Any], context: contextvars.Context
) -> Generator[Any, Any, Any]:
    """Run ``coro`` to completion in the current task, but inside ``context``.

    Each step of the coroutine runs under ``context.run``; whatever it yields
    (an asyncio future, a trio trap) goes up to the event loop unchanged, and
    whatever the loop sends or throws back goes down unchanged. This is what a
    task does, minus the task: the body gets its own context at the cost of one
    ``Context.run`` per step.
    """
    # Unbound, as in the asyncio runner: no bound method of the coroutine or of the
    # context per call (coro.throw is bound only when something is thrown in).
    send = coroutine_send if type(coro) is _CoroutineType else type(coro).send
    run = context_run
    try:
        yielded = run(context, send, coro, None)
    except StopIteration as stop:
        return stop.value
    while True:
        value: Any = None
        error: BaseException | None = None
        try:
            value = yield yielded
        except GeneratorExit:
            run(context, coro.close)
            raise
        except BaseException as exc:
            error = exc
        try:
            yielded = (
                run(context, send, coro, value)
                if error is None
                else run(context, coro.throw, error)
            )
        except StopIteration as stop:
            return stop.value


#: The types of result that outcome_of_result may turn into a failure.
CHECKED_RESULTS: Final = frozenset({HResult, _CoroutineType})


def is_coroutine(obj: object) -> TypeGuard[Coroutine[Any, Any, Any]]:
    """``inspect.iscoroutine``: the coroutine type cannot be subclassed, so one test."""
    return type(obj) is _CoroutineType


def outcome_of_result(call: BaseCall[Any], result: Any) -> Outcome:
    """Completed, unless the body returned a failing ``HResult`` or a stray coroutine."""
    if type(result) is HResult and result >= 0x80000000:
        return FAILED, None, error_from_hresult(result)
    if is_coroutine(result):
        result.close()
        return (
            FAILED,
            None,
            InvalidArgumentError(
                f"{call.name!r} is a plain callable that returned a coroutine; pass the "
                "coroutine function itself (or the coroutine object) so that it runs on the loop"
            ),
        )
    return COMPLETED, result, None


def timeout_error(call: BaseCall[Any]) -> CallTimeoutError:
    """The failure of a call whose run outlived its timeout."""
    extras = call.extras
    timeout = None if extras is None else extras.timeout
    return CallTimeoutError(f"call {call.name!r} did not finish within {timeout} s")


def cancelled_outcome(call: BaseCall[Any]) -> Outcome:
    """A call stopped by its timeout failed; one stopped on purpose was cancelled."""
    if call.timed_out and not call.cancel_requested:
        return FAILED, None, timeout_error(call)
    return CANCELLED, None, None


def run_here(run: Callable[..., Any], fn: Any, args: tuple[Any, ...]) -> Any:
    """``run(fn, *args)`` in the caller's thread, a ``StopIteration`` made a ``RuntimeError``."""
    try:
        return run(fn, *args)
    except StopIteration as stop:
        raise stop_iteration_error(stop) from stop


#: The host the current code's chain runs its blocking calls on, if any (set in
#: the task that a ``synchronous_call_from_thread`` runs on the loop).
hosting: Final[contextvars.ContextVar[ReentryHost | None]] = contextvars.ContextVar(
    "activity.reentry_host", default=None
)


class ReentryHost:
    """A thread blocked in ``synchronous_call_from_thread`` that runs its chain's blocking calls.

    The thread runs a blocking call of the activity (it is the apartment's
    thread, or holds one of the activity's places in the pool) and waits for a
    call back into the activity, which continues the thread's call chain. A
    blocking call of that chain made meanwhile (the call back itself, or one
    that it makes in turn) runs on this thread, one at a time, in the call's
    own context: queued for the apartment or for a place in the pool, it would
    wait for the thread that waits for it. Other chains' calls never run here.

    Made by :meth:`AsyncioDispatcher.reentry_host` or
    :meth:`TrioDispatcher.reentry_host`, in the waiting thread.
    """

    __slots__ = (
        "_closed",
        "_loop_cancelled",
        "_outcome",
        "_queue",
        "_start",
        "causality",
        "host",
    )

    def __init__(
        self,
        activity: DispatchHost,
        causality: object,
        start: _StartTask,
        loop_cancelled: type[BaseException],
    ) -> None:
        self.host: object = activity
        self.causality = causality
        #: Starts a task on the loop, from this thread, without waiting for it.
        self._start = start
        #: What the loop cancels its tasks with.
        self._loop_cancelled = loop_cancelled
        #: Set on the loop once the call back has ended: nothing is routed here after.
        self._closed = False
        self._queue: queue.SimpleQueue[WorkItem | None] = queue.SimpleQueue()
        self._outcome: tuple[bool, Any] = (False, None)

    def takes(self, call: BaseCall[Any]) -> bool:
        """Whether ``call`` (a blocking call, on the loop) runs on this thread."""
        return call.causality is self.causality and call.host is self.host and not self._closed

    def submit(
        self,
        run: Callable[..., Any],
        fn: Any,
        args: tuple[Any, ...],
        on_done: Callable[[WorkItem], object] | None = None,
    ) -> WorkItem:
        """Queue ``run(fn, *args)`` for the waiting thread (from the loop)."""
        item = WorkItem(run, fn, args, on_done)
        self._queue.put(item)
        return item

    def run(self, call_back: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        """In the waiting thread: run ``call_back()`` on the loop, and the chain's work here.

        :return: what ``call_back()`` returned (what it raised is raised)
        :raises anyio.RunFinishedError: if the loop has finished, or ended the call back
        """
        self._start(functools.partial(self._call_back, call_back), contextvars.copy_context())
        get = self._queue.get
        while (item := get()) is not None:
            if item.execute():
                item.notify()
            del item
        completed, value = self._outcome
        self._outcome = (False, None)
        if completed:
            return value
        try:
            raise value
        finally:
            del value  # no cycle through the traceback's frame

    async def _call_back(self, call_back: Callable[[], Awaitable[Any]]) -> None:
        """The task on the loop: the call back, with this host as its chain's."""
        hosting.set(self)
        try:
            self._outcome = (True, await call_back())
        except BaseException as exc:
            if isinstance(exc, self._loop_cancelled):
                # Only the loop's end cancels this task.
                self._outcome = (False, anyio.RunFinishedError())
            else:
                self._outcome = (False, exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._closed = True
            self._queue.put(None)


def host_of(call: BaseCall[Any]) -> ReentryHost | None:
    """The host that runs ``call`` (a blocking call), if its chain has one (on the loop)."""
    host = hosting.get()
    return host if host is not None and host.takes(call) else None


def reentry_host(
    activity: DispatchHost,
    frame: Frame | None,
    apartment: Apartment | None,
    start: _StartTask,
    loop_cancelled: type[BaseException],
) -> ReentryHost | None:
    """A host for a thread that calls back into ``activity`` from ``frame``, if it needs one.

    It does when the thread runs one of the activity's blocking calls, whose chain
    it continues: on the apartment's thread, or on a worker thread.
    """
    if not isinstance(frame, BaseCall):
        return None
    if frame.host is not cast("object", activity) or frame.kind is not BLOCKING:
        return None
    causality = frame.causality
    if causality is None:  # abandoned: the call has ended, and its chain with it
        return None
    if apartment is not None:
        if not apartment.runs_on_current_thread():
            return None
    elif not getattr(worker_threads, "serving", False):
        return None  # a thread of the body's own: it holds no place of the activity's
    return ReentryHost(activity, causality, start, loop_cancelled)
