"""The handle of one accepted call: :class:`Call` and :class:`CallStatus`."""

from __future__ import annotations

import enum
import itertools
from typing import TYPE_CHECKING, Any, ClassVar, Final, Generic, Protocol, Self, TypeVar, final

from ._errors import CallPendingError, InvalidArgumentError, hresult_of
from ._hresult import HResult

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Generator
    from contextvars import Context

__all__ = ["BaseCall", "CallHost", "CallStatus", "Counters", "Event", "InlineCall"]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class CallStatus(enum.Enum):
    """Where a :class:`Call` is in its life. Every accepted call ends in one of the last three."""

    #: Accepted, waiting in the activity's queue for a place to run.
    PENDING = "pending"
    #: Its body is running.
    RUNNING = "running"
    #: The body returned; ``result()`` gives the value.
    COMPLETED = "completed"
    #: The body raised, timed out or returned a failing ``HResult``; ``exception()`` gives why.
    FAILED = "failed"
    #: Cancelled on purpose (``Call.cancel()``, ``Activity.cancel()``, shutdown); not an error.
    CANCELLED = "cancelled"


PENDING: Final = CallStatus.PENDING
RUNNING: Final = CallStatus.RUNNING
COMPLETED: Final = CallStatus.COMPLETED
FAILED: Final = CallStatus.FAILED
CANCELLED: Final = CallStatus.CANCELLED
FINISHED: Final = frozenset({COMPLETED, FAILED, CANCELLED})


class Kind(enum.Enum):
    """How a call's body runs (decided once, when the call is submitted)."""

    COROUTINE_FUNCTION = "coroutine function"
    COROUTINE = "coroutine object"
    BLOCKING = "blocking callable"


# On Python 3.11 reading an enum member through its class is a descriptor call
# (about 75 ns); the hot path compares with these module constants instead.
COROUTINE_FUNCTION: Final = Kind.COROUTINE_FUNCTION
COROUTINE: Final = Kind.COROUTINE
BLOCKING: Final = Kind.BLOCKING


_ids = itertools.count(1)
#: ``object.__new__``, looked up once: on the type it is a lookup per call.
new_object: Final = object.__new__


class Counters:
    """One activity's call counters.

    Only totals are counted, each by the one step that makes it grow: a call
    is accepted, started, then ends completed, failed or cancelled (or ends
    before it started: cancelled, or refused at the close, while queued).
    ``pending`` and ``running`` follow from them, so that a call's start and end
    each write one counter instead of two.
    """

    __slots__ = ("accepted", "cancelled", "completed", "failed", "rejected", "started", "unstarted")

    def __init__(self) -> None:
        self.accepted: int = 0
        self.rejected: int = 0
        #: Accepted calls that started running.
        self.started: int = 0
        #: Accepted calls that ended before they started (also counted by how they ended).
        self.unstarted: int = 0
        self.completed: int = 0
        self.failed: int = 0
        self.cancelled: int = 0

    @property
    def pending(self) -> int:
        """Accepted calls that have not started and have not ended."""
        # Read from another thread, what grows last is read last: never below zero.
        ended = self.unstarted
        started = self.started
        return self.accepted - started - ended

    @property
    def running(self) -> int:
        """Calls that started and have not ended."""
        ended = self.completed + self.failed + self.cancelled - self.unstarted
        return max(0, self.started - ended)

    @property
    def ended(self) -> int:
        """Accepted calls that ended, however they ended."""
        return self.completed + self.failed + self.cancelled


class Event(Protocol):
    """What ``trio.Event`` and the asyncio backend's events (many waiters, or one) offer."""

    def set(self) -> None:
        """Set the event, waking its waiters."""

    def is_set(self) -> bool:
        """Whether the event was set."""
        ...

    def wait(self) -> Awaitable[Any]:
        """Wait until the event is set."""
        ...


class CallHost(Protocol):
    """What a call needs of the activity that accepted it.

    The activity's core meets it; this module never sees the activity itself.
    """

    @property
    def name(self) -> str: ...
    @property
    def counters(self) -> Counters: ...
    @property
    def activity(self) -> Any:
        """The public :class:`~activity.Activity` the call belongs to."""
        ...

    @property
    def dispatcher(self) -> Any:
        """The backend: on asyncio it takes a call's task or thread when it ends."""
        ...

    def wait_call(self, call: BaseCall[Any]) -> Coroutine[Any, Any, None]:
        """Wait until ``call`` has ended (for ``await call`` and ``call.wait()``)."""
        ...

    def cancel_call(self, call: BaseCall[Any], reason: str | None) -> bool:
        """Cancel ``call``; whether it was still running or queued."""
        ...

    def invoke_handler(self, handler: Callable[..., Any], *args: Any) -> None:
        """Run a done callback or error handler, routing what it raises."""

    def failure_observed(self, call: BaseCall[Any]) -> None:
        """Note that ``call``'s failure was observed, so it is not raised at exit."""

    def launch(self, call: BaseCall[Any]) -> None:
        """Start ``call``, which was admitted."""


class CallExtras:
    """What few calls have, kept apart so that the others do not pay for it.

    A name or a timeout given at submission, an ``on_error`` target, the timer
    of the timeout, the event that waiters wait on, done callbacks, the reason
    of a cancellation, the activity a nested call came from (its origin), and
    the call's number once someone asks for it.
    """

    __slots__ = (
        "callbacks",
        "cancel_reason",
        "error_target",
        "event",
        "ident",
        "name",
        "origin",
        "timeout",
        "timer",
    )

    def __init__(self, error_target: Any, name: str | None, timeout: float | None) -> None:
        self.error_target: Any = error_target
        self.name: str | None = name
        self.timeout: float | None = timeout
        self.timer: Any = None
        self.event: Event | None = None
        self.callbacks: list[Callable[[Any], object]] | None = None
        self.cancel_reason: str | None = None
        self.origin: Any = None
        self.ident: int = 0


# The bits of BaseCall.flags: what five booleans would say, in one field.
#: A ``synchronous_call``: its caller waits for it and is told of its failure.
SYNCHRONOUS: Final = 1
#: Its failure was read (awaited, ``result()``, ``exception()``): not raised at exit.
OBSERVED: Final = 2
#: It holds one of the activity's ``max_concurrency`` places.
HOLDS_SLOT: Final = 4
#: Its cancellation was asked for (``cancel()``, the activity's cancel, shutdown).
CANCEL_REQUESTED: Final = 8
#: Its timeout ran out while it ran.
TIMED_OUT: Final = 16


class BaseCall(Generic[T_co]):
    """What every call is: its state, outcome, waiting and cancellation.

    The public :class:`activity.Call` (``activity._activity``) is this plus its
    ``activity`` property, and carries the documentation; the lower modules,
    which cannot name ``Activity``, work with ``BaseCall``.

    A call has twelve fields and no more: a queued call is walked by the
    cyclic garbage collector at each full collection, and an object of more
    than twelve fields (more than 128 bytes) costs it about half as much again.
    Five booleans share :attr:`flags`; the result and the exception share
    :attr:`outcome`; what few calls have is in :attr:`extras`.
    """

    __slots__ = (
        "args",
        "causality",
        "context",
        "extras",
        "flags",
        "fn",
        "future",
        "host",
        "kind",
        "outcome",
        "stamp",
        "state",
    )

    #: A call is a frame that a nested call of its own activity re-enters.
    is_call: ClassVar[bool] = True

    host: CallHost
    args: tuple[Any, ...]
    causality: object
    context: Context | None
    extras: CallExtras | None
    #: The bits ``SYNCHRONOUS``, ``OBSERVED``, ``HOLDS_SLOT``, ``CANCEL_REQUESTED``
    #: and ``TIMED_OUT``; the properties of the same names read and write them.
    flags: int
    fn: Any
    future: Any
    kind: Kind
    #: The result once ``COMPLETED``, the exception once ``FAILED`` or ``CANCELLED``.
    outcome: Any
    #: ``perf_counter_ns()`` when the call was accepted, then when it started;
    #: what the wait and run histograms are timed from (0 until accepted).
    stamp: int
    state: CallStatus

    def __init__(self) -> None:
        raise TypeError("Call objects are created by Activity.asynchronous_call(), not directly")

    @classmethod
    def submitted(
        cls,
        activity: CallHost,
        kind: Kind,
        fn: Any,
        args: tuple[Any, ...],
        origin: Any,
        context: Context | None,
        stamp: int,
    ) -> BaseCall[Any]:
        """Make a pending asynchronous call with nothing extra, each field stored once.

        The submission's hot path; :meth:`create` makes every other kind.
        """
        self = new_object(cls)
        self.host = activity
        self.causality = self
        self.kind = kind
        self.fn = fn
        self.args = args
        self.context = context
        self.flags = 0
        self.state = PENDING
        self.outcome = None
        self.stamp = stamp
        self.future = None
        if origin is None:
            self.extras = None
        else:
            extras = self.extras = CallExtras(None, None, None)
            extras.origin = origin
        return self

    @classmethod
    def create(
        cls,
        activity: CallHost,
        kind: Kind,
        fn: Any,
        args: tuple[Any, ...],
        origin: Any,
        synchronous: bool,
        status: CallStatus = PENDING,
        holds_slot: bool = False,
        error_target: Any = None,
        name: str | None = None,
        timeout: float | None = None,
    ) -> BaseCall[Any]:
        """Make a call of any kind: synchronous, running already, or with extras."""
        self = cls.submitted(activity, kind, fn, args, origin, None, 0)
        self.flags = (SYNCHRONOUS if synchronous else 0) | (HOLDS_SLOT if holds_slot else 0)
        self.state = status
        if error_target is not None or name is not None or timeout is not None:
            extras = self.more()
            extras.error_target = error_target
            extras.name = name
            extras.timeout = timeout
        return self

    # -- the fields that share flags, outcome and extras ------------------------------

    def set_flag(self, bit: int, value: bool) -> None:
        """Set or clear one bit of :attr:`flags`."""
        self.flags = self.flags | bit if value else self.flags & ~bit

    @property
    def synchronous(self) -> bool:
        """Whether the call is a ``synchronous_call`` (bit ``SYNCHRONOUS``)."""
        return bool(self.flags & SYNCHRONOUS)

    @property
    def observed(self) -> bool:
        """Whether the call's failure was read (bit ``OBSERVED``)."""
        return bool(self.flags & OBSERVED)

    @observed.setter
    def observed(self, value: bool) -> None:
        self.set_flag(OBSERVED, value)

    @property
    def holds_slot(self) -> bool:
        """Whether the call holds a place of ``max_concurrency`` (bit ``HOLDS_SLOT``)."""
        return bool(self.flags & HOLDS_SLOT)

    @holds_slot.setter
    def holds_slot(self, value: bool) -> None:
        self.set_flag(HOLDS_SLOT, value)

    @property
    def cancel_requested(self) -> bool:
        """Whether cancelling the call was asked for (bit ``CANCEL_REQUESTED``)."""
        return bool(self.flags & CANCEL_REQUESTED)

    @cancel_requested.setter
    def cancel_requested(self, value: bool) -> None:
        self.set_flag(CANCEL_REQUESTED, value)

    @property
    def timed_out(self) -> bool:
        """Whether the call's timeout ran out while it ran (bit ``TIMED_OUT``)."""
        return bool(self.flags & TIMED_OUT)

    @timed_out.setter
    def timed_out(self, value: bool) -> None:
        self.set_flag(TIMED_OUT, value)

    @property
    def value(self) -> Any:
        """The result, once ``COMPLETED``; else ``None``."""
        return self.outcome if self.state is COMPLETED else None

    @property
    def error(self) -> BaseException | None:
        """The exception, once ``FAILED`` or ``CANCELLED``; else ``None``."""
        return None if self.state is COMPLETED else self.outcome

    @property
    def origin(self) -> Any:
        """The activity a nested call came from, if another than its own (see ``origin_of``)."""
        extras = self.extras
        return None if extras is None else extras.origin

    @property
    def ident(self) -> int:
        """The call's number, unique within the process: given when first asked for."""
        extras = self.more()
        ident = extras.ident
        if not ident:
            ident = extras.ident = next(_ids)
        return ident

    def note_cancel_reason(self, reason: str | None) -> None:
        """Keep the first reason given for cancelling the call."""
        if reason is not None:
            extras = self.more()
            if extras.cancel_reason is None:
                extras.cancel_reason = reason

    def more(self) -> CallExtras:
        """The call's extras, made on first need."""
        extras = self.extras
        if extras is None:
            extras = self.extras = CallExtras(None, None, None)
        return extras

    # -- read-only state ------------------------------------------------------------

    @property
    def id(self) -> int:
        """A number unique to this call within the process.

        It is given when first asked for (here, by :attr:`name`, or when the
        call fails), so numbers follow the order in which they were asked for,
        not the order of submission.
        """
        return self.ident

    @property
    def name(self) -> str:
        """The name given at submission, or one made from the function's name."""
        extras = self.extras
        if extras is not None and extras.name is not None:
            return extras.name
        fn = self.fn
        if fn is None:
            return f"call-{self.ident}"
        qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
        return f"{qualname}#{self.ident}"

    @property
    def status(self) -> CallStatus:
        """The call's :class:`CallStatus`."""
        return self.state

    @property
    def hresult(self) -> HResult:
        """``S_OK`` once completed, ``E_PENDING`` until finished, else the failure's code."""
        status = self.state
        if status is COMPLETED:
            return HResult.S_OK
        if status is PENDING or status is RUNNING:
            return HResult.E_PENDING
        if status is CANCELLED:
            return HResult.E_ABORT
        assert self.outcome is not None
        return hresult_of(self.outcome)

    def done(self) -> bool:
        """Return whether the call has finished (completed, failed or cancelled)."""
        return self.state in FINISHED

    def cancelled(self) -> bool:
        """Return whether the call ended ``CANCELLED``."""
        return self.state is CANCELLED

    # -- outcome --------------------------------------------------------------------

    def result(self) -> T_co:
        """Return the call's result, or raise its exception.

        :raises CallPendingError: if the call has not finished
        :raises CallCancelledError: if the call was cancelled
        :raises BaseException: the call's own exception if it failed
        """
        status = self.state
        if status is COMPLETED:
            return self.outcome  # type: ignore[no-any-return]
        if status not in FINISHED:
            raise CallPendingError(f"call {self.name!r} has not finished (it is {status.value})")
        exc = self.outcome
        assert exc is not None
        self.mark_observed()
        raise exc

    def exception(self) -> BaseException | None:
        """Return the call's exception, or ``None`` if it completed.

        A cancelled call gives its :class:`CallCancelledError`.

        :raises CallPendingError: if the call has not finished
        """
        status = self.state
        if status not in FINISHED:
            raise CallPendingError(f"call {self.name!r} has not finished (it is {status.value})")
        self.mark_observed()
        return None if status is COMPLETED else self.outcome

    async def wait(self) -> None:
        """Wait until the call has finished. Never raises the call's exception.

        :raises WouldDeadlockError: at once, if the waiting call chain holds a
            synchronization domain that the call needs (directly, or through other
            chains that wait in turn): the wait would never end. The call is left
            as it was, and runs once the domain is free.
        """
        if self.state not in FINISHED:
            await self.host.wait_call(self)

    def __await__(self) -> Generator[Any, Any, T_co]:
        if self.state not in FINISHED:
            yield from self.host.wait_call(self).__await__()
        return self.result()

    def cancel(self, reason: str | None = None) -> bool:
        """Ask for the call to be cancelled.

        A pending call ends ``CANCELLED`` at once; a running one is cancelled at
        its next checkpoint (a blocking function in a worker thread is abandoned:
        the thread cannot be stopped, but its result is ignored). Cancelling a
        call twice is the same as cancelling it once.

        Thread-safe: called from another thread than the activity's, it asks the
        activity's loop to cancel the call and wakes it to do so at once; it then
        returns ``True`` if the call had not finished when asked (it may still
        finish otherwise before the loop gets to it), and ``False`` if the loop has
        ended.

        :param reason: said in the :class:`CallCancelledError`
        :return: ``False`` if the call had already finished, else ``True``
        """
        return self.host.cancel_call(self, reason)

    def add_done_callback(self, callback: Callable[[Self], object]) -> None:
        """Call ``callback(call)`` on the activity's loop when the call finishes.

        If the call has already finished, the callback is called at once. A
        callback that raises is treated like a failing error handler: its
        exception is raised when the activity exits, or, once the activity has
        exited, at once, by this method.

        :raises InvalidArgumentError: if ``callback`` is not callable
        """
        if not callable(callback):
            raise InvalidArgumentError(
                f"callback must be callable, got {callback!r}", field="callback", value=callback
            )
        if self.state in FINISHED:
            self.host.invoke_handler(callback, self)
        else:
            extras = self.more()
            if extras.callbacks is None:
                extras.callbacks = [callback]
            else:
                extras.callbacks.append(callback)

    def future_done(self, future: Any) -> None:
        """Settle the call from the task or future that ran it (a done callback)."""
        dispatcher = self.host.dispatcher
        dispatcher.future_done(self, future)

    def thread_done(self, future: Any) -> None:
        """Settle the call from the worker thread's future that ran it (a done callback)."""
        dispatcher = self.host.dispatcher
        dispatcher.thread_done(self, future)

    def mark_observed(self) -> None:
        """Record that the call's outcome was read, so its failure is not raised at exit."""
        flags = self.flags
        if not flags & OBSERVED:
            self.flags = flags | OBSERVED
            if self.state is not COMPLETED:
                self.host.failure_observed(self)

    def __repr__(self) -> str:
        return f"<Call {self.name!r} {self.state.value} in {self.host.name!r}>"


CallStatus.__module__ = "activity"


class _Cancellable(Protocol):
    def cancel(self) -> object: ...


@final
class InlineCall:
    """A ``synchronous_call`` whose coroutine body runs in its caller's task on asyncio.

    It is what the body sees as its frame, and what the activity needs to
    cancel it: not a :class:`Call`, which costs about twice as much to make.
    A call that does more than complete (it fails, is cancelled, returns a
    failing ``HResult``, or has listeners to tell) is made a ``Call`` when it
    ends, and ends as one.
    """

    is_call: ClassVar[bool] = True

    __slots__ = (
        "__weakref__",
        "cancel_reason",
        "cancel_requested",
        "causality",
        "host",
        "origin",
        "task",
    )

    def __init__(
        self,
        activity: CallHost,
        origin: Any,
        causality: object | None,
        task: _Cancellable | None,
    ) -> None:
        # synchronous_call's inline path on asyncio sets these same fields itself,
        # without this frame: a field added here is added there too.
        self.host = activity
        self.origin = origin
        # The chain the caller belongs to, or one the call starts.
        self.causality: object | None = self if causality is None else causality
        #: What cancel() cancels: the caller's asyncio task, or on trio the body's
        #: cancel scope.
        self.task = task
        self.cancel_requested = False
        self.cancel_reason: str | None = None

    def cancel(self, reason: str | None) -> None:
        """Cancel the body (its task, or its cancel scope), which ends the call as CANCELLED."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
        if self.cancel_requested:
            return  # the caller's task must not be cancelled twice for one call
        self.cancel_requested = True
        task = self.task
        if task is not None:
            task.cancel()
