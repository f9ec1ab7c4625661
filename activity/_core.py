"""An activity's core: its state, and what every later step of a call reads of it.

The public :class:`~activity.Activity` is a thin face over one core. The core
is built up in layers, one module per step of a call's flow, each a class
that extends the one below:

    CoreState (here)       the state; thread and loop checks; waiting for idle
    Submitting (_submit)   validate, admit or reject, launch, pump the queue
    Settling (_outcome)    settle a call's outcome, route failures, cancel
    Synchronous (_sync)    ``synchronous_call``, inline in the caller's task
    Core (_lifecycle)      open, drain, close; services; thread binding

Lower modules (admission, the backends, calls, tracking) reach the core only
through the small protocols they own (``CallHost``, ``DispatchHost``,
``LocalsHost``, ``Reporter``), never through the public ``Activity``.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import itertools
import sys
import weakref
from asyncio import _get_running_loop  # pyright: ignore[reportPrivateUsage]  # in asyncio.events.__all__
from threading import current_thread, get_ident
from typing import TYPE_CHECKING, Any, ClassVar, Final, cast

import anyio

from ._admission import Admission
from ._call import BaseCall, CallStatus, Counters, InlineCall, Kind
from ._config import ActivityConfig, FailurePolicy, LocalScope, ThreadPool
from ._context import CallLocals, Frame, frame_var
from ._errors import ActivityClosedError, WrongThreadError
from ._tracking import ActivityStatistics, Histogram, PartitionStatistics

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextvars import Token
    from types import CodeType

    import anyio.lowlevel

    from ._apartment import Apartment
    from ._backends import Backend
    from ._backends._runner import Runner
    from ._call import Event
    from ._context import SynchronizationDomain

__all__ = ["MAX_KEPT_FAILURES", "OPEN", "CoreState", "State", "task_of"]

#: The task running on a loop: ``asyncio.current_task(loop)``. On the loop's
#: own thread, a task found here also proves that this loop is the one running
#: there (a thread runs one loop at a time), which the fast paths of submission
#: check this way: ``_get_running_loop()`` on Python 3.11 asks the kernel for
#: the process id each time (a system call, about 150 ns).
task_of: Callable[[asyncio.AbstractEventLoop], asyncio.Task[Any] | None]
if sys.version_info >= (3, 12):
    task_of = asyncio.current_task  # implemented in C from 3.12
else:
    # 3.11's current_task(loop) is a function in Python around this lookup: its
    # frame alone was about 900 instructions of a synchronous call.
    task_of = cast(
        "dict[asyncio.AbstractEventLoop, asyncio.Task[Any]]", vars(asyncio.tasks)["_current_tasks"]
    ).get

_ids = itertools.count(1)


class State(enum.Enum):
    """Where an activity is in its life."""

    NEW = "new"
    OPEN = "open"
    CANCELLED = "cancelled"
    #: The block has ended: no new work, but the accepted calls may still make
    #: nested calls of their own, which are part of what is being drained.
    DRAINING = "draining"
    CLOSING = "closing"
    CLOSED = "closed"


OPEN: Final = State.OPEN
#: How many unobserved failures an activity keeps, tracebacks and all, until it exits;
#: past that it counts them by type (a long-lived activity must not grow without bound).
MAX_KEPT_FAILURES: Final = 100


class CoreState(abc.ABC):
    """The state of one activity, and the checks every entry point makes."""

    #: The core is the frame of its activity's block, which is no call.
    is_call: ClassVar[bool] = False

    __slots__ = (
        "__weakref__",
        "activity",
        "admission",
        "apartment",
        "bound_to_loop",
        "call_class",
        "calls_own_locals",
        "cancel_reason",
        "causality",
        "children",
        "config",
        "counters",
        "dispatcher",
        "domain",
        "dropped_failures",
        "fail_fast",
        "fast_submit",
        "fast_sync",
        "handler_errors",
        "handler_scopes",
        "handlers_in_flight",
        "host",
        "ident",
        "idle_event",
        "inline_calls",
        "last_code",
        "last_kind",
        "locals",
        "loop",
        "name",
        "new_submitted",
        "origin",
        "overflow",
        "parent",
        "requested_parent",
        "runners",
        "running_calls",
        "runs",
        "state",
        "thread_id",
        "thread_model",
        "timeout",
        "token",
        "unobserved",
        "waits",
        "wake_token",
    )

    def __init__(
        self, config: ActivityConfig, activity: object, call_class: type[BaseCall[Any]]
    ) -> None:
        self.config = config
        #: The public Activity this is the core of.
        self.activity: Any = activity
        #: The class of the calls it makes: the public ``Call``.
        self.call_class = call_class
        #: ``call_class.submitted``, bound once (see _submit.make_call).
        self.new_submitted = call_class.submitted
        #: The code of the last function submitted by the fast path, and its kind
        #: (see _submit.make_call): one identity test instead of reading its flags.
        self.last_code: CodeType | None = None
        self.last_kind: Kind = Kind.BLOCKING
        self.ident = next(_ids)
        self.name = config.name or f"activity-{self.ident}"
        self.host = self  # the frame protocol: an activity's block belongs to it
        self.counters = Counters()
        # Its own budget; a partition's shared one replaces it when the activity opens.
        self.admission = Admission(config.max_concurrency, config.max_pending, None)
        self.overflow = config.overflow
        self.timeout = config.timeout
        self.fail_fast = config.failure_policy is FailurePolicy.FAIL_FAST
        self.state = State.NEW
        self.dispatcher: Backend | None = None
        self.thread_id = 0
        self.token: Token[Frame | None] | None = None
        self.parent: CoreState | None = None
        #: The parent asked for at creation: a core, None (a root), or ... (the
        #: activity current where it is opened).
        self.requested_parent: object = ...
        #: Where the activity's frames look for locals it lacks (the services add
        #: inheritance from the parent here).
        self.origin: CoreState | None = None
        #: LocalScope.CALL: each call from outside has a table of its own (see _context).
        self.calls_own_locals = config.local_scope is LocalScope.CALL
        self.locals: dict[Any, Any] = CallLocals(self) if self.calls_own_locals else {}
        #: The running calls that are not on a runner: those are found through
        #: ``runners`` (a runner's call changes hands without entering this set).
        self.running_calls: set[BaseCall[Any]] = set()
        #: The runner tasks' states, each with the call it runs (see ``_backends._runner``).
        self.runners: set[Runner] = set()
        #: How long calls waited to start, and how long they ran, timed from each
        #: call's ``stamp``: when it was submitted, then when it started
        #: (``perf_counter_ns``), so no table grows per call.
        self.waits = Histogram()
        self.runs = Histogram()
        #: Synchronous calls running inline in their callers' tasks, not yet Calls.
        self.inline_calls: set[InlineCall] = set()
        self.unobserved: dict[int, BaseCall[Any]] = {}
        #: Unobserved failures past MAX_KEPT_FAILURES: the calls' ids, and a count per type.
        self.dropped_failures: tuple[set[int], dict[str, int]] | None = None
        self.handler_errors: list[BaseException] = []
        self.handlers_in_flight = 0
        #: The cancel scopes of the async error handlers and done callbacks under way.
        self.handler_scopes: set[anyio.CancelScope] = set()
        self.idle_event: Event | None = None
        self.cancel_reason: str | None = None
        self.children: weakref.WeakSet[CoreState] = weakref.WeakSet()
        #: The synchronization domain the activity's calls enter, if any.
        self.domain: SynchronizationDomain | None = None
        #: MTA or STA, resolved when the activity opens.
        self.thread_model = ThreadPool.MTA
        self.apartment: Apartment | None = None
        self.bound_to_loop = False
        #: The call chain (COM+ causality) the block belongs to: the chain of the call
        #: it was entered in, or a service domain's own.
        self.causality: object | None = None
        self.wake_token: anyio.lowlevel.EventLoopToken | None = None
        #: The asyncio loop the activity belongs to (None before it opens, and on trio).
        self.loop: asyncio.AbstractEventLoop | None = None
        #: Whether asynchronous calls may take the short path of make_call(): no
        #: default timeout to arm, no call-local values to copy (see _submit).
        self.fast_submit = False
        #: Whether synchronous_call may take its inline path: that, and no domain to
        #: enter.
        self.fast_sync = False

    # -- what the layers above implement --------------------------------------------------

    @abc.abstractmethod
    def launch(self, call: BaseCall[Any]) -> None:
        """Hand a call that was just counted as running to the backend (``_submit``)."""

    @abc.abstractmethod
    def finish(
        self,
        call: BaseCall[Any],
        status: CallStatus,
        result: Any,
        exc: BaseException | None,
        take: bool = False,
    ) -> BaseCall[Any] | None:
        """Record how ``call`` ended, tell whoever waits, route a failure (``_outcome``)."""

    @abc.abstractmethod
    def cancel_call(self, call: BaseCall[Any], reason: str | None) -> bool:
        """Cancel one call; say whether it had not finished (``_outcome``)."""

    @abc.abstractmethod
    def invoke_handler(self, handler: Callable[..., Any], *args: Any) -> None:
        """Call an error handler or a done callback (``_outcome``)."""

    @abc.abstractmethod
    def failure_observed(self, call: BaseCall[Any]) -> None:
        """Forget a failure someone has seen (``_outcome``)."""

    def open_children(self) -> list[CoreState]:
        """The open activities entered inside this one (its calls or its block)."""
        return [child for child in self.children if child.state is not State.CLOSED]

    def statistics(self) -> ActivityStatistics:
        """Return a frozen snapshot of the counters and durations (from any thread)."""
        c = self.counters
        a = self.admission
        running = c.running
        waiting = min(self.threads_waiting(), running)
        return ActivityStatistics.model_construct(
            name=self.name,
            id=self.ident,
            accepted=c.accepted,
            rejected=c.rejected,
            pending=c.pending,
            running=running - waiting,
            completed=c.completed,
            failed=c.failed,
            cancelled=c.cancelled,
            max_concurrency=a.max_concurrency,
            max_pending=a.max_pending,
            partition=a.partition,
            waiting_for_thread=waiting,
            wait_time=self.waits.snapshot(),
            run_time=self.runs.snapshot(),
        )

    def threads_waiting(self) -> int:
        """How many of the running (admitted) calls wait for a thread to take them.

        The calls queued for the STA thread, or for a worker thread past the
        activity's ``thread_limit``: the apartment's and the worker share's gauges
        on asyncio, the thread limiter's waiting tasks on trio.
        """
        waiting = 0
        apartment = self.apartment
        if apartment is not None:
            waiting += apartment.gauge.waiting
        dispatcher = self.dispatcher
        if dispatcher is not None:
            waiting += dispatcher.threads_waiting()
        return waiting

    def partition_statistics(self) -> PartitionStatistics | None:
        """Return a snapshot of the partition's shared budget, or ``None`` outside any."""
        a = self.admission
        if a.partition is None:
            return None
        return PartitionStatistics.model_construct(
            name=a.partition,
            running=a.slots,
            pending=a.pending,
            waiting=len(a.waiters),
            max_concurrency=a.max_concurrency,
            max_pending=a.max_pending,
        )

    # -- waiting ------------------------------------------------------------------------

    def is_idle(self) -> bool:
        c = self.counters
        return c.accepted == c.ended and self.handlers_in_flight == 0

    def signal_if_idle(self) -> None:
        event = self.idle_event
        if event is not None and self.is_idle():
            event.set()
            self.idle_event = None

    def idle_waiter(self) -> tuple[Backend, Event]:
        """The dispatcher and the event set when the activity next becomes idle."""
        dispatcher = self.dispatcher
        assert dispatcher is not None
        event = self.idle_event
        if event is None:
            event = self.idle_event = dispatcher.new_event()
        return dispatcher, event

    async def wait_idle_shielded(self) -> None:
        dispatcher, event = self.idle_waiter()
        await dispatcher.wait_event_shielded(event)

    async def wait_idle_for(self, timeout: float | None) -> bool:
        dispatcher, event = self.idle_waiter()
        return await dispatcher.wait_event(event, timeout)

    async def wait_call(self, call: BaseCall[Any]) -> None:
        extras = call.more()
        event = extras.event
        if event is None:
            dispatcher = self.dispatcher
            assert dispatcher is not None
            event = extras.event = dispatcher.new_event()
        await event.wait()

    # -- checks -------------------------------------------------------------------------

    def wrong_thread(self) -> bool:
        """Whether the caller is on another thread than the activity's (once entered)."""
        return get_ident() != self.thread_id and self.state is not State.NEW

    def call_soon_threadsafe(self, fn: Callable[..., object], *args: Any) -> bool:
        """Run ``fn(*args)`` soon on the activity's loop; say whether the loop took it."""
        try:
            if self.loop is not None:
                self.loop.call_soon_threadsafe(fn, *args)
            else:
                assert self.wake_token is not None
                self.wake_token.native_token.run_sync_soon(fn, *args)  # type: ignore[attr-defined]
        except RuntimeError:  # the loop has finished: nothing is left to cancel
            return False
        return True

    def on_own_loop(self) -> bool:
        """Whether this runs on the activity's thread, in its loop (on trio: in no asyncio loop).

        A task of the loop found running on its thread settles it without
        ``_get_running_loop()`` (see :data:`task_of`).
        """
        if get_ident() != self.thread_id:
            return False
        loop = self.loop
        if loop is None:
            return _get_running_loop() is None
        return task_of(loop) is not None or _get_running_loop() is loop

    def check_thread(self) -> None:
        if self.state is State.NEW:
            return
        if get_ident() == self.thread_id and _get_running_loop() is not self.loop:
            raise WrongThreadError(
                f"activity {self.name!r} belongs to another event loop of this thread, the "
                "one it was entered in: an activity cannot move between event loops, so "
                "create one per loop (for example per test)"
            )
        if get_ident() != self.thread_id:
            raise WrongThreadError(
                f"activity {self.name!r} belongs to the event loop of another thread; "
                f"this is {current_thread().name!r}. From a foreign thread, use "
                "act.synchronous_call_from_thread(fn, ...) or "
                "act.asynchronous_call_from_thread(fn, ...), which are thread-safe"
            )

    def check_open_or_cancelled(self) -> None:
        self.check_thread()
        if self.state is not OPEN and self.state is not State.CANCELLED:
            raise self.closed_error()

    def check_open(self) -> None:
        if self.state is not OPEN or not self.on_own_loop():
            self.check_thread()  # an open activity gets here only from a wrong thread or loop
            if self.state is State.DRAINING and self.is_own_work(frame_var.get()):
                return  # a running call's nested call is part of what is being drained
            raise self.closed_error()

    def is_own_work(self, frame: Frame | None) -> bool:
        """Whether ``frame`` is one of the activity's calls (not its block, nor another's)."""
        return frame is not None and frame.host is self and frame.is_call

    def closed_error(self) -> ActivityClosedError:
        state = self.state
        if state is State.NEW:
            return ActivityClosedError(
                f"activity {self.name!r} is not open yet: enter it with 'async with'"
            )
        if state is State.CANCELLED:
            return ActivityClosedError(
                f"activity {self.name!r} was cancelled ({self.cancel_reason}) and takes no work"
            )
        return ActivityClosedError(f"activity {self.name!r} is {state.value} and takes no work")

    def listener_failed(self, error: BaseException) -> None:
        self.handler_errors.append(error)
