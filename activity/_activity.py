"""The :class:`Activity`: lifecycle, submission, drain and cancellation.

This module wires the others together. A call flows one way:

    validate (_validate) -> admit or reject (_admission) -> Call returned (_call)
    -> dispatched with its context (_backends) -> outcome stored on the Call
    -> counters and tracking (here, _admission, tracking) -> failure routed (here)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import inspect
import itertools
import weakref
from asyncio import _get_running_loop, current_task  # pyright: ignore[reportPrivateUsage]
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from contextvars import Token, copy_context
from threading import current_thread, get_ident
from types import FunctionType, TracebackType
from typing import (
    TYPE_CHECKING,
    Any,
    Final,
    Protocol,
    TypeVar,
    TypeVarTuple,
    Unpack,
    cast,
    final,
    overload,
)

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from . import tracking
from ._admission import Admission, Counters, Waiter, join_partition
from ._apartment import Apartment
from ._backends._asyncio import AsyncioDispatcher
from ._backends._common import CHECKED_RESULTS, drive_in_context, outcome_of_result, timeout_error
from ._backends._trio import TrioDispatcher
from ._call import (
    BLOCKING,
    CANCELLED,
    COMPLETED,
    COROUTINE,
    COROUTINE_FUNCTION,
    FAILED,
    PENDING,
    RUNNING,
    Call,
    CallStatus,
    InlineCall,
    Kind,
)
from ._config import (
    ActivityConfig,
    Binding,
    FailurePolicy,
    Inheritance,
    Overflow,
    Synchronization,
    ThreadPool,
)
from ._context import SynchronizationDomain, _Frame, _frame, current_activity
from ._errors import (
    ActivityClosedError,
    ActivityError,
    AsyncWorkRejectedError,
    CallCancelledError,
    InvalidArgumentError,
    WrongThreadError,
)
from ._hresult import HResult
from ._validate import (
    CO_COROUTINE,
    CO_GENERATORS,
    check_name,
    check_services,
    check_timeout,
    classify,
    make_config,
    refuse_coroutine,
)

if TYPE_CHECKING:
    from ._backends import Backend as Dispatcher
    from ._backends import Event

__all__ = ["Activity", "cancel_requested", "check_cancelled", "create_activity", "service_domain"]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
Ts = TypeVarTuple("Ts")

#: The frames that are calls (a nested synchronous_call of their activity re-enters).
_CALL_FRAMES: Final = (Call, InlineCall)
_ids = itertools.count(1)


class AsyncServiceCall(Protocol[T_co]):
    """An object whose ``on_call()`` is a coroutine function (COM+'s ``IServiceCall``)."""

    def on_call(self) -> Awaitable[T_co]: ...


class ServiceCall(Protocol[T_co]):
    """An object with a plain ``on_call()``, run in a worker thread."""

    def on_call(self) -> T_co: ...


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CANCELLED = "cancelled"
    #: The block has ended: no new work, but the accepted calls may still make
    #: nested calls of their own, which are part of what is being drained.
    DRAINING = "draining"
    CLOSING = "closing"
    CLOSED = "closed"


_OPEN: Final = _State.OPEN
#: How many unobserved failures an activity keeps, tracebacks and all, until it exits;
#: past that it counts them by type (a long-lived activity must not grow without bound).
MAX_KEPT_FAILURES: Final = 100


@final
class Activity:
    """A bounded, observable unit of batch work bound to one event loop.

    The COM+ activity (``CoCreateActivity``) on an event loop. Enter it with
    ``async with``; the block's body runs in the activity (``current_activity()``
    is the activity there), and leaving the block stops admission, drains the
    accepted work for up to ``shutdown_timeout`` seconds, cancels what is left,
    and raises, in an ``ExceptionGroup``, every failure that nobody observed::

        async with Activity(max_concurrency=8, max_pending=100, name="ingest") as act:
            call = await act.asynchronous_call(fetch, url)     # accepted, or rejected
            rows = await act.synchronous_call(parse, payload)  # the result

    :param config: an :class:`ActivityConfig` (or a mapping of its fields)
    :param options: fields of :class:`ActivityConfig`, overriding ``config``'s
    :raises InvalidArgumentError: if an option is unknown or has a bad value

    .. versionadded:: 0.1
    """

    __slots__ = (
        "__weakref__",
        "_activity",
        "_admission",
        "_apartment",
        "_bound_to_loop",
        "_cancel_reason",
        "_causality",
        "_children",
        "_config",
        "_counters",
        "_dispatcher",
        "_domain",
        "_dropped_failures",
        "_fail_fast",
        "_fast_sync",
        "_handler_errors",
        "_handler_scopes",
        "_handlers_in_flight",
        "_id",
        "_idle_event",
        "_inline_calls",
        "_locals",
        "_loop",
        "_name",
        "_origin",
        "_overflow",
        "_parent",
        "_running_calls",
        "_state",
        "_thread_id",
        "_thread_model",
        "_timeout",
        "_token",
        "_unobserved",
        "_wake_token",
    )

    def __init__(
        self, config: ActivityConfig | Mapping[str, Any] | None = None, /, **options: Any
    ) -> None:
        config = make_config(config, options)
        self._config = config
        self._id = next(_ids)
        self._name = config.name or f"activity-{self._id}"
        self._activity = self  # the frame protocol: an activity's body belongs to it
        check_services(config)
        self._counters = Counters()
        # Its own budget; a partition's shared one replaces it when the activity opens.
        self._admission = Admission(config.max_concurrency, config.max_pending, None)
        self._overflow = config.overflow
        self._timeout = config.timeout
        self._fail_fast = config.failure_policy is FailurePolicy.FAIL_FAST
        self._state = _State.NEW
        self._dispatcher: Dispatcher | None = None
        self._thread_id = 0
        self._token: Token[_Frame | None] | None = None
        self._parent: Activity | None = None
        #: Where the activity's frames look for locals it lacks (the services add
        #: inheritance from the parent here).
        self._origin: Activity | None = None
        self._locals: dict[Any, Any] = {}
        self._running_calls: set[Call[Any]] = set()
        #: Synchronous calls running inline in their callers' tasks, not yet Calls.
        self._inline_calls: set[InlineCall] = set()
        self._unobserved: dict[int, Call[Any]] = {}
        #: Unobserved failures past MAX_KEPT_FAILURES: the calls' ids, and a count per type.
        self._dropped_failures: tuple[set[int], dict[str, int]] | None = None
        self._handler_errors: list[BaseException] = []
        self._handlers_in_flight = 0
        #: The cancel scopes of the async error handlers and done callbacks under way.
        self._handler_scopes: set[anyio.CancelScope] = set()
        self._idle_event: Event | None = None
        self._cancel_reason: str | None = None
        self._children: weakref.WeakSet[Activity] = weakref.WeakSet()
        #: The synchronization domain the activity's calls enter, if any.
        self._domain: SynchronizationDomain | None = None
        #: MTA or STA, resolved when the activity opens.
        self._thread_model = ThreadPool.MTA
        self._apartment: Apartment | None = None
        self._bound_to_loop = False
        #: The call chain (COM+ causality) the block belongs to: the chain of the call
        #: it was entered in, or a service domain's own.
        self._causality: object | None = None
        self._wake_token: anyio.lowlevel.EventLoopToken | None = None
        #: The asyncio loop the activity belongs to (None before it opens, and on trio).
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Whether synchronous_call may take its inline path: open, no domain to
        #: enter and no default timeout to arm.
        self._fast_sync = False

    # -- properties -------------------------------------------------------------------

    @property
    def config(self) -> ActivityConfig:
        """The frozen configuration the activity was created with."""
        return self._config

    @property
    def name(self) -> str:
        """The configured name, or ``activity-<id>``."""
        return self._name

    @property
    def id(self) -> int:
        """A number unique to this activity within the process."""
        return self._id

    @property
    def parent(self) -> Activity | None:
        """The activity that was current where this one was entered, if any."""
        return self._parent

    @property
    def children(self) -> list[Activity]:
        """The open activities entered inside this one (its calls or its block)."""
        return [child for child in self._children if child._state is not _State.CLOSED]

    @property
    def synchronization_domain(self) -> SynchronizationDomain | None:
        """The domain the activity's calls enter one chain at a time, if it is synchronized."""
        return self._domain

    @property
    def thread_model(self) -> ThreadPool:
        """Where blocking calls run: ``ThreadPool.MTA`` or ``ThreadPool.STA`` once open."""
        return self._thread_model

    def statistics(self) -> tracking.ActivityStatistics:
        """Return a frozen snapshot of the counters."""
        c = self._counters
        a = self._admission
        return tracking.ActivityStatistics.model_construct(
            name=self._name,
            id=self._id,
            accepted=c.accepted,
            rejected=c.rejected,
            pending=c.pending,
            running=c.running,
            completed=c.completed,
            failed=c.failed,
            cancelled=c.cancelled,
            max_concurrency=a.max_concurrency,
            max_pending=a.max_pending,
            partition=a.partition,
        )

    def partition_statistics(self) -> tracking.PartitionStatistics | None:
        """Return a snapshot of the partition's shared budget, or ``None`` outside any."""
        a = self._admission
        if a.partition is None:
            return None
        return tracking.PartitionStatistics.model_construct(
            name=a.partition,
            running=a.slots,
            pending=a.pending,
            waiting=len(a.waiters),
            max_concurrency=a.max_concurrency,
            max_pending=a.max_pending,
        )

    def __repr__(self) -> str:
        c = self._counters
        return (
            f"<Activity {self._name!r} {self._state.value} running={c.running} pending={c.pending}>"
        )

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Activity:
        if self._state is not _State.NEW:
            raise ActivityError(f"activity {self._name!r} can be entered only once")
        parent = current_activity()
        new_domain = self._resolve_services(parent)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            dispatcher = TrioDispatcher(self, self._apartment)
            await dispatcher.open()
            self._dispatcher = dispatcher
        else:
            self._dispatcher = AsyncioDispatcher(self, loop, self._apartment)
            self._loop = loop
        if new_domain:
            self._domain = SynchronizationDomain(self._name, self._dispatcher.new_event)
        self._thread_id = get_ident()
        self._wake_token = anyio.lowlevel.current_token()
        self._parent = parent
        if parent is not None:
            parent._children.add(self)
        # Entered inside a call, the block goes on with that call's chain (causality).
        outer = _frame.get()
        self._causality = None if outer is None else outer._causality
        self._token = _frame.set(self)
        self._fast_sync = self._domain is None and self._timeout is None
        self._state = _OPEN
        tracking._live.add(self)
        if tracking._listeners:
            tracking.emit(tracking.EventKind.ACTIVITY_OPENED, self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        state = self._state
        if state is _State.NEW:
            raise ActivityError(
                f"activity {self._name!r} was never entered: __aexit__ without __aenter__"
            )
        if state is _State.CLOSED or state is _State.CLOSING or state is _State.DRAINING:
            raise ActivityError(f"activity {self._name!r} has been left already")
        dispatcher = self._dispatcher
        assert dispatcher is not None
        self._fast_sync = False
        if state is _OPEN:
            self._state = _State.DRAINING if exc is None else _State.CLOSING
        self._refuse_waiters(self._closed_error())
        timeout = self._config.shutdown_timeout
        deadline = None if timeout is None else anyio.current_time() + timeout
        interrupted: BaseException | None = None
        try:
            if exc is not None:
                self._cancel_all(f"the activity's block raised {type(exc).__name__}")
            elif not self._is_idle():
                drained = await self._wait_idle_for(timeout)
                if not drained:
                    self._stop(f"shutdown_timeout ({timeout} s) expired")
        except BaseException as error:  # cancelled while draining
            interrupted = error
            self._cancel_all("the activity's host was cancelled while draining")
        finally:
            if self._state is _State.DRAINING:
                self._state = _State.CLOSING
            # A child cannot outlive its parent: its work is cancelled with ours.
            for child in self.children:
                child.cancel(f"its parent activity {self._name!r} is closing")
            await self._wait_tree_idle(deadline)
            self._state = _State.CLOSED
            await dispatcher.aclose()
            if self._apartment is not None:
                await self._join_apartment()
            tracking._live.discard(self)
            token = self._token
            if token is not None:
                self._token = None
                try:
                    _frame.reset(token)
                except ValueError:
                    # Left in another context than it was entered in: undo only what
                    # is ours there, never another activity's frame.
                    if _frame.get() is self:
                        old = token.old_value
                        _frame.set(None if old is Token.MISSING else old)
            if tracking._listeners:
                tracking.emit(tracking.EventKind.ACTIVITY_CLOSED, self)
        failures = self._take_failures()
        raised = interrupted if interrupted is not None else exc
        if failures:
            if raised is not None and not dispatcher.is_cancellation(raised):
                failures.insert(0, raised)
            message = f"{len(failures)} unobserved failure(s) in activity {self._name!r}"
            if all(isinstance(f, Exception) for f in failures):
                raise ExceptionGroup(message, failures)  # type: ignore[type-var]
            raise BaseExceptionGroup(message, failures)
        if interrupted is not None:
            raise interrupted

    async def _wait_tree_idle(self, deadline: float | None) -> None:
        """Wait, shielded, until the activity and its children are idle.

        What is still running here was cancelled already, except error handlers
        and done callbacks, which may finish their work until ``deadline``: then
        they are cancelled too, so that no handler can hold the exit forever.
        """
        busy = [a for a in (self, *self.children) if not a._is_idle()]
        if not busy:
            return
        dispatcher = self._dispatcher
        assert dispatcher is not None
        timer: anyio.CancelScope | None = None
        if deadline is not None:
            timer = anyio.CancelScope()
            dispatcher.spawn(self._stop_at(deadline, timer))
        try:
            for activity in busy:
                if not activity._is_idle():
                    await activity._wait_idle_shielded()
        finally:
            if timer is not None:
                timer.cancel()

    async def _stop_at(self, deadline: float, timer: anyio.CancelScope) -> None:
        with timer:
            await anyio.sleep_until(deadline)
            timeout = self._config.shutdown_timeout
            for activity in (self, *self.children):
                activity._stop(f"shutdown_timeout ({timeout} s) expired")

    def _stop(self, reason: str) -> None:
        """Cancel everything still under way, error handlers and done callbacks included."""
        self._refuse_waiters(self._closed_error())
        self._cancel_all(reason)
        for scope in self._handler_scopes:
            scope.cancel()

    def _take_failures(self) -> list[BaseException]:
        """The failures to raise at exit: unobserved calls' and handlers', once."""
        # A tuple first: a thread reading a call's future may pop from the dict meanwhile.
        unobserved = tuple(self._unobserved.values())
        self._unobserved.clear()
        failures: list[BaseException] = [
            call._exception for call in unobserved if call._exception is not None
        ]
        dropped = self._dropped_failures
        self._dropped_failures = None
        if dropped is not None and dropped[0]:
            ids, by_type = dropped
            kinds = ", ".join(f"{name} x {count}" for name, count in by_type.items())
            failures.append(
                ActivityError(
                    f"{len(ids)} more unobserved failure(s) in activity {self._name!r} were "
                    f"counted but not kept (only the first {MAX_KEPT_FAILURES} are kept with "
                    f"their tracebacks): {kinds}"
                )
            )
        failures.extend(self._handler_errors)
        self._handler_errors = []
        return failures

    def cancel(self, reason: str | None = None) -> None:
        """Cancel every accepted call and stop admission.

        Pending calls end ``CANCELLED`` at once; running calls are cancelled at
        their next checkpoint. Later calls raise :class:`ActivityClosedError`.
        The block's body is not cancelled: ``await wait_idle()`` waits for the
        cancelled calls to end.

        :param reason: said in each call's :class:`CallCancelledError`
        """
        if self._wrong_thread():
            self._call_soon_threadsafe(self.cancel, reason)
            return
        # A loop, not recursion: a tree of activities may be nested arbitrarily deep.
        stack: list[tuple[Activity, str | None]] = [(self, reason)]
        while stack:
            activity, why = stack.pop()
            if activity._cancel_one(why):
                cause = f"its parent activity {activity._name!r} was cancelled"
                stack.extend((child, cause) for child in activity.children)

    def _cancel_one(self, reason: str | None) -> bool:
        """Cancel this activity's own work; return whether its children are due too."""
        state = self._state
        if state is _State.NEW or state is _State.CLOSED:
            return False
        if state is _OPEN or state is _State.DRAINING:
            self._state = _State.CANCELLED
            self._fast_sync = False
        if self._cancel_reason is None:
            self._cancel_reason = reason or "the activity was cancelled"
        self._refuse_waiters(self._closed_error())
        self._cancel_all(reason)
        return True

    async def wait_idle(self) -> None:
        """Wait until no call is pending or running (and no async error handler runs)."""
        self._check_thread()
        if not self._is_idle():
            await self._wait_idle_for(None)

    # -- submission ---------------------------------------------------------------------

    @overload
    async def asynchronous_call(
        self,
        fn: Callable[[Unpack[Ts]], Awaitable[T]],
        /,
        *args: *Ts,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Call[T]: ...
    @overload
    async def asynchronous_call(
        self, fn: Awaitable[T], /, *, name: str | None = None, timeout: float | None = None
    ) -> Call[T]: ...
    @overload
    async def asynchronous_call(
        self,
        fn: AsyncServiceCall[T],
        /,
        *,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Call[T]: ...
    @overload
    async def asynchronous_call(
        self, fn: ServiceCall[T], /, *, name: str | None = None, timeout: float | None = None
    ) -> Call[T]: ...
    @overload
    async def asynchronous_call(
        self,
        fn: Callable[[Unpack[Ts]], T],
        /,
        *args: *Ts,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Call[T]: ...
    async def asynchronous_call(  # type: ignore[misc]  # mypy and TypeVarTuple overloads
        self, fn: Any, /, *args: Any, name: str | None = None, timeout: float | None = None
    ) -> Call[Any]:
        """Queue ``fn(*args)`` to run in the activity; return once it is *accepted*.

        The COM+ ``IServiceActivity::AsynchronousCall``. Returning a :class:`Call`
        means the work was accepted (S_OK), not that it finished. ``fn`` is a
        coroutine function (run as a task on the loop), a plain callable (run in
        one of the activity's worker threads), an object with ``on_call()``
        (whose ``on_error(exc)``, if any, observes its failure), or a coroutine
        object (then no ``args``). Keyword arguments go through
        ``functools.partial``. A body that raises ``StopIteration`` fails the
        call with a ``RuntimeError`` caused by it, as Python does for a
        coroutine: no ``await`` can carry a ``StopIteration``.

        :param fn: the work
        :param args: positional arguments for ``fn``
        :param name: a name for the call (tracebacks, tracking)
        :param timeout: seconds the call may run before it fails with
            :class:`CallTimeoutError` (default: the config's ``timeout``)
        :return: the call's handle
        :raises AsyncWorkRejectedError: if the queue is full (``Overflow.REJECT``), or
            stays full for ``admission_timeout`` (``Overflow.WAIT``); the work never runs
        :raises ActivityClosedError: if the activity is not open, cancelled or closing
        :raises InvalidArgumentError: if ``fn``, ``name`` or ``timeout`` is not valid
        :raises WrongThreadError: if called from another thread than the activity's
        """
        kind, body, target, call_timeout = self._validate(fn, args, timeout, name)
        call = self._new_call(kind, body, args, target, name, call_timeout, _frame.get(), False)
        admission = self._admission
        if admission.can_run_now():
            admission.accept_running(call)
            self._launch(call)
        elif admission.can_queue():
            admission.accept_pending(call)
        elif self._overflow is Overflow.WAIT:
            await self._wait_for_admission(call, self._config.admission_timeout)
        else:
            self._reject(call, fn)
        return call

    @overload
    def asynchronous_call_nowait(
        self,
        fn: Callable[[Unpack[Ts]], Awaitable[T]],
        /,
        *args: *Ts,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Call[T]: ...
    @overload
    def asynchronous_call_nowait(
        self, fn: Awaitable[T], /, *, name: str | None = None, timeout: float | None = None
    ) -> Call[T]: ...
    @overload
    def asynchronous_call_nowait(
        self,
        fn: AsyncServiceCall[T],
        /,
        *,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Call[T]: ...
    @overload
    def asynchronous_call_nowait(
        self, fn: ServiceCall[T], /, *, name: str | None = None, timeout: float | None = None
    ) -> Call[T]: ...
    @overload
    def asynchronous_call_nowait(
        self,
        fn: Callable[[Unpack[Ts]], T],
        /,
        *args: *Ts,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Call[T]: ...
    def asynchronous_call_nowait(  # type: ignore[misc]  # mypy and TypeVarTuple overloads
        self, fn: Any, /, *args: Any, name: str | None = None, timeout: float | None = None
    ) -> Call[Any]:
        """Queue ``fn(*args)`` like :meth:`asynchronous_call`, without waiting.

        A plain method (trio's ``*_nowait`` convention): the work is accepted
        or refused before it returns, whatever the ``overflow`` setting, so it
        can be used where no ``await`` is possible, and a forgotten ``await``
        cannot leave the work unsubmitted.

        :param fn: the work, as for :meth:`asynchronous_call`
        :param args: positional arguments for ``fn``
        :param name: a name for the call (tracebacks, tracking)
        :param timeout: seconds the call may run (default: the config's ``timeout``)
        :return: the call's handle
        :raises AsyncWorkRejectedError: if the queue is full, at once
        :raises ActivityClosedError: if the activity is not open, cancelled or closing
        :raises InvalidArgumentError: if ``fn``, ``name`` or ``timeout`` is not valid
        :raises WrongThreadError: if called from another thread or event loop than the
            activity's

        .. versionadded:: 0.1
        """
        kind, body, target, call_timeout = self._validate(fn, args, timeout, name)
        call = self._new_call(kind, body, args, target, name, call_timeout, _frame.get(), False)
        admission = self._admission
        if admission.can_run_now():
            admission.accept_running(call)
            self._launch(call)
        elif admission.can_queue():
            admission.accept_pending(call)
        else:
            self._reject(call, fn)
        return call

    @overload
    async def synchronous_call(
        self,
        fn: Callable[[Unpack[Ts]], Awaitable[T]],
        /,
        *args: *Ts,
        timeout: float | None = None,
    ) -> T: ...
    @overload
    async def synchronous_call(self, fn: Awaitable[T], /, *, timeout: float | None = None) -> T: ...
    @overload
    async def synchronous_call(
        self, fn: AsyncServiceCall[T], /, *, timeout: float | None = None
    ) -> T: ...
    @overload
    async def synchronous_call(
        self, fn: ServiceCall[T], /, *, timeout: float | None = None
    ) -> T: ...
    @overload
    async def synchronous_call(
        self, fn: Callable[[Unpack[Ts]], T], /, *args: *Ts, timeout: float | None = None
    ) -> T: ...
    async def synchronous_call(  # type: ignore[misc]  # mypy and TypeVarTuple overloads
        self, fn: Any, /, *args: Any, timeout: float | None = None
    ) -> Any:
        """Run ``fn(*args)`` in the activity and return its result.

        The COM+ ``IServiceActivity::SynchronousCall``. The call waits for its
        turn (it is never rejected for a full queue), runs with the activity's
        services, and its own exception is raised unchanged, traceback kept. A
        coroutine body runs in the caller's task, in its own copy of the
        context; a plain callable runs in a worker thread. Called from inside a
        running call of the same activity, it runs at once, within the caller's
        place, instead of waiting for a place that the caller itself holds. A
        body's ``StopIteration`` is raised as a ``RuntimeError`` caused by it.

        :param fn: the work, as for :meth:`asynchronous_call`
        :param args: positional arguments for ``fn``
        :param timeout: seconds the call may run (default: the config's ``timeout``);
            to bound the wait for a turn too, wrap the call in your own timeout
        :return: what ``fn`` returned
        :raises CallTimeoutError: if the call ran longer than ``timeout``
        :raises CallCancelledError: if the call was cancelled by the activity
        :raises ActivityClosedError: if the activity is not open, cancelled or closing
        :raises InvalidArgumentError: if ``fn`` or ``timeout`` is not valid
        :raises WrongThreadError: if called from another thread than the activity's
        """
        if (
            self._fast_sync
            and type(fn) is FunctionType
            and timeout is None
            and get_ident() == self._thread_id
            and _get_running_loop() is self._loop
            and (
                (flags := fn.__code__.co_flags) & CO_COROUTINE
                or not (flags & CO_GENERATORS or self._apartment or self._bound_to_loop)
            )
        ):
            # The common cases, inline: a coroutine function, or a plain function for
            # the worker threads, that may start at once, with no domain to enter and
            # no timeout to arm. The steps of the general path below, without the
            # branches that cannot apply.
            blocking = not flags & CO_COROUTINE
            frame = _frame.get()
            admission = self._admission
            if frame is None:
                reentrant = False
                origin = None
            else:
                reentrant = frame._activity is self
                origin = frame._origin if reentrant else frame._activity
                reentrant = reentrant and type(frame) in _CALL_FRAMES
            if reentrant or (
                admission.slots < admission.max_concurrency
                and not admission.pending
                and not admission.waiters
            ):
                counters = self._counters
                counters.accepted += 1
                counters.running += 1
                if not reentrant:
                    admission.slots += 1
                loop = self._loop
                if not blocking:
                    # A coroutine: its frame is an InlineCall, which becomes a Call
                    # only if the call ends otherwise than completed, unobserved.
                    causality = None if frame is None else frame._causality
                    if loop is None:
                        # trio: the body runs in a cancel scope of its own, which is
                        # what the activity cancels.
                        trio_dispatcher = cast("TrioDispatcher", self._dispatcher)
                        scope = trio_dispatcher._cancel_scope()
                        inline = InlineCall(self, origin, causality, scope)
                        inline_calls = self._inline_calls
                        inline_calls.add(inline)
                        result = None  # unless the scope catches the cancellation
                        try:
                            # The frame goes into the body's copy of the context by a
                            # call from C to C, cheaper than a first step in Python.
                            context = copy_context()
                            context.run(_frame.set, inline)
                            with scope:
                                result = await drive_in_context(fn(*args), context)
                        except BaseException as error:
                            call = self._promote(inline, fn, args, reentrant)
                            if isinstance(error, trio_dispatcher._cancelled_exc):
                                self._finish(call, CANCELLED, None, None)  # from outside
                            else:
                                self._finish(call, FAILED, None, error)
                            raise
                        if scope.cancelled_caught:
                            call = self._promote(inline, fn, args, reentrant)
                            return self._end_inline(call, CANCELLED, None, None)
                    else:
                        # With the loop given, current_task() skips looking the loop
                        # up (3x faster).
                        task = current_task(loop)
                        inline = InlineCall(self, origin, causality, task)
                        inline_calls = self._inline_calls
                        inline_calls.add(inline)
                        try:
                            context = copy_context()
                            context.run(_frame.set, inline)
                            result = await drive_in_context(fn(*args), context)
                        except asyncio.CancelledError:
                            call = self._promote(inline, fn, args, reentrant)
                            self._finish(call, CANCELLED, None, None)
                            if call._cancel_requested and task.uncancel() == 0:  # type: ignore[union-attr]
                                raise self._cancelled_error(call) from None
                            raise
                        except BaseException as error:
                            self._finish(
                                self._promote(inline, fn, args, reentrant), FAILED, None, error
                            )
                            raise
                        if inline._cancel_requested and task.cancelling():  # type: ignore[union-attr]
                            task.uncancel()  # type: ignore[union-attr]
                    inline._task = None
                    if tracking._listeners or type(result) in CHECKED_RESULTS:
                        call = self._promote(inline, fn, args, reentrant)
                        return self._end_inline(call, *outcome_of_result(call, result))
                    inline._causality = None  # itself, when it started the chain
                    inline_calls.discard(inline)
                else:
                    # A plain function, for the worker threads.
                    call = Call._create(
                        self, BLOCKING, fn, args, origin, True, RUNNING, not reentrant
                    )
                    call._observed = True  # its caller is told of its failure
                    if frame is not None and frame._causality is not None:
                        call._causality = frame._causality
                    token = _frame.set(call)
                    context = call._context = copy_context()
                    _frame.reset(token)
                    running_calls = self._running_calls
                    running_calls.add(call)
                    if loop is None:
                        # trio: the dispatcher hands it to anyio's worker threads, in a
                        # cancel scope of its own.
                        status, result, failure = await self._dispatcher.run_inline(call)  # type: ignore[union-attr]
                        if (
                            status is not COMPLETED
                            or call._status is not RUNNING
                            or tracking._listeners
                        ):
                            return self._end_inline(call, status, result, failure)
                    else:
                        # asyncio: the lent thread pool.
                        task = call._future = current_task(loop)
                        try:
                            dispatcher = cast("AsyncioDispatcher", self._dispatcher)
                            result = await dispatcher._in_thread(context.run, call)
                        except asyncio.CancelledError:
                            call._future = None
                            ours = call._cancel_requested or call._timed_out
                            self._finish(call, CANCELLED, None, None)
                            if ours and task.uncancel() == 0:  # type: ignore[union-attr]
                                raise self._cancelled_error(call) from None
                            raise
                        except BaseException as error:
                            call._future = None
                            self._finish(call, FAILED, None, error)
                            raise
                        call._future = None
                        if call._cancel_requested and task.cancelling():  # type: ignore[union-attr]
                            task.uncancel()  # type: ignore[union-attr]
                        if (
                            call._status is not RUNNING
                            or tracking._listeners
                            or type(result) in CHECKED_RESULTS
                        ):
                            return self._end_inline(call, *outcome_of_result(call, result))
                    # _finish, minus what a completed call that nobody else holds never needs.
                    call._status = COMPLETED
                    call._context = None  # both refer back to the call, as in _finish
                    call._causality = None
                    if args:
                        call._args = ()
                    running_calls.discard(call)
                    call._holds_slot = False
                counters.running -= 1
                counters.completed += 1
                if not reentrant:
                    admission.slots -= 1
                    if admission.pending or admission.waiters:
                        self._pump()
                if self._idle_event is not None:
                    self._signal_if_idle()
                return result

        kind, body, target, call_timeout = self._validate(fn, args, timeout, None)
        frame = _frame.get()
        call = self._new_call(kind, body, args, target, None, call_timeout, frame, True)
        causality = call._causality
        domain = self._domain
        reentrant = (isinstance(frame, _CALL_FRAMES) and frame._activity is self) or (
            domain is not None and domain.owner is causality
        )
        admission = self._admission
        if reentrant or admission.can_run_now():
            admission.accept_running(call, hold_slot=not reentrant)
        else:
            return await self._synchronous_call_queued(call)
        self._running_calls.add(call)
        call._observed = True
        status, value, exc = await self._dispatcher.run_inline(call)  # type: ignore[union-attr]
        return self._end_inline(call, status, value, exc)

    def _end_inline(
        self, call: Call[Any], status: CallStatus, value: Any, exc: BaseException | None
    ) -> Any:
        """Record how a synchronous call run inline ended; return its value or raise."""
        if status is CANCELLED:
            self._finish(call, CANCELLED, None, None)
            if exc is not None:  # the caller itself was cancelled
                raise exc
            raise self._cancelled_error(call)
        self._finish(call, status, value, exc)
        if exc is not None:
            raise exc
        return value

    def _promote(
        self, inline: InlineCall, fn: Any, args: tuple[Any, ...], reentrant: bool
    ) -> Call[Any]:
        """The Call of an inline call that ends otherwise than completed and unobserved."""
        call = Call._create(
            self, COROUTINE_FUNCTION, fn, args, inline._origin, True, RUNNING, not reentrant
        )
        call._observed = True  # its caller is told of its failure
        call._cancel_requested = inline._cancel_requested
        call._note_cancel_reason(inline._cancel_reason)
        inline._task = None
        inline._causality = None
        self._inline_calls.discard(inline)
        self._running_calls.add(call)
        return call

    def _validate(
        self, fn: Any, args: tuple[Any, ...], timeout: Any, name: Any
    ) -> tuple[Kind, Any, Any, float | None]:
        """Check a submission before anything is accepted: (kind, body, on_error target, timeout).

        A refused coroutine object is closed, so Python never warns it was not awaited.
        """
        if (
            type(fn) is FunctionType
            and timeout is None
            and name is None
            and self._state is _OPEN
            and get_ident() == self._thread_id
            and _get_running_loop() is self._loop
        ):
            # The common cases: a function (coroutine or plain) without per-call
            # options, on the activity's own thread while it is open.
            flags = fn.__code__.co_flags
            if flags & CO_COROUTINE:
                return COROUTINE_FUNCTION, fn, None, self._timeout
            if not flags & CO_GENERATORS:
                return BLOCKING, fn, None, self._timeout
        try:
            self._check_open()
            kind, body, target = classify(fn, args)
            call_timeout = self._timeout if timeout is None else check_timeout(timeout, None)
            if name is not None:
                check_name(name)
        except BaseException:
            refuse_coroutine(fn)
            raise
        return kind, body, target, call_timeout

    async def _synchronous_call_queued(self, call: Call[Any]) -> Any:
        """The slow path of ``synchronous_call``: wait in line, then await the call's task."""
        admission = self._admission
        if admission.can_queue():
            admission.accept_pending(call)
        else:
            await self._wait_for_admission(call, None)
        try:
            await call.wait()
        except BaseException:
            self._cancel_call(call, "the caller of synchronous_call was cancelled")
            raise
        return call.result()

    # -- admission ----------------------------------------------------------------------

    async def _wait_for_admission(self, call: Call[Any], timeout: float | None) -> None:
        """Park until the queue has room for ``call``, which is then accepted."""
        dispatcher = self._dispatcher
        assert dispatcher is not None
        waiter = Waiter(call, dispatcher.new_event())
        self._admission.waiters.append(waiter)
        try:
            admitted = await dispatcher.wait_event(waiter.event, timeout)
        except BaseException:
            if not waiter.event.is_set():
                self._admission.waiters.remove(waiter)
                refuse_coroutine(call._fn)
            # else: the call was accepted before the cancellation arrived; it runs.
            raise
        if waiter.refused is not None:
            refuse_coroutine(call._fn)
            raise waiter.refused
        if not admitted:
            self._admission.waiters.remove(waiter)
            self._reject(call, call._fn, waited=timeout)

    def _reject(self, call: Call[Any], fn: Any, waited: float | None = None) -> None:
        self._counters.rejected += 1
        refuse_coroutine(fn)
        if tracking._listeners:
            tracking.emit(tracking.EventKind.CALL_REJECTED, self, call)
        a = self._admission
        how = f" after waiting {waited} s" if waited is not None else ""
        where = f" in partition {a.partition!r}" if a.partition is not None else ""
        raise AsyncWorkRejectedError(
            f"activity {self._name!r} rejected {call.name!r}{how}: {a.slots} running "
            f"(max_concurrency={a.max_concurrency}) and {a.pending} pending "
            f"(max_pending={a.max_pending}){where}"
        )

    def _launch(self, call: Call[Any]) -> None:
        """Hand a call that was just counted as running to the dispatcher."""
        self._running_calls.add(call)
        if not call._synchronous:
            call._context.run(_frame.set, call)  # type: ignore[union-attr]
        self._dispatcher.start(call)  # type: ignore[union-attr]

    def _pump(self) -> None:
        """Start queued calls while slots are free, then let waiters in.

        In a partition the queue is shared, so the next call may be another
        activity's: each call is launched by its own activity.
        """
        admission = self._admission
        while True:
            call = admission.pop_ready()
            if call is not None:
                call._activity._launch(call)
                continue
            waiter = admission.pop_waiter()
            if waiter is None:
                return
            call = waiter.call
            # Not can_run_now(): the waiters behind this one are no reason to queue it.
            if admission.slots < admission.max_concurrency and not admission.pending:
                admission.accept_running(call)
                call._activity._launch(call)
            else:
                admission.accept_pending(call)
            waiter.event.set()

    def _refuse_waiters(self, error: BaseException) -> None:
        for waiter in self._admission.take_waiters_of(self):
            waiter.refused = error
            waiter.event.set()

    # -- the end of a call ------------------------------------------------------------------

    def _finish(
        self, call: Call[Any], status: CallStatus, result: Any, exc: BaseException | None
    ) -> None:
        """Record how ``call`` ended, tell whoever waits, route a failure, admit more."""
        started = call._status
        if started is not RUNNING and started is not PENDING:
            return  # already finished (a cancellation raced with the end)
        if started is PENDING and call._kind is COROUTINE:
            call._fn.close()  # it never ran: Python must not warn that it was never awaited
        freed = self._admission.finish(call, status)
        self._running_calls.discard(call)
        if status is COMPLETED:
            call._result = result
        elif status is FAILED:
            call._exception = exc
        else:
            call._exception = self._cancelled_error(call)
        call._args = ()
        # Both refer back to the call (its context holds it as the frame; its own
        # chain is itself): cleared, the call is freed by reference counting alone.
        call._context = None
        call._causality = None
        extras = call._extras
        if extras is not None and extras.event is not None:
            extras.event.set()
        if status is FAILED:
            assert exc is not None
            self._on_failure(call, exc)
        if extras is not None and extras.callbacks is not None:
            callbacks = extras.callbacks
            extras.callbacks = None
            for callback in callbacks:
                self._invoke_handler(callback, call)
        if tracking._listeners:
            tracking.emit(tracking.EventKind.CALL_FINISHED, self, call)
        admission = self._admission
        if freed and (admission.pending or admission.waiters):
            self._pump()
        self._signal_if_idle()

    def _on_failure(self, call: Call[Any], exc: BaseException) -> None:
        """Route a failure: on_error, error_handler; else keep it for the exit."""
        if call._synchronous:
            if not call._observed:
                self._keep_unobserved(call)
            return
        observed = False
        extras = call._extras
        target = None if extras is None else extras.error_target
        if target is not None:
            self._invoke_handler(target.on_error, exc)
            observed = True
        handler = self._config.error_handler
        if handler is not None:
            self._invoke_handler(handler, call, exc)
            observed = True
        if not observed and not call._observed:
            self._keep_unobserved(call)
        # The drain is where most failures happen: fail-fast holds there too.
        if self._fail_fast and (self._state is _OPEN or self._state is _State.DRAINING):
            self.cancel(f"fail-fast: call {call.name!r} failed with {type(exc).__name__}")

    def _keep_unobserved(self, call: Call[Any]) -> None:
        """Keep a failure nobody observed for the exit; past the bound, only count it."""
        if len(self._unobserved) < MAX_KEPT_FAILURES:
            self._unobserved[call._id] = call
            return
        dropped = self._dropped_failures
        if dropped is None:
            dropped = self._dropped_failures = (set(), {})
        ids, by_type = dropped
        ids.add(call._id)
        kind = type(call._exception).__qualname__
        by_type[kind] = by_type.get(kind, 0) + 1

    def _invoke_handler(self, handler: Callable[..., Any], *args: Any) -> None:
        if self._state is _State.CLOSED:
            # Nobody is left to report to at exit: the caller hears of it at once.
            outcome = handler(*args)
            if inspect.isawaitable(outcome):
                refuse_coroutine(outcome)
                raise ActivityClosedError(
                    f"{handler!r} returned an awaitable, but activity {self._name!r} has "
                    "closed and nothing is left to await it"
                )
            return
        try:
            outcome = handler(*args)
        except BaseException as error:
            self._handler_failed(error)
            return
        if inspect.isawaitable(outcome):
            self._handlers_in_flight += 1
            failure = next((a for a in reversed(args) if isinstance(a, BaseException)), None)
            if failure is None and args and isinstance(args[0], Call):
                failure = args[0]._exception
            self._dispatcher.spawn(self._await_handler(outcome, handler, failure))  # type: ignore[union-attr]

    async def _await_handler(
        self, awaitable: Awaitable[Any], handler: object, failure: BaseException | None
    ) -> None:
        # In a scope of its own, so that the exit can stop a handler that never returns.
        scope = anyio.CancelScope()
        self._handler_scopes.add(scope)
        try:
            with scope:
                await awaitable
        except BaseException as error:
            if not self._dispatcher.is_cancellation(error):  # type: ignore[union-attr]
                self._handler_failed(error)
                return
            self._handler_errors.append(self._handler_cut_short(handler, failure))
            raise
        else:
            if scope.cancelled_caught:
                self._handler_errors.append(self._handler_cut_short(handler, failure))
        finally:
            self._handler_scopes.discard(scope)
            self._handlers_in_flight -= 1
            self._signal_if_idle()

    def _handler_cut_short(self, handler: object, failure: BaseException | None) -> ActivityError:
        """The report of a handler stopped at exit; the failure it had is its cause."""
        error = ActivityError(
            f"{handler!r} of activity {self._name!r} was cancelled before it finished "
            f"(shutdown_timeout is {self._config.shutdown_timeout} s); the failure it was "
            "handling, its cause, may not have been dealt with"
        )
        error.__cause__ = failure
        return error

    def _handler_failed(self, error: BaseException) -> None:
        # COM+ fails fast when OnError fails: the error is never swallowed, and the
        # activity stops taking and running work.
        self._handler_errors.append(error)
        self.cancel(f"an error handler failed with {type(error).__name__}")

    def _listener_failed(self, error: BaseException) -> None:
        self._handler_errors.append(error)

    def _observed(self, call: Call[Any]) -> None:
        if self._unobserved.pop(call._id, None) is None and self._dropped_failures is not None:
            ids, by_type = self._dropped_failures
            if call._id in ids:
                ids.discard(call._id)
                kind = type(call._exception).__qualname__
                by_type[kind] -= 1
                if not by_type[kind]:
                    del by_type[kind]

    # -- cancellation ---------------------------------------------------------------------

    def _cancel_call(self, call: Call[Any], reason: str | None) -> bool:
        status = call._status
        if status is not PENDING and status is not RUNNING:
            return False
        if self._wrong_thread():
            # Asked from another thread: the loop does it, woken to do it now.
            return self._call_soon_threadsafe(self._cancel_call, call, reason)
        if status is PENDING:
            call._note_cancel_reason(reason)
            call._cancel_requested = True
            self._finish(call, CANCELLED, None, None)
            return True
        call._note_cancel_reason(reason)
        if not (call._cancel_requested or call._timed_out):
            # Once only: a second cancellation of a call that runs in its caller's task
            # would cancel that task once more than the call can take back.
            self._dispatcher.cancel_running(call)  # type: ignore[union-attr]
        return True

    def _cancel_all(self, reason: str | None) -> None:
        for call in self._admission.take_pending_of(self):
            call._note_cancel_reason(reason)
            call._cancel_requested = True
            self._finish(call, CANCELLED, None, None)
        for call in list(self._running_calls):
            self._cancel_call(call, reason)
        for inline in list(self._inline_calls):
            inline.cancel(reason)

    def _cancelled_error(self, call: Call[Any]) -> CallCancelledError:
        extras = call._extras
        reason = (None if extras is None else extras.cancel_reason) or self._cancel_reason
        because = f": {reason}" if reason else ""
        return CallCancelledError(f"call {call.name!r} was cancelled{because}")

    # -- waiting --------------------------------------------------------------------------

    def _is_idle(self) -> bool:
        c = self._counters
        return c.pending == 0 and c.running == 0 and self._handlers_in_flight == 0

    def _signal_if_idle(self) -> None:
        event = self._idle_event
        if event is not None and self._is_idle():
            event.set()
            self._idle_event = None

    def _idle_waiter(self) -> tuple[Dispatcher, Event]:
        """The dispatcher and the event set when the activity next becomes idle."""
        dispatcher = self._dispatcher
        assert dispatcher is not None
        event = self._idle_event
        if event is None:
            event = self._idle_event = dispatcher.new_event()
        return dispatcher, event

    async def _wait_idle_shielded(self) -> None:
        dispatcher, event = self._idle_waiter()
        await dispatcher.wait_event_shielded(event)

    async def _wait_idle_for(self, timeout: float | None) -> bool:
        dispatcher, event = self._idle_waiter()
        return await dispatcher.wait_event(event, timeout)

    async def _wait_call(self, call: Call[Any]) -> None:
        extras = call._more()
        event = extras.event
        if event is None:
            dispatcher = self._dispatcher
            assert dispatcher is not None
            event = extras.event = dispatcher.new_event()
        await event.wait()

    # -- checks -----------------------------------------------------------------------------

    def _wrong_thread(self) -> bool:
        """Whether the caller is on another thread than the activity's (once entered)."""
        return get_ident() != self._thread_id and self._state is not _State.NEW

    def _call_soon_threadsafe(self, fn: Callable[..., object], *args: Any) -> bool:
        """Run ``fn(*args)`` soon on the activity's loop; say whether the loop took it."""
        try:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(fn, *args)
            else:
                assert self._wake_token is not None
                self._wake_token.native_token.run_sync_soon(fn, *args)  # type: ignore[attr-defined]
        except RuntimeError:  # the loop has finished: nothing is left to cancel
            return False
        return True

    def _check_thread(self) -> None:
        if self._state is _State.NEW:
            return
        if get_ident() == self._thread_id and _get_running_loop() is not self._loop:
            raise WrongThreadError(
                f"activity {self._name!r} belongs to another event loop of this thread, the "
                "one it was entered in: an activity cannot move between event loops, so "
                "create one per loop (for example per test)"
            )
        if get_ident() != self._thread_id:
            raise WrongThreadError(
                f"activity {self._name!r} belongs to the event loop of another thread; "
                f"this is {current_thread().name!r}. From a foreign thread, use "
                "act.synchronous_call_from_thread(fn, ...) or "
                "act.asynchronous_call_from_thread(fn, ...), which are thread-safe"
            )

    def _check_open_or_cancelled(self) -> None:
        self._check_thread()
        if self._state is not _OPEN and self._state is not _State.CANCELLED:
            raise self._closed_error()

    def _check_open(self) -> None:
        if (
            self._state is not _OPEN
            or get_ident() != self._thread_id
            or _get_running_loop() is not self._loop
        ):
            self._check_thread()  # an open activity gets here only from a wrong thread or loop
            if self._state is _State.DRAINING and self._is_own_work(_frame.get()):
                return  # a running call's nested call is part of what is being drained
            raise self._closed_error()

    def _is_own_work(self, frame: _Frame | None) -> bool:
        """Whether ``frame`` is one of the activity's calls (not its block, nor another's)."""
        return frame is not None and frame._activity is self and type(frame) in _CALL_FRAMES

    def _closed_error(self) -> ActivityClosedError:
        state = self._state
        if state is _State.NEW:
            return ActivityClosedError(
                f"activity {self._name!r} is not open yet: enter it with 'async with'"
            )
        if state is _State.CANCELLED:
            return ActivityClosedError(
                f"activity {self._name!r} was cancelled ({self._cancel_reason}) and takes no work"
            )
        return ActivityClosedError(f"activity {self._name!r} is {state.value} and takes no work")

    # -- activity-local values ----------------------------------------------------------------

    def _resolve_services(self, parent: Activity | None) -> bool:
        """Settle inheritance, domain, thread model and partition; say if a new domain is due.

        Raises before anything changes, so a refused activity stays unopened.
        """
        config = self._config
        inherit = parent is not None and config.inheritance is Inheritance.INHERIT
        container = parent._domain if inherit and parent is not None else None
        synchronization = config.effective_synchronization
        new_domain = synchronization is Synchronization.NEW or (
            synchronization is Synchronization.NEW_IF_NECESSARY and container is None
        )
        model = config.effective_thread_pool
        if model is ThreadPool.INHERIT:
            model = parent._thread_model if inherit and parent is not None else ThreadPool.MTA
        bound = config.binding is Binding.BIND_TO_POOL_THREAD
        if bound and model is not ThreadPool.STA:
            raise InvalidArgumentError(
                f"activity {self._name!r} inherits the MTA thread model from its parent, and "
                "binding=Binding.BIND_TO_POOL_THREAD needs an STA one",
                field="binding",
                value=config.binding,
                hresult=HResult.CO_E_THREADPOOL_CONFIG,
            )
        if config.partition is not None:
            self._admission = join_partition(
                config.partition, config.max_concurrency, config.max_pending
            )
        self._origin = parent if inherit else None
        if not new_domain and synchronization is not Synchronization.NONE:
            self._domain = container
        self._thread_model = model
        if model is ThreadPool.STA:
            self._apartment = Apartment(self._name, bound=bound)
        return new_domain

    async def _join_apartment(self) -> None:
        """Stop the STA threads and wait for them, up to ``shutdown_timeout``.

        A thread still held by an abandoned blocking call after that is reported
        as a failure of the activity, never left behind silently.
        """
        assert self._apartment is not None
        threads = self._apartment.stop()
        timeout = self._config.shutdown_timeout
        deadline = None if timeout is None else anyio.current_time() + timeout
        for thread in threads:
            remaining = None if deadline is None else max(0.0, deadline - anyio.current_time())
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(thread.join, remaining)
            if thread.is_alive():
                self._handler_errors.append(
                    ActivityError(
                        f"STA thread {thread.name!r} of activity {self._name!r} did not stop "
                        f"within shutdown_timeout ({timeout} s): an abandoned blocking call "
                        "is still running in it"
                    )
                )

    # -- thread binding and entry from other threads ---------------------------------

    def bind_to_current_thread(self) -> None:
        """Run the activity's later blocking calls on the event-loop thread itself.

        COM+'s ``IServiceActivity::BindToCurrentThread``. For code that must run
        on the thread that owns the loop (thread-affine objects made there); a
        long blocking call then blocks the loop, so keep them short.

        :raises WrongThreadError: if called from another thread than the activity's
        :raises ActivityClosedError: if the activity is not open
        """
        self._check_open_or_cancelled()
        self._bound_to_loop = True

    def unbind_from_thread(self) -> None:
        """Undo :meth:`bind_to_current_thread`: blocking calls go back to worker threads.

        COM+'s ``IServiceActivity::UnbindFromThread``.

        :raises WrongThreadError: if called from another thread than the activity's
        """
        self._check_thread()
        self._bound_to_loop = False

    def _entry_token(self) -> anyio.lowlevel.EventLoopToken:
        if self._state is _State.NEW or self._state is _State.CLOSED:
            raise self._closed_error()
        if get_ident() == self._thread_id:
            raise WrongThreadError(
                f"{current_thread().name!r} is the thread of activity {self._name!r}'s own "
                "event loop, which this call would block: await act.synchronous_call(...) "
                "or act.asynchronous_call(...) instead"
            )
        assert self._wake_token is not None
        return self._wake_token

    @overload
    def asynchronous_call_from_thread(
        self,
        fn: Callable[[Unpack[Ts]], Awaitable[T]],
        /,
        *args: *Ts,
        name: str | None = None,
        timeout: float | None = None,
    ) -> concurrent.futures.Future[T]: ...
    @overload
    def asynchronous_call_from_thread(
        self,
        fn: Callable[[Unpack[Ts]], T],
        /,
        *args: *Ts,
        name: str | None = None,
        timeout: float | None = None,
    ) -> concurrent.futures.Future[T]: ...
    def asynchronous_call_from_thread(  # type: ignore[misc]  # mypy and TypeVarTuple overloads
        self, fn: Any, /, *args: Any, name: str | None = None, timeout: float | None = None
    ) -> concurrent.futures.Future[Any]:
        """Submit ``fn(*args)`` from a thread that is not the activity's loop thread.

        The thread-safe twin of :meth:`asynchronous_call`, for plain threads (a
        sync framework, a callback from a C library, a blocking call of another
        activity). It blocks the calling thread until the activity has accepted
        or rejected the work, with the same admission rules and errors, and
        returns a :class:`concurrent.futures.Future` of the call's result.
        Reading the future's ``result()`` or ``exception()`` observes a failure,
        as awaiting the :class:`Call` does. The call carries the thread's
        context, so a blocking call that calls back into its own activity keeps
        its causality.

        :return: a future of the call's result
        :raises AsyncWorkRejectedError: if the queue is full
        :raises ActivityClosedError: if the activity is not open or its loop has ended
        :raises InvalidArgumentError: if ``fn``, ``name`` or ``timeout`` is not valid
        :raises WrongThreadError: if called from the activity's own loop thread
        """
        token = self._entry_token()
        frame = _frame.get()

        async def submit() -> concurrent.futures.Future[Any]:
            _frame.set(frame)  # this task's own context: the thread's chain goes on here
            call = await self.asynchronous_call(fn, *args, name=name, timeout=timeout)
            future = _CallFuture(call)
            call.add_done_callback(future._resolve)
            return future

        try:
            return anyio.from_thread.run(submit, token=token)
        except anyio.RunFinishedError:
            raise ActivityClosedError(
                f"the event loop of activity {self._name!r} has finished"
            ) from None

    @overload
    def synchronous_call_from_thread(
        self,
        fn: Callable[[Unpack[Ts]], Awaitable[T]],
        /,
        *args: *Ts,
        timeout: float | None = None,
    ) -> T: ...
    @overload
    def synchronous_call_from_thread(
        self, fn: Callable[[Unpack[Ts]], T], /, *args: *Ts, timeout: float | None = None
    ) -> T: ...
    def synchronous_call_from_thread(  # type: ignore[misc]  # mypy and TypeVarTuple overloads
        self, fn: Any, /, *args: Any, timeout: float | None = None
    ) -> Any:
        """Run ``fn(*args)`` in the activity from another thread and return its result.

        The thread-safe twin of :meth:`synchronous_call`: the calling thread
        blocks until the call has finished, and gets its result or its
        exception. Called from a blocking call of the activity itself (whose
        thread carries the call's chain), it re-enters the activity's
        synchronization domain instead of deadlocking, and the chain's
        blocking calls made meanwhile (``fn`` itself, if it is one) run on the
        calling thread, which waits for them anyway: the apartment's thread of
        an STA activity, or the worker thread that holds the chain's place
        under ``thread_limit``. As COM+ re-enters an apartment, they never wait
        for a thread that the chain itself holds.

        A ``StopIteration`` raised by a blocking ``fn`` reaches the caller as
        ``RuntimeError`` whose ``__cause__`` it is, as on every path of the
        activity (a ``StopIteration`` cannot be raised through an ``await``).

        :return: what ``fn`` returned
        :raises ActivityClosedError: if the activity is not open or its loop has ended
        :raises WrongThreadError: if called from the activity's own loop thread
        """
        token = self._entry_token()
        frame = _frame.get()

        async def run() -> Any:
            _frame.set(frame)
            return await self.synchronous_call(fn, *args, timeout=timeout)

        try:
            dispatcher = self._dispatcher
            host = None if dispatcher is None else dispatcher.reentry_host(frame)
            if host is not None:
                return host.run(run)
            return anyio.from_thread.run(run, token=token)
        except anyio.RunFinishedError:
            raise ActivityClosedError(
                f"the event loop of activity {self._name!r} has finished"
            ) from None

    def _new_call(
        self,
        kind: Kind,
        body: Any,
        args: tuple[Any, ...],
        target: Any,
        name: str | None,
        timeout: float | None,
        frame: _Frame | None,
        synchronous: bool,
    ) -> Call[Any]:
        """Make a call and the copy of the submitter's context it will run in."""
        call = Call._create(
            self,
            kind,
            body,
            args,
            self._origin_of(frame),
            synchronous,
            PENDING,
            False,
            target,
            name,
            timeout,
        )
        if synchronous and frame is not None and frame._causality is not None:
            # The caller waits for this call, so the call continues the caller's chain.
            call._causality = frame._causality
        if not synchronous:
            # The frame is set when the call starts (_launch): a queued call holds
            # no context node of its own (120 bytes, and one object fewer for the
            # garbage collector to traverse while the backlog waits).
            call._context = copy_context()
            return call
        # Set, copy, reset: the copy sees the call as its frame, the submitter does
        # not, and it costs half of setting the variable through Context.run().
        token = _frame.set(call)
        call._context = copy_context()
        _frame.reset(token)
        return call

    def _origin_of(self, frame: _Frame | None) -> Activity | None:
        """Where a call submitted from ``frame`` looks for locals its activity lacks."""
        if frame is None:
            return None
        activity = frame._activity
        return frame._origin if activity is self else activity


@final
class _CallFuture(concurrent.futures.Future[T]):
    """A future of a call's result, for threads; reading it observes the call's failure."""

    def __init__(self, call: Call[T]) -> None:
        super().__init__()
        self._call = call
        self.set_running_or_notify_cancel()  # the work is under way: cancel() says no

    def _resolve(self, call: Call[Any]) -> None:
        if call._status is COMPLETED:
            self.set_result(call._result)
        else:
            assert call._exception is not None
            self.set_exception(call._exception)

    def result(self, timeout: float | None = None) -> T:
        try:
            return super().result(timeout)
        finally:
            if self.done():
                self._call._mark_observed()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        try:
            return super().exception(timeout)
        finally:
            if self.done():
                self._call._mark_observed()


class _Chain:
    """The causality of a service domain's block (a logical thread of its own)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<chain of service domain {self.name!r}>"


@asynccontextmanager
async def service_domain(
    config: ActivityConfig | Mapping[str, Any] | None = None, /, **options: Any
) -> AsyncGenerator[Activity]:
    """Run the enclosed code inside a set of services, in the current task.

    COM+'s ``CoEnterServiceDomain`` / ``CoLeaveServiceDomain`` pair, as an
    async context manager: no new task runs the block, but for its duration
    the code is inside an activity's services. Its synchronization domain is
    held by the block's call chain (other chains wait; the block's own
    ``synchronous_call``s re-enter), ``ActivityLocal`` values set in the block
    belong to it, and with ``Inheritance.INHERIT`` it sees the enclosing
    activity's values and joins its domain. Pairs nest and always balance.

    ::

        async with service_domain(synchronization=Synchronization.NEW) as domain:
            ...  # one chain at a time in here; domain is an Activity for calls

    Thread pool and binding belong to activities only, as in COM+.

    :param config: an :class:`ActivityConfig` (or a mapping of its fields)
    :param options: fields of :class:`ActivityConfig`
    :return: the domain's activity, open for the block
    :raises InvalidArgumentError: if ``thread_pool`` or ``binding`` is given, or any
        field is bad
    """
    given = set(options)
    if isinstance(config, ActivityConfig):
        given |= config.model_fields_set
    elif isinstance(config, Mapping):
        given |= set(config)
    refused = sorted(given & {"thread_pool", "binding"})
    if refused:
        raise InvalidArgumentError(
            f"a service domain takes no {' or '.join(refused)}: thread pool and binding "
            "can only be set for an activity, as CoEnterServiceDomain refuses them",
            field=refused[0],
            value=options.get(refused[0]),
        )
    activity = Activity(config, **options)
    async with activity:
        # Entered inside a call, the block continues that call's chain.
        chain = activity._causality or _Chain(activity.name)
        activity._causality = chain
        domain = activity._domain
        if domain is not None:
            await domain.enter(chain)
        try:
            yield activity
        finally:
            if domain is not None:
                domain.leave(chain)
            activity._causality = None


def create_activity(
    config: ActivityConfig | Mapping[str, Any] | None = None, /, **options: Any
) -> Activity:
    """Create an :class:`Activity` from a configuration (COM+'s ``CoCreateActivity``).

    :param config: an :class:`ActivityConfig`, or a mapping of its fields
    :param options: fields of :class:`ActivityConfig`, overriding ``config``'s
    :return: the activity, to be entered with ``async with``
    :raises InvalidArgumentError: if an option is unknown or has a bad value
    """
    return Activity(config, **options)


def cancel_requested() -> bool:
    """Return whether the call this code runs in was asked to stop.

    True once the call was cancelled (its ``cancel()``, the activity's
    ``cancel()``, the shutdown) or timed out, even though its body, in a worker
    thread, is still running: a thread cannot be stopped from outside, so a
    long blocking body should look now and then and return early. Outside any
    call (in an activity's block, or outside any activity) it is ``False``.
    Safe to call from any thread.

    .. versionadded:: 0.1
    """
    frame = _frame.get()
    if not isinstance(frame, _CALL_FRAMES):
        return False
    if isinstance(frame, InlineCall):
        return frame._cancel_requested
    return frame._cancel_requested or frame._timed_out or frame._status is CANCELLED


def check_cancelled() -> None:
    """In a blocking call, raise its cancellation if it was asked to stop; else return.

    The cooperative check for blocking code, like
    ``anyio.from_thread.check_cancelled()``: a blocking body that calls it
    between steps ends soon after its call was cancelled or timed out, instead
    of running on unseen after the activity has moved on. The call has ended
    already, so what it raises is not reported again. In a coroutine body, and
    outside any call, it returns at once: a coroutine is cancelled at its next
    ``await`` anyway (:func:`cancel_requested` tells it earlier, if it must know).

    :raises CallCancelledError: if the call was cancelled
    :raises CallTimeoutError: if the call ran longer than its timeout

    .. versionadded:: 0.1
    """
    call = cast("Call[Any] | InlineCall | Activity | None", _frame.get())
    if not isinstance(call, Call) or call._kind is not BLOCKING:
        return
    if call._timed_out and not call._cancel_requested:
        raise timeout_error(call)
    if call._cancel_requested or call._status is CANCELLED:
        raise call._activity._cancelled_error(call)


Activity.__module__ = "activity"
create_activity.__module__ = "activity"
service_domain.__module__ = "activity"
cancel_requested.__module__ = "activity"
check_cancelled.__module__ = "activity"
