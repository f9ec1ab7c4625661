"""How one call body runs: a task on the loop, a worker thread, or inline.

Two dispatchers share one small interface, and :class:`Activity` picks one
when it is entered:

``AsyncioDispatcher`` (asyncio and uvloop) is the hot path. A coroutine call
is one native task created with the call's context, finished by a done
callback: there is no wrapper coroutine and no anyio task group, whose
per-task cancel scope costs several times a native task. A blocking call is
one work item on the process-wide pool of worker threads (never asyncio's
default executor), taken under the activity's own share of it,
:class:`Workers`, which lets at most the activity's ``thread_limit`` of its
items hold a thread at once; the work item's done callback asks the loop to
finish the call, with no task and no asyncio future in between. A call
cancelled while its thread runs is finished at once, abandoned: the thread
cannot be stopped, and its result is ignored. The pool is shared by every
activity whatever its limit, so a server that opens an activity per request
does not start threads per request; a thread idle for
:data:`WORKER_IDLE_TIMEOUT` seconds ends. Calls that need more (a
synchronization domain to enter, an STA thread, the loop thread after
``bind_to_current_thread()``) run in one wrapper task each.

``TrioDispatcher`` (trio, the other loop anyio runs on) starts each call as
a task of a trio nursery whose only frame, besides the body's, is the one
that runs the body inside a trio cancel scope and then finishes the call.
There is no anyio task group and no anyio cancel scope: each wraps trio's
own and about doubles what a call in flight costs. Blocking calls go through
``anyio.to_thread.run_sync`` (trio's own cache of threads, which also end when
idle) with the activity's ``CapacityLimiter``.

Both run a ``synchronous_call`` *inline*, in the caller's own task: the body's
coroutine is driven step by step inside the call's context by
:func:`drive_in_context`, so it sees its own copy of the context (and its
``ContextVar`` writes stay there) without the cost of a new task. Its common
case (a function that may start at once, no domain, no timeout) is handled
by ``Activity.synchronous_call`` itself, without the dispatcher's round trip:
the frame of such a coroutine call is a light ``InlineCall``, made a ``Call``
only if the call ends otherwise than completed (on trio the body runs in a
trio cancel scope of its own).

:class:`Apartment` is COM+'s single-threaded apartment: an activity's blocking
calls run one at a time on a thread of its own, started lazily and named after
the activity. Unbound, the apartment moves to a fresh thread when its thread is
held by an abandoned (cancelled or timed-out) call; bound
(``BIND_TO_POOL_THREAD``) it never changes thread, so thread-affine objects made
there stay usable.

A blocking body that calls back into its own activity with
``synchronous_call_from_thread`` blocks its thread until the nested call ends.
That thread is the apartment's, or holds one of the activity's places in the
pool: a nested blocking call of the same call chain that waited for a thread
would wait for itself. As COM+ re-enters an apartment on the thread that waits
in it, the waiting thread becomes a :class:`ReentryHost` for its chain: the
chain's blocking calls run on it, one at a time, until the call back returns.

A blocking body's exception is the call's, unchanged, except for
``StopIteration``: it cannot be raised through an ``await`` (PEP 479 turns it
into ``RuntimeError`` in any coroutine it leaves, and asyncio futures refuse
it), so on every path, a worker thread, an STA thread or the loop thread, a
call whose body raised it fails with ``RuntimeError`` whose ``__cause__`` is
that ``StopIteration``, traceback kept: what a coroutine body raising it fails
with too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import itertools
import math
import os
import queue
import threading
import types
from collections import deque
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeGuard

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from ._call import (
    BLOCKING,
    CANCELLED,
    COMPLETED,
    COROUTINE,
    FAILED,
    RUNNING,
    Call,
    CallStatus,
)
from ._errors import CallTimeoutError, InvalidArgumentError, error_from_hresult
from ._hresult import HResult

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Generator
    from typing import TypeAlias

    from ._activity import Activity

    #: Starts ``fn()`` as a task on a loop, in ``context``, from another thread;
    #: raises ``anyio.RunFinishedError`` if the loop has finished.
    _StartTask: TypeAlias = Callable[
        [Callable[[], Coroutine[Any, Any, None]], contextvars.Context], None
    ]

__all__ = [
    "WORKER_IDLE_MAX",
    "WORKER_IDLE_TIMEOUT",
    "Apartment",
    "AsyncioDispatcher",
    "Dispatcher",
    "Event",
    "Outcome",
    "ReentryHost",
    "TrioDispatcher",
    "WorkerPool",
    "Workers",
]

#: (status, result, exception) of a finished call.
Outcome = tuple[CallStatus, Any, BaseException | None]


class Event(Protocol):
    """What both ``asyncio.Event`` and ``anyio.Event`` offer."""

    def set(self) -> None: ...
    def is_set(self) -> bool: ...
    async def wait(self) -> Any: ...


class Dispatcher(Protocol):
    """The backend-specific half of an activity."""

    def new_event(self) -> Event: ...
    def start(self, call: Call[Any]) -> None: ...
    def cancel_running(self, call: Call[Any]) -> None: ...
    async def run_inline(self, call: Call[Any]) -> Outcome: ...
    def spawn(self, coro: Coroutine[Any, Any, None]) -> None: ...
    def is_cancellation(self, exc: BaseException) -> bool: ...
    async def wait_event(self, event: Event, timeout: float | None) -> bool: ...
    async def wait_event_shielded(self, event: Event) -> None: ...
    async def aclose(self) -> None: ...
    def reentry_host(self, frame: object) -> ReentryHost | None: ...


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
    send = coro.send
    throw = coro.throw
    run = context.run
    try:
        yielded = run(send, None)
    except StopIteration as stop:
        return stop.value
    while True:
        value: Any = None
        error: BaseException | None = None
        try:
            value = yield yielded
        except GeneratorExit:
            run(coro.close)
            raise
        except BaseException as exc:
            error = exc
        try:
            yielded = run(send, value) if error is None else run(throw, error)
        except StopIteration as stop:
            return stop.value


_CoroutineType: Final = types.CoroutineType
#: The types of result that _outcome_of_result may turn into a failure.
_CHECKED_RESULTS: Final = frozenset({HResult, _CoroutineType})


def _is_coroutine(obj: object) -> TypeGuard[Coroutine[Any, Any, Any]]:
    """``inspect.iscoroutine``: the coroutine type cannot be subclassed, so one test."""
    return type(obj) is _CoroutineType


def _outcome_of_result(call: Call[Any], result: Any) -> Outcome:
    """Completed, unless the body returned a failing ``HResult`` or a stray coroutine."""
    if type(result) is HResult and result >= 0x80000000:
        return FAILED, None, error_from_hresult(result)
    if _is_coroutine(result):
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


def timeout_error(call: Call[Any]) -> CallTimeoutError:
    """The failure of a call whose run outlived its timeout."""
    extras = call._extras
    timeout = None if extras is None else extras.timeout
    return CallTimeoutError(f"call {call.name!r} did not finish within {timeout} s")


def _signal_from_thread(
    loop: asyncio.AbstractEventLoop, ended: asyncio.Future[None], _: object
) -> None:
    """A work item's done callback: mark ``ended`` on its loop (from any thread)."""
    try:
        loop.call_soon_threadsafe(_mark_ended, ended)
    except RuntimeError:  # the loop is closed: nobody is left to tell
        return


def _mark_ended(ended: asyncio.Future[None]) -> None:
    if not ended.done():  # else the waiter was cancelled
        ended.set_result(None)


async def _result_of_work(future: WorkItem, ended: asyncio.Future[None]) -> Any:
    """Wait for ``ended``, then return the work's result or raise its exception.

    The loop's future only signals the end, and the outcome is read from the
    work item: a future refuses StopIteration, with which ``wrap_future`` never
    completes. Cancelled, the work item is cancelled too (if it has not started).
    """
    try:
        await ended
    except asyncio.CancelledError:
        future.cancel()
        raise
    return future.result()


def _cancelled_outcome(call: Call[Any]) -> Outcome:
    """A call stopped by its timeout failed; one stopped on purpose was cancelled."""
    if call._timed_out and not call._cancel_requested:
        return FAILED, None, timeout_error(call)
    return CANCELLED, None, None


def stop_iteration_error(stop: StopIteration) -> RuntimeError:
    """What a call whose body raised ``stop`` fails with (see the module doc)."""
    error = RuntimeError("the call's body raised StopIteration, which cannot cross an await")
    error.__cause__ = stop  # which also suppresses the context, as 'raise ... from' does
    return error


def _run_here(run: Callable[..., Any], fn: Any, args: tuple[Any, ...]) -> Any:
    """``run(fn, *args)`` in the caller's thread, a ``StopIteration`` made a ``RuntimeError``."""
    try:
        return run(fn, *args)
    except StopIteration as stop:
        raise stop_iteration_error(stop) from stop


_PENDING: Final = 0
_RUNNING: Final = 1
_FINISHED: Final = 2
_CANCELLED: Final = 3
#: Guards a work item's one contested step: a thread starting it, or the loop cancelling it.
#: Not final: a forked child makes a new one (another thread may have held it at the fork).
_claim = threading.Lock()


class WorkItem:
    """A blocking body handed to a thread, and its outcome.

    The part of a ``concurrent.futures.Future`` that the dispatchers use
    (``cancel``, ``cancelled``, ``done``, ``result``, ``exception``) with one
    done callback given up front, and without the future's ``Condition``:
    nobody blocks on a work item, they are told by the callback. Its cycle
    costs a few hundred nanoseconds instead of some three microseconds, which
    a call awaited one at a time pays between the thread's wake-ups.

    A body that raises ``StopIteration`` fails with a ``RuntimeError`` whose
    ``__cause__`` it is (see the module doc): the work item is read from
    coroutines, which cannot raise a ``StopIteration``.
    """

    __slots__ = ("_args", "_exception", "_fn", "_on_done", "_result", "_run", "_state")

    def __init__(
        self,
        run: Callable[..., Any],
        fn: Any,
        args: tuple[Any, ...],
        on_done: Callable[[WorkItem], object] | None,
    ) -> None:
        self._run: Callable[..., Any] | None = run
        self._fn = fn
        self._args = args
        self._on_done = on_done
        self._state = _PENDING
        self._result: Any = None
        self._exception: BaseException | None = None

    def execute(self) -> bool:
        """Run the body in this thread, unless it was cancelled first; return whether it ran.

        :meth:`notify` follows, once the thread has counted itself free.
        """
        with _claim:
            started = self._state == _PENDING
            if started:
                self._state = _RUNNING
        if not started:
            return False  # cancelled while queued: cancel() has told on_done
        run, fn, args = self._run, self._fn, self._args
        self._run = self._fn = None
        self._args = ()
        assert run is not None
        try:
            result = run(fn, *args)
        except BaseException as exc:
            self._exception = stop_iteration_error(exc) if isinstance(exc, StopIteration) else exc
            self._state = _FINISHED
            # The traceback keeps this frame: it must not keep the item (a cycle
            # through the exception) nor the body and its arguments.
            del self, run, fn, args
            return True
        del run, fn, args
        self._result = result
        self._state = _FINISHED
        return True

    def notify(self) -> None:
        """Tell ``on_done`` (once) that the work has ended."""
        on_done = self._on_done
        if on_done is not None:
            self._on_done = None
            on_done(self)

    def cancel(self) -> bool:
        """Cancel the work if no thread has started it; return whether it is cancelled."""
        with _claim:
            state = self._state
            if state == _PENDING:
                self._state = _CANCELLED
        if state == _PENDING:
            self._run = self._fn = None
            self._args = ()
            self.notify()
            return True
        return state == _CANCELLED

    def cancelled(self) -> bool:
        """Whether the work was cancelled before it started."""
        return self._state == _CANCELLED

    def done(self) -> bool:
        """Whether the work has finished or was cancelled."""
        return self._state >= _FINISHED

    def exception(self) -> BaseException | None:
        """What the finished body raised, or ``None``."""
        if self._state == _CANCELLED:
            raise concurrent.futures.CancelledError
        return self._exception

    def result(self) -> Any:
        """What the finished body returned; what it raised is raised."""
        if self._state == _CANCELLED:
            raise concurrent.futures.CancelledError
        exc = self._exception
        if exc is not None:
            try:
                raise exc
            finally:
                del exc, self  # no cycle through the traceback's frame
        return self._result


class _StaThread:
    """One apartment thread: runs submitted work one item at a time, in order."""

    __slots__ = ("queue", "thread")

    def __init__(self, name: str) -> None:
        self.queue: queue.SimpleQueue[WorkItem | None] = queue.SimpleQueue()
        # A daemon: an abandoned call that never returns must not keep the process alive.
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        get = self.queue.get
        while (item := get()) is not None:
            if item.execute():
                item.notify()
            del item

    def stop(self) -> None:
        self.queue.put(None)


class Apartment:
    """The single-threaded apartment of an STA activity (see the module doc)."""

    __slots__ = ("_bound", "_name", "_numbers", "_retired", "_thread")

    def __init__(self, name: str, *, bound: bool) -> None:
        self._name = name
        self._bound = bound
        self._numbers = itertools.count(1)
        self._thread: _StaThread | None = None
        self._retired: list[_StaThread] = []

    @property
    def bound(self) -> bool:
        """Whether the apartment keeps one thread for its whole life."""
        return self._bound

    def submit(
        self,
        run: Callable[..., Any],
        fn: Any,
        args: tuple[Any, ...],
        on_done: Callable[[WorkItem], object] | None = None,
    ) -> WorkItem:
        """Queue ``run(fn, *args)`` on the apartment thread, starting it if need be."""
        thread = self._thread
        if thread is None:
            number = next(self._numbers)
            suffix = "" if number == 1 else f"-{number}"
            thread = self._thread = _StaThread(f"activity-{self._name}-sta{suffix}")
        item = WorkItem(run, fn, args, on_done)
        thread.queue.put(item)
        return item

    def runs_on_current_thread(self) -> bool:
        """Whether the calling thread is the apartment's (not one it moved away from)."""
        sta = self._thread
        return sta is not None and sta.thread is threading.current_thread()

    def abandon(self) -> None:
        """The thread is held by an abandoned call: unbound, move to a fresh one."""
        if not self._bound and self._thread is not None:
            self._thread.stop()
            self._retired.append(self._thread)
            self._thread = None

    def stop(self) -> list[threading.Thread]:
        """Ask every thread the apartment started to stop; return them, to be joined."""
        threads = [*self._retired, *([self._thread] if self._thread is not None else [])]
        self._retired = []
        self._thread = None
        for sta in threads:
            sta.stop()
        return [sta.thread for sta in threads]


#: Seconds a thread of the worker pool waits for work before it ends. Each wait
#: reads it anew, so a test may shrink it (``monkeypatch.setattr``) and see the
#: threads that run its work end soon after.
WORKER_IDLE_TIMEOUT: float = 10.0
#: Idle threads the worker pool keeps at most when the open activities' limits add
#: up to less (a default activity's ``thread_limit``): a thread that would be one
#: more ends as soon as it is idle.
WORKER_IDLE_MAX: int = 40

#: Marks, per thread, that the thread runs blocking bodies for the activities:
#: one of a worker pool's, or one of anyio's for trio.
_worker_threads = threading.local()
_thread_numbers = itertools.count(1)


class WorkerPool:
    """Threads that run blocking bodies for the activities' shares of them (:class:`Workers`).

    One pool serves the whole process (each share may be given its own, as
    tests do). Items wait in one queue for the threads that wait for work, and
    a thread starts only when none waits. A thread that has nothing to do waits
    up to :data:`WORKER_IDLE_TIMEOUT` seconds for work, then ends; one that
    would make the idle threads more than the open shares' limits add up to,
    or :data:`WORKER_IDLE_MAX` if that is more, ends at once.
    """

    __slots__ = ("_capacity", "_jobs", "_lock", "_spare")

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        #: Guards the counts of the pool and its shares: taken once when an item is
        #: submitted and once when a thread ends one.
        self._lock = threading.Lock()
        #: Items handed to the threads that wait for work, each with the share it
        #: holds a place of; ``None`` ends the thread that takes it.
        self._jobs: queue.SimpleQueue[tuple[WorkItem, Workers] | None] = queue.SimpleQueue()
        #: Threads waiting for work (or on their way to), less the items queued for them.
        self._spare = 0
        #: The sum of the limits of the shares not shut down: what may run at once.
        self._capacity = 0

    def _new_thread(self, item: WorkItem, workers: Workers) -> None:
        """Start a thread with ``item`` as its first work."""
        name = f"activity-worker-pool_{next(_thread_numbers)}"
        # A daemon: an abandoned call that never returns must not keep the process alive.
        threading.Thread(target=self._serve, args=(item, workers), name=name, daemon=True).start()

    def _serve(self, item: WorkItem, workers: Workers) -> None:
        """A thread of the pool: run ``item``, then what comes, until idle too long."""
        _worker_threads.serving = True
        get = self._jobs.get
        while True:
            ran = item.execute()
            with self._lock:
                following = workers._next_queued()
                stay = following is not None or self._spare < max(WORKER_IDLE_MAX, self._capacity)
                if following is None and stay:
                    self._spare += 1
            # Counted free before telling: the call's end may submit the next item.
            if ran:
                item.notify()
            del item
            if following is not None:
                item = following  # the activity's next queued item, on the same place
                continue
            del workers
            if not stay:
                return
            while True:
                try:
                    job = get(timeout=WORKER_IDLE_TIMEOUT)
                except queue.Empty:
                    with self._lock:
                        # With no spare thread, an item was queued for this one as it
                        # timed out: it stays to take it.
                        leave = self._spare > 0
                        if leave:
                            self._spare -= 1
                    if leave:
                        return
                else:
                    if job is None:
                        return  # one idle thread too many (see Workers.shutdown)
                    item, workers = job
                    del job
                    break


#: The pool of the process.
_shared_pool = WorkerPool()


class Workers:
    """An activity's share of the process-wide worker threads: at most ``limit`` at once.

    Every activity's blocking calls run on one :class:`WorkerPool`, shared
    whatever the activities' limits. An activity's items take one of its
    ``limit`` places each; with none free, an item waits in the activity's own
    queue, and a thread that ends one of the activity's items runs the next
    queued one itself. A place is held until the body returns, also by an
    abandoned call (its thread cannot be stopped), and the thread counts its
    place free before it tells the item's done callback. Between the loop's
    wake-up and the call's end there is no lock and no condition to pass
    (``ThreadPoolExecutor`` has both, and holds the GIL for them while the
    loop waits to run).

    The pool's threads are those running bodies, at most the sum of the
    ``thread_limit`` of the open activities (and those held by abandoned calls),
    and idle ones: at most that sum or :data:`WORKER_IDLE_MAX`, whichever is
    larger, each ending after :data:`WORKER_IDLE_TIMEOUT` seconds without work.
    When an activity closes, idle threads beyond that bound end at once. Once
    every activity has closed and the timeout has passed, only threads held by
    abandoned calls remain.

    :param limit: how many of the share's items may hold a thread at once
    :param pool: the threads to share (default: the process's)
    """

    __slots__ = ("_backlog", "_busy", "_open", "_pool", "limit")

    def __init__(self, limit: int, pool: WorkerPool | None = None) -> None:
        self.limit = limit
        self._pool = pool = _shared_pool if pool is None else pool
        #: Items holding one of the places: handed to a thread, and not finished.
        self._busy = 0
        #: Items waiting for a place, in submission order.
        self._backlog: deque[WorkItem] = deque()
        self._open = True
        with pool._lock:
            pool._capacity += limit

    def submit(
        self,
        run: Callable[..., Any],
        fn: Any,
        args: tuple[Any, ...],
        on_done: Callable[[WorkItem], object] | None = None,
    ) -> WorkItem:
        """Run ``run(fn, *args)`` on a thread of the pool; ``on_done`` is told when it ends."""
        item = WorkItem(run, fn, args, on_done)
        self._start_thread(item)
        return item

    def _start_thread(self, item: WorkItem) -> None:
        """Start ``item`` on a thread: a waiting one, a new one, or the share's next free one.

        :raises RuntimeError: if no thread could be started and none of the share's
            items runs (nothing is left counted then)
        """
        pool = self._pool
        with pool._lock:
            if self._busy >= self.limit:
                self._backlog.append(item)
                return
            self._busy += 1
            waiting = pool._spare > 0
            if waiting:
                pool._spare -= 1
        if waiting:
            pool._jobs.put((item, self))
            return
        try:
            pool._new_thread(item, self)
        except BaseException:
            # No thread (the system's limit): a thread that ends one of the
            # share's other items takes this one; with none, nothing is left
            # counted and the caller is told.
            with pool._lock:
                self._busy -= 1
                alone = self._busy == 0
                if not alone:
                    self._backlog.appendleft(item)  # it came before those queued
            if alone:
                raise

    def _next_queued(self) -> WorkItem | None:
        """A thread ended one of the items: the next queued one keeps its place, or it is free.

        Called with the pool's lock held.
        """
        backlog = self._backlog
        while backlog:
            item = backlog.popleft()
            if not item.cancelled():
                return item
        self._busy -= 1
        return None

    @property
    def idle(self) -> bool:
        """Whether no item of the share holds a thread (no abandoned call holds one)."""
        return self._busy == 0

    def shutdown(self) -> None:
        """Cancel the queued work, and end the idle threads that the pool no longer needs.

        The threads that run the share's items go back to the pool after.
        """
        pool = self._pool
        with pool._lock:
            queued = list(self._backlog)
            self._backlog.clear()
            surplus = 0
            if self._open:
                self._open = False
                pool._capacity = max(0, pool._capacity - self.limit)
                surplus = pool._spare - max(WORKER_IDLE_MAX, pool._capacity)
                if surplus > 0:
                    pool._spare -= surplus
        for _ in range(surplus):
            pool._jobs.put(None)
        for item in queued:
            item.cancel()


def _forget_idle_pools() -> None:
    """In a forked child: the pool's threads stayed in the parent, and its locks and queue."""
    global _claim
    _claim = threading.Lock()
    _shared_pool._reset()  # in place: the shares made before the fork use it


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_idle_pools)


def borrow_workers(limit: int) -> Workers:
    """An activity's share of the pool, at most ``limit`` threads at once."""
    return Workers(limit)


#: The host the current code's chain runs its blocking calls on, if any (set in
#: the task that a ``synchronous_call_from_thread`` runs on the loop).
_hosting: Final[contextvars.ContextVar[ReentryHost | None]] = contextvars.ContextVar(
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
        "_activity",
        "_causality",
        "_closed",
        "_loop_cancelled",
        "_outcome",
        "_queue",
        "_start",
    )

    def __init__(
        self,
        activity: Activity,
        causality: object,
        start: _StartTask,
        loop_cancelled: type[BaseException],
    ) -> None:
        self._activity = activity
        self._causality = causality
        #: Starts a task on the loop, from this thread, without waiting for it.
        self._start = start
        #: What the loop cancels its tasks with.
        self._loop_cancelled = loop_cancelled
        #: Set on the loop once the call back has ended: nothing is routed here after.
        self._closed = False
        self._queue: queue.SimpleQueue[WorkItem | None] = queue.SimpleQueue()
        self._outcome: tuple[bool, Any] = (False, None)

    def takes(self, call: Call[Any]) -> bool:
        """Whether ``call`` (a blocking call, on the loop) runs on this thread."""
        return (
            call._causality is self._causality
            and call._activity is self._activity
            and not self._closed
        )

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
        _hosting.set(self)
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


def _host_of(call: Call[Any]) -> ReentryHost | None:
    """The host that runs ``call`` (a blocking call), if its chain has one (on the loop)."""
    host = _hosting.get()
    return host if host is not None and host.takes(call) else None


def _reentry_host(
    activity: Activity,
    frame: object,
    apartment: Apartment | None,
    start: _StartTask,
    loop_cancelled: type[BaseException],
) -> ReentryHost | None:
    """A host for a thread that calls back into ``activity`` from ``frame``, if it needs one.

    It does when the thread runs one of the activity's blocking calls, whose chain
    it continues: on the apartment's thread, or on a worker thread.
    """
    if type(frame) is not Call or frame._activity is not activity or frame._kind is not BLOCKING:
        return None
    causality = frame._causality
    if causality is None:  # abandoned: the call has ended, and its chain with it
        return None
    if apartment is not None:
        if not apartment.runs_on_current_thread():
            return None
    elif not getattr(_worker_threads, "serving", False):
        return None  # a thread of the body's own: it holds no place of the activity's
    return ReentryHost(activity, causality, start, loop_cancelled)


class AsyncioDispatcher:
    """Native asyncio tasks and a share of the worker pool (see the module doc)."""

    __slots__ = (
        "_activity",
        "_apartment",
        "_loop",
        "_system_tasks",
        "_thread_limit",
        "_workers",
    )

    def __init__(
        self, activity: Activity, loop: asyncio.AbstractEventLoop, apartment: Apartment | None
    ) -> None:
        self._activity = activity
        self._loop = loop
        self._apartment = apartment
        self._thread_limit = activity.config.thread_limit
        self._workers: Workers | None = None
        self._system_tasks: set[asyncio.Task[None]] = set()

    def _lent_workers(self) -> Workers:
        workers = self._workers
        if workers is None:
            workers = self._workers = borrow_workers(self._thread_limit)
        return workers

    async def _in_thread(self, run: Callable[..., Any], call: Call[Any]) -> Any:
        """Run a blocking call's body on a worker thread and wait for its result.

        The thread is its chain's host if it has one (see :class:`ReentryHost`).
        """
        loop = self._loop
        ended = loop.create_future()
        host = _hosting.get()
        threads = host if host is not None and host.takes(call) else self._lent_workers()
        future = threads.submit(
            run, call._fn, call._args, functools.partial(_signal_from_thread, loop, ended)
        )
        return await _result_of_work(future, ended)

    def new_event(self) -> Event:
        return asyncio.Event()

    def is_cancellation(self, exc: BaseException) -> bool:
        return isinstance(exc, asyncio.CancelledError)

    def start(self, call: Call[Any]) -> None:
        loop = self._loop
        context = call._context
        assert context is not None
        activity = self._activity
        plain = activity._domain is None
        if call._kind is BLOCKING:
            if plain and self._apartment is None and not activity._bound_to_loop:
                # No asyncio future in between: the work item's done callback asks
                # the loop to finish the call (thread_done), one hop instead of two.
                try:
                    call._future = self._lent_workers().submit(
                        context.run, call._fn, call._args, call._thread_done
                    )
                except BaseException as exc:  # no worker thread could be started
                    loop.call_soon(activity._finish, call, FAILED, None, exc)
                    return
            else:
                self._start_task(call, self._run_wrapped(call), context)
        elif plain:
            if call._kind is COROUTINE:
                coro = call._fn
            else:
                try:
                    coro = context.run(call._fn, *call._args)
                except BaseException as exc:
                    if isinstance(exc, StopIteration):
                        exc = stop_iteration_error(exc)
                    loop.call_soon(activity._finish, call, FAILED, None, exc)
                    return
                if not _is_coroutine(coro):
                    loop.call_soon(activity._finish, call, *_outcome_of_result(call, coro))
                    return
            self._start_task(call, coro, context)
        else:
            self._start_task(call, self._run_wrapped(call), context)
        extras = call._extras
        if extras is not None and extras.timeout is not None:
            extras.timer = loop.call_later(extras.timeout, self._on_timeout, call)

    def _start_task(
        self, call: Call[Any], coro: Coroutine[Any, Any, Any], context: contextvars.Context
    ) -> None:
        task = self._loop.create_task(coro, context=context)
        call._future = task
        # A bound method, not a closure: it lives as long as the task, and is smaller.
        task.add_done_callback(call._future_done, context=context)

    async def _run_wrapped(self, call: Call[Any]) -> Any:
        """A call that enters a domain, or runs on an STA thread or on the loop thread."""
        domain = self._activity._domain
        if domain is not None:
            await domain.enter(call._causality)
        try:
            if call._kind is BLOCKING:
                # A copy: if this task is cancelled while an abandoned thread still
                # runs in the context, the task must not need to enter it too.
                return await self._blocking(call, contextvars.copy_context().run)
            coro = call._fn if call._kind is COROUTINE else call._fn(*call._args)
            return await coro if _is_coroutine(coro) else coro
        finally:
            if domain is not None:
                domain.leave(call._causality)

    async def _blocking(self, call: Call[Any], run: Callable[..., Any]) -> Any:
        if self._activity._bound_to_loop:
            return _run_here(run, call._fn, call._args)
        apartment = self._apartment
        if apartment is not None and _host_of(call) is None:
            loop = self._loop
            ended = loop.create_future()
            future = apartment.submit(
                run, call._fn, call._args, functools.partial(_signal_from_thread, loop, ended)
            )
            try:
                return await _result_of_work(future, ended)
            except asyncio.CancelledError:
                if not future.cancelled():
                    apartment.abandon()
                raise
        return await self._in_thread(run, call)

    def future_done(self, call: Call[Any], future: asyncio.Future[Any] | WorkItem) -> None:
        """The done callback of a call's task or executor future (via ``Call``)."""
        self._activity._finish(call, *self._outcome(call, future))

    @staticmethod
    def _outcome(call: Call[Any], future: asyncio.Future[Any] | WorkItem) -> Outcome:
        extras = call._extras
        if extras is not None and extras.timer is not None:
            extras.timer.cancel()
            extras.timer = None
        call._future = None
        if future.cancelled():
            return _cancelled_outcome(call)
        exc = future.exception()
        if exc is not None:
            return FAILED, None, exc
        return _outcome_of_result(call, future.result())

    def thread_done(self, call: Call[Any], future: WorkItem) -> None:
        """The done callback of a blocking call's work item (via ``Call``).

        It runs in the worker thread, or in the loop's when the work item was
        cancelled before it started. The call is finished on the loop, in its own
        context, which the thread has left by now; a call already finished as
        abandoned (its context is gone) is not finished twice.
        """
        context = call._context
        if context is None:
            return
        try:
            self._loop.call_soon_threadsafe(self.future_done, call, future, context=context)
        except RuntimeError:  # the loop is closed: nobody is left to tell
            return

    def _cancel_future(self, call: Call[Any]) -> None:
        future = call._future
        if future is None or future.cancel():
            return
        if type(future) is WorkItem and not future.done():
            # A thread that runs cannot be stopped: the call ends now, abandoned,
            # and what the thread returns later is ignored.
            self._loop.call_soon(self._abandon, call)

    def _abandon(self, call: Call[Any]) -> None:
        if call._status is RUNNING:
            self._activity._finish(call, *_cancelled_outcome(call))

    def _on_timeout(self, call: Call[Any]) -> None:
        call._more().timer = None
        # Not after a cancel(): a call that runs in its caller's task must cancel that
        # task once, or the caller is left with a cancellation it never asked for.
        if call._status is RUNNING and call._future is not None and not call._cancel_requested:
            call._timed_out = True
            self._cancel_future(call)

    def cancel_running(self, call: Call[Any]) -> None:
        call._cancel_requested = True
        self._cancel_future(call)

    async def run_inline(self, call: Call[Any]) -> Outcome:
        loop = self._loop
        task = asyncio.current_task(loop)
        assert task is not None
        context = call._context
        assert context is not None
        call._future = task
        extras = call._extras
        if extras is not None and extras.timeout is not None:
            extras.timer = loop.call_later(extras.timeout, self._on_timeout, call)
        domain = self._activity._domain
        try:
            if domain is not None:
                await domain.enter(call._causality)
            try:
                if call._kind is BLOCKING:
                    result = await self._blocking(call, context.run)
                else:
                    coro = (
                        call._fn if call._kind is COROUTINE else context.run(call._fn, *call._args)
                    )
                    result = await drive_in_context(coro, context) if _is_coroutine(coro) else coro
            finally:
                if domain is not None:
                    domain.leave(call._causality)
        except asyncio.CancelledError as exc:
            ours = call._cancel_requested or call._timed_out
            if ours and task.uncancel() == 0:
                return _cancelled_outcome(call)
            return CANCELLED, None, exc
        except BaseException as exc:
            return FAILED, None, exc
        finally:
            call._future = None
            if extras is not None and extras.timer is not None:
                extras.timer.cancel()
                extras.timer = None
        if (call._cancel_requested or call._timed_out) and task.cancelling():
            # The body swallowed the cancellation we asked for and returned.
            task.uncancel()
        return _outcome_of_result(call, result)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coro)
        self._system_tasks.add(task)
        task.add_done_callback(self._system_tasks.discard)

    async def wait_event(self, event: Event, timeout: float | None) -> bool:
        if timeout is None:
            await event.wait()
            return True
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            return event.is_set()
        return True

    async def wait_event_shielded(self, event: Event) -> None:
        waiter = self._loop.create_task(event.wait())
        cancelled: BaseException | None = None
        while not waiter.done():
            try:
                await asyncio.shield(waiter)
            except asyncio.CancelledError as exc:
                cancelled = exc
        if cancelled is not None:
            raise cancelled

    async def aclose(self) -> None:
        workers = self._workers
        if workers is not None:
            self._workers = None
            workers.shutdown()

    def reentry_host(self, frame: object) -> ReentryHost | None:
        """The host the calling thread becomes to call back in from ``frame``, if any.

        Called from that thread (see :class:`ReentryHost`).
        """
        return _reentry_host(
            self._activity,
            frame,
            self._apartment,
            self._start_task_from_thread,
            asyncio.CancelledError,
        )

    def _start_task_from_thread(
        self, fn: Callable[[], Coroutine[Any, Any, None]], context: contextvars.Context
    ) -> None:
        try:
            self._loop.call_soon_threadsafe(self._start_system_task, fn, context=context)
        except RuntimeError:  # the loop is closed
            raise anyio.RunFinishedError from None

    def _start_system_task(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.spawn(fn())


def _boxed(run: Callable[..., Any], fn: Any, args: tuple[Any, ...]) -> tuple[Any]:
    """``run(fn, *args)`` in one of anyio's worker threads, its result in a 1-tuple."""
    _worker_threads.serving = True
    return (_run_here(run, fn, args),)


class _NoTicket:
    """No place was taken in the domain's line beforehand."""

    __slots__ = ()


_NO_TICKET = _NoTicket()


class TrioDispatcher:
    """Tasks of a trio nursery, each in its own trio cancel scope (see the module doc)."""

    __slots__ = (
        "_activity",
        "_apartment",
        "_cancel_scope",
        "_cancelled_exc",
        "_current_time",
        "_limiter",
        "_nursery",
        "_nursery_manager",
        "_start_soon",
        "_task_name",
        "_token",
        "_trio_token",
    )

    def __init__(self, activity: Activity, apartment: Apartment | None) -> None:
        import trio  # only ever imported on a trio loop

        self._activity = activity
        self._apartment = apartment
        self._limiter = anyio.CapacityLimiter(activity.config.thread_limit)
        self._nursery_manager = trio.open_nursery()
        self._nursery: trio.Nursery | None = None
        self._cancel_scope = trio.CancelScope
        self._current_time = trio.current_time
        self._cancelled_exc: type[BaseException] = trio.Cancelled
        self._token = anyio.lowlevel.current_token()
        self._trio_token = trio.lowlevel.current_trio_token()
        self._task_name = f"activity {activity.name!r} call"
        self._start_soon: Callable[..., None] | None = None

    async def open(self) -> None:
        nursery = self._nursery = await self._nursery_manager.__aenter__()
        # One name for every call task: trio would otherwise format one per task.
        self._start_soon = functools.partial(nursery.start_soon, name=self._task_name)

    def new_event(self) -> Event:
        return anyio.Event()

    def is_cancellation(self, exc: BaseException) -> bool:
        return isinstance(exc, self._cancelled_exc)

    def start(self, call: Call[Any]) -> None:
        context = call._context
        assert context is not None
        # trio starts new tasks in no set order: take the call's place in the
        # domain's line now, so the domain stays FIFO in submission order.
        domain = self._activity._domain
        ticket = None if domain is None else domain.reserve(call._causality)
        # The new task runs in a copy of the context current at start_soon.
        start_soon = self._start_soon
        assert start_soon is not None, "the dispatcher is not open"
        context.run(start_soon, self._run, call, ticket, False)

    async def _blocking(self, call: Call[Any], run: Callable[..., Any]) -> Any:
        if self._activity._bound_to_loop:
            return _run_here(run, call._fn, call._args)
        host = _host_of(call)
        apartment = self._apartment
        if host is not None or apartment is not None:
            ended = anyio.Event()
            thread = host if host is not None else apartment
            assert thread is not None
            future = thread.submit(run, call._fn, call._args, self._waker(ended))
            try:
                await ended.wait()
            except self._cancelled_exc:
                # A host's thread is held by the call waiting for this one anyway.
                if not future.cancel() and host is None and apartment is not None:
                    apartment.abandon()
                raise
            return future.result()
        # Boxed: trio refuses a thread's result that is a coroutine with a TypeError of
        # its own; the activity reports that mistake itself (_outcome_of_result).
        boxed = await anyio.to_thread.run_sync(
            _boxed, run, call._fn, call._args, limiter=self._limiter, abandon_on_cancel=True
        )
        return boxed[0]

    def _waker(self, event: Event) -> Callable[[WorkItem], None]:
        """A work item's done callback that sets ``event`` on this loop, from any thread."""
        loop_thread = threading.get_ident()
        token = self._token

        def wake(_: WorkItem) -> None:
            if threading.get_ident() == loop_thread:
                event.set()
                return
            try:
                anyio.from_thread.run_sync(event.set, token=token)
            except Exception:  # the loop has finished: nobody is waiting any more
                return

        return wake

    async def _run(
        self, call: Call[Any], ticket: Event | _NoTicket | None = _NO_TICKET, inline: bool = True
    ) -> Outcome:
        """Run a call's body in its own cancel scope; a task also finishes the call.

        One coroutine does it all, the task's only frame besides the body's own:
        a call in flight costs a task, this frame and a cancel scope. ``inline``
        (``synchronous_call``) runs the body in the caller's task instead, each
        step inside the call's context.
        """
        activity = self._activity
        domain = activity._domain
        if call._cancel_requested and not inline:
            # Cancelled between start() and the task's first step.
            if domain is not None and not isinstance(ticket, _NoTicket):
                domain.abandon(call._causality, ticket)
            activity._finish(call, CANCELLED, None, None)
            return CANCELLED, None, None
        scope = self._cancel_scope()
        extras = call._extras
        if extras is not None and extras.timeout is not None:
            scope.deadline = self._current_time() + extras.timeout
        call._future = scope
        if call._cancel_requested:
            scope.cancel()
        outcome: Outcome
        result: Any = None
        try:
            with scope:
                if domain is not None:
                    if isinstance(ticket, _NoTicket):
                        await domain.enter(call._causality)
                    else:
                        await domain.wait_turn(call._causality, ticket)
                try:
                    if call._kind is BLOCKING:
                        # A task's body runs in a copy of the context: if the task is
                        # cancelled while an abandoned thread still runs in it, the
                        # call's own context is not entered twice.
                        context = call._context if inline else contextvars.copy_context()
                        assert context is not None
                        result = await self._blocking(call, context.run)
                    elif inline:
                        context = call._context
                        assert context is not None
                        coro = (
                            call._fn
                            if call._kind is COROUTINE
                            else context.run(call._fn, *call._args)
                        )
                        result = (
                            await drive_in_context(coro, context) if _is_coroutine(coro) else coro
                        )
                    else:
                        coro = call._fn if call._kind is COROUTINE else call._fn(*call._args)
                        result = await coro if _is_coroutine(coro) else coro
                finally:
                    if domain is not None:
                        domain.leave(call._causality)
        except self._cancelled_exc as exc:
            # Cancelled from outside the call's own scope (the host went away).
            outcome = CANCELLED, None, exc
        except BaseException as exc:
            outcome = FAILED, None, exc
        else:
            if scope.cancelled_caught:
                if call._cancel_requested:
                    outcome = CANCELLED, None, None
                else:
                    outcome = FAILED, None, timeout_error(call)
            elif type(result) in _CHECKED_RESULTS:
                outcome = _outcome_of_result(call, result)
            else:
                outcome = COMPLETED, result, None
        finally:
            call._future = None
        if not inline:
            activity._finish(call, *outcome)
        return outcome

    def cancel_running(self, call: Call[Any]) -> None:
        call._cancel_requested = True
        scope = call._future
        if scope is not None:
            scope.cancel()

    #: Its defaults run a synchronous call in the caller's task, without a frame more.
    run_inline = _run

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        async def run() -> None:
            await coro

        assert self._nursery is not None
        self._nursery.start_soon(run)

    async def wait_event(self, event: Event, timeout: float | None) -> bool:
        with anyio.move_on_after(math.inf if timeout is None else timeout):
            await event.wait()
        return event.is_set()

    async def wait_event_shielded(self, event: Event) -> None:
        with anyio.CancelScope(shield=True):
            await event.wait()

    def reentry_host(self, frame: object) -> ReentryHost | None:
        """The host the calling thread becomes to call back in from ``frame``, if any.

        Called from that thread (see :class:`ReentryHost`).
        """
        return _reentry_host(
            self._activity,
            frame,
            self._apartment,
            self._start_task_from_thread,
            self._cancelled_exc,
        )

    def _start_task_from_thread(
        self, fn: Callable[[], Coroutine[Any, Any, None]], context: contextvars.Context
    ) -> None:
        import trio

        try:
            self._trio_token.run_sync_soon(self._start_system_task, fn, context)
        except trio.RunFinishedError:
            raise anyio.RunFinishedError from None

    @staticmethod
    def _start_system_task(
        fn: Callable[[], Coroutine[Any, Any, None]], context: contextvars.Context
    ) -> None:
        import trio

        # A system task, as trio.from_thread.run starts: the activity's nursery may
        # be closing while the thread's own call still runs.
        trio.lowlevel.spawn_system_task(fn, context=context)

    async def aclose(self) -> None:
        try:
            await self._nursery_manager.__aexit__(None, None, None)
        except BaseExceptionGroup as group:
            # No call task raises; only the host's own cancellation can arrive here.
            cancelled, rest = group.split(self._cancelled_exc)
            if rest is not None or cancelled is None:
                raise
            raise cancelled.exceptions[0] from None
