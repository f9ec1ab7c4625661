"""The handle of one accepted call: :class:`Call` and :class:`CallStatus`."""

from __future__ import annotations

import enum
import itertools
from typing import TYPE_CHECKING, Any, Final, Generic, Protocol, TypeVar, cast, final

from ._errors import CallPendingError, InvalidArgumentError, hresult_of
from ._hresult import HResult

if TYPE_CHECKING:
    from collections.abc import Callable, Generator
    from contextvars import Context

    from ._activity import Activity
    from ._backends import Event
    from ._backends._asyncio import AsyncioDispatcher

__all__ = ["Call", "CallStatus"]

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


class CallExtras:
    """What few calls have, kept apart so that the others do not pay for it.

    A name or a timeout given at submission, an ``on_error`` target, the timer
    of the timeout, the event that waiters wait on, done callbacks, the reason
    of a cancellation.
    """

    __slots__ = ("callbacks", "cancel_reason", "error_target", "event", "name", "timeout", "timer")

    def __init__(self, error_target: Any, name: str | None, timeout: float | None) -> None:
        self.error_target = error_target
        self.name = name
        self.timeout = timeout
        self.timer: Any = None
        self.event: Event | None = None
        self.callbacks: list[Callable[[Call[Any]], object]] | None = None
        self.cancel_reason: str | None = None


@final
class Call(Generic[T_co]):
    """The handle of one call accepted by :meth:`Activity.asynchronous_call`.

    Returning a ``Call`` means the activity *accepted* the work (COM+'s S_OK),
    not that it finished. The call then ends ``COMPLETED``, ``FAILED`` or
    ``CANCELLED``, always, and whoever awaits it is told::

        call = await act.asynchronous_call(fetch, url)
        page = await call          # the result, or the call's exception

    Awaiting a call (or asking for ``result()`` / ``exception()``) *observes*
    its failure, so the activity does not raise it again when it exits.
    Created only by an activity.

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_activity",
        "_args",
        "_cancel_requested",
        "_causality",
        "_context",
        "_exception",
        "_extras",
        "_fn",
        "_future",
        "_holds_slot",
        "_id",
        "_kind",
        "_observed",
        "_origin",
        "_result",
        "_status",
        "_synchronous",
        "_timed_out",
    )

    _activity: Activity
    _args: tuple[Any, ...]
    _cancel_requested: bool
    _causality: object
    _context: Context | None
    _exception: BaseException | None
    _extras: CallExtras | None
    _fn: Any
    _future: Any
    _holds_slot: bool
    _id: int
    _kind: Kind
    _observed: bool
    _origin: Activity | None
    _result: Any
    _status: CallStatus
    _synchronous: bool
    _timed_out: bool

    def __init__(self) -> None:
        raise TypeError("Call objects are created by Activity.asynchronous_call(), not directly")

    @classmethod
    def _create(
        cls,
        activity: Activity,
        kind: Kind,
        fn: Any,
        args: tuple[Any, ...],
        origin: Activity | None,
        synchronous: bool,
        status: CallStatus = PENDING,
        holds_slot: bool = False,
        error_target: Any = None,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Call[Any]:
        """Make a call; positional, the hot paths' arguments first, each store once."""
        self = object.__new__(cls)
        self._activity = activity
        self._origin = origin
        self._causality = self
        self._kind = kind
        self._fn = fn
        self._args = args
        self._extras = (
            None
            if error_target is None and name is None and timeout is None
            else CallExtras(error_target, name, timeout)
        )
        self._context = None
        self._synchronous = synchronous
        self._id = next(_ids)
        self._status = status
        self._result = None
        self._exception = None
        self._observed = False
        self._future = None
        self._holds_slot = holds_slot
        self._cancel_requested = False
        self._timed_out = False
        return self

    def _note_cancel_reason(self, reason: str | None) -> None:
        """Keep the first reason given for cancelling the call."""
        if reason is not None:
            extras = self._more()
            if extras.cancel_reason is None:
                extras.cancel_reason = reason

    def _more(self) -> CallExtras:
        """The call's extras, made on first need."""
        extras = self._extras
        if extras is None:
            extras = self._extras = CallExtras(None, None, None)
        return extras

    # -- read-only state ------------------------------------------------------------

    @property
    def id(self) -> int:
        """A number unique to this call within the process."""
        return self._id

    @property
    def name(self) -> str:
        """The name given at submission, or one made from the function's name."""
        extras = self._extras
        if extras is not None and extras.name is not None:
            return extras.name
        fn = self._fn
        if fn is None:
            return f"call-{self._id}"
        qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
        return f"{qualname}#{self._id}"

    @property
    def activity(self) -> Activity:
        """The activity that accepted the call."""
        return self._activity

    @property
    def status(self) -> CallStatus:
        """The call's :class:`CallStatus`."""
        return self._status

    @property
    def hresult(self) -> HResult:
        """``S_OK`` once completed, ``E_PENDING`` until finished, else the failure's code."""
        status = self._status
        if status is COMPLETED:
            return HResult.S_OK
        if status is PENDING or status is RUNNING:
            return HResult.E_PENDING
        if status is CANCELLED:
            return HResult.E_ABORT
        assert self._exception is not None
        return hresult_of(self._exception)

    def done(self) -> bool:
        """Return whether the call has finished (completed, failed or cancelled)."""
        return self._status in FINISHED

    def cancelled(self) -> bool:
        """Return whether the call ended ``CANCELLED``."""
        return self._status is CANCELLED

    # -- outcome --------------------------------------------------------------------

    def result(self) -> T_co:
        """Return the call's result, or raise its exception.

        :raises CallPendingError: if the call has not finished
        :raises CallCancelledError: if the call was cancelled
        :raises BaseException: the call's own exception if it failed
        """
        status = self._status
        if status is COMPLETED:
            return self._result  # type: ignore[no-any-return]
        if status not in FINISHED:
            raise CallPendingError(f"call {self.name!r} has not finished (it is {status.value})")
        exc = self._exception
        assert exc is not None
        self._mark_observed()
        raise exc

    def exception(self) -> BaseException | None:
        """Return the call's exception, or ``None`` if it completed.

        A cancelled call gives its :class:`CallCancelledError`.

        :raises CallPendingError: if the call has not finished
        """
        status = self._status
        if status not in FINISHED:
            raise CallPendingError(f"call {self.name!r} has not finished (it is {status.value})")
        self._mark_observed()
        return self._exception

    async def wait(self) -> None:
        """Wait until the call has finished. Never raises the call's exception."""
        if self._status not in FINISHED:
            await self._activity._wait_call(self)

    def __await__(self) -> Generator[Any, Any, T_co]:
        if self._status not in FINISHED:
            yield from self._activity._wait_call(self).__await__()
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
        return self._activity._cancel_call(self, reason)

    def add_done_callback(self, callback: Callable[[Call[T_co]], object]) -> None:
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
        if self._status in FINISHED:
            self._activity._invoke_handler(callback, self)
        else:
            extras = self._more()
            if extras.callbacks is None:
                extras.callbacks = [callback]
            else:
                extras.callbacks.append(callback)

    def _future_done(self, future: Any) -> None:
        dispatcher = cast("AsyncioDispatcher", self._activity._dispatcher)
        dispatcher.future_done(self, future)

    def _thread_done(self, future: Any) -> None:
        dispatcher = cast("AsyncioDispatcher", self._activity._dispatcher)
        dispatcher.thread_done(self, future)

    def _mark_observed(self) -> None:
        if not self._observed:
            self._observed = True
            if self._status is not COMPLETED:
                self._activity._observed(self)

    def __repr__(self) -> str:
        return f"<Call {self.name!r} {self._status.value} in {self._activity.name!r}>"


Call.__module__ = "activity"
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
    ends, and ends as one (``Activity._promote``).
    """

    __slots__ = (
        "__weakref__",
        "_activity",
        "_cancel_reason",
        "_cancel_requested",
        "_causality",
        "_origin",
        "_task",
    )

    def __init__(
        self,
        activity: Activity,
        origin: Activity | None,
        causality: object | None,
        task: _Cancellable | None,
    ) -> None:
        self._activity = activity
        self._origin = origin
        # The chain the caller belongs to, or one the call starts.
        self._causality: object | None = self if causality is None else causality
        #: What cancel() cancels: the caller's asyncio task, or on trio the body's
        #: cancel scope.
        self._task = task
        self._cancel_requested = False
        self._cancel_reason: str | None = None

    def cancel(self, reason: str | None) -> None:
        """Cancel the body (its task, or its cancel scope), which ends the call as CANCELLED."""
        if self._cancel_reason is None:
            self._cancel_reason = reason
        if self._cancel_requested:
            return  # the caller's task must not be cancelled twice for one call
        self._cancel_requested = True
        task = self._task
        if task is not None:
            task.cancel()
