"""The process-wide pool of worker threads that runs blocking call bodies.

A blocking call on asyncio or uvloop is one :class:`WorkItem` on the
process-wide pool of worker threads (never asyncio's default executor), taken
under the activity's own share of it, :class:`Workers`, which lets at most the
activity's ``thread_limit`` of its items hold a thread at once. The pool is
shared by every activity whatever its limit, so a server that opens an activity
per request does not start threads per request; a thread idle for
:data:`WORKER_IDLE_TIMEOUT` seconds ends. A work item is also what an STA
thread (``_apartment``) and a re-entry host (``_backends._common``) run.

This module sits below the backends and knows nothing of loops, calls or
activities: it runs ``run(fn, *args)`` on a thread and tells a done callback,
and the backend that submitted the work finishes the call.

A blocking body's exception is the call's, unchanged, except for
``StopIteration``: it cannot be raised through an ``await`` (PEP 479 turns it
into ``RuntimeError`` in any coroutine it leaves, and asyncio futures refuse
it), so on every path, a worker thread, an STA thread or the loop thread, a
call whose body raised it fails with ``RuntimeError`` whose ``__cause__`` is
that ``StopIteration``, traceback kept: what a coroutine body raising it fails
with too.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import queue
import threading
from collections import deque
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "WORKER_IDLE_MAX",
    "WORKER_IDLE_TIMEOUT",
    "ThreadGauge",
    "WorkItem",
    "WorkerPool",
    "Workers",
    "borrow_workers",
    "stop_iteration_error",
    "worker_threads",
]


def stop_iteration_error(stop: StopIteration) -> RuntimeError:
    """What a call whose body raised ``stop`` fails with (see the module doc)."""
    error = RuntimeError("the call's body raised StopIteration, which cannot cross an await")
    error.__cause__ = stop  # which also suppresses the context, as 'raise ... from' does
    return error


_PENDING: Final = 0
_RUNNING: Final = 1
_FINISHED: Final = 2
_CANCELLED: Final = 3
#: Guards a work item's one contested step: a thread starting it, or the loop cancelling it.
#: Not final: a forked child makes a new one (another thread may have held it at the fork).
_claim = threading.Lock()


class ThreadGauge:
    """How many of one owner's work items wait for a thread: given, less those that left.

    ``queued`` is written only by the thread that submits the items (the loop's),
    ``left`` only under the lock that a work item starts or is cancelled under;
    each only grows, so a reader on any thread sees a ``waiting`` that is at most
    a few items stale and never below zero.
    """

    __slots__ = ("left", "queued")

    def __init__(self) -> None:
        #: Items handed to the owner's threads.
        self.queued = 0
        #: Items that a thread started, or that were cancelled (or failed to start) first.
        self.left = 0

    @property
    def waiting(self) -> int:
        """Items handed over that no thread has started yet."""
        return max(0, self.queued - self.left)


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

    __slots__ = ("_exception", "_on_done", "_result", "_state", "args", "fn", "gauge", "run")

    def __init__(
        self,
        run: Callable[..., Any],
        fn: Any,
        args: tuple[Any, ...],
        on_done: Callable[[WorkItem], object] | None,
        gauge: ThreadGauge | None = None,
    ) -> None:
        self.run: Callable[..., Any] | None = run
        self.fn = fn
        self.args = args
        self._on_done = on_done
        #: Counts the item as waiting until a thread starts it (see ThreadGauge).
        self.gauge = gauge
        if gauge is not None:
            gauge.queued += 1
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
                gauge = self.gauge
                if gauge is not None:
                    gauge.left += 1
        if not started:
            return False  # cancelled while queued: cancel() has told on_done
        run, fn, args = self.run, self.fn, self.args
        self.run = self.fn = None
        self.args = ()
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
                gauge = self.gauge
                if gauge is not None:
                    gauge.left += 1
        if state == _PENDING:
            self.run = self.fn = None
            self.args = ()
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
worker_threads = threading.local()
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

    __slots__ = ("capacity", "jobs", "lock", "spare")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        #: Guards the counts of the pool and its shares: taken once when an item is
        #: submitted and once when a thread ends one.
        self.lock = threading.Lock()
        #: Items handed to the threads that wait for work, each with the share it
        #: holds a place of; ``None`` ends the thread that takes it.
        self.jobs: queue.SimpleQueue[tuple[WorkItem, Workers] | None] = queue.SimpleQueue()
        #: Threads waiting for work (or on their way to), less the items queued for them.
        self.spare = 0
        #: The sum of the limits of the shares not shut down: what may run at once.
        self.capacity = 0

    def new_thread(self, item: WorkItem, workers: Workers) -> None:
        """Start a thread with ``item`` as its first work."""
        name = f"activity-worker-pool_{next(_thread_numbers)}"
        # A daemon: an abandoned call that never returns must not keep the process alive.
        threading.Thread(target=self._serve, args=(item, workers), name=name, daemon=True).start()

    def _serve(self, item: WorkItem, workers: Workers) -> None:
        """A thread of the pool: run ``item``, then what comes, until idle too long."""
        worker_threads.serving = True
        get = self.jobs.get
        while True:
            ran = item.execute()
            with self.lock:
                following = workers.next_queued()
                stay = following is not None or self.spare < max(WORKER_IDLE_MAX, self.capacity)
                if following is None and stay:
                    self.spare += 1
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
                    with self.lock:
                        # With no spare thread, an item was queued for this one as it
                        # timed out: it stays to take it.
                        leave = self.spare > 0
                        if leave:
                            self.spare -= 1
                    if leave:
                        return
                else:
                    if job is None:
                        return  # one idle thread too many (see Workers.shutdown)
                    item, workers = job
                    del job
                    break


#: The pool of the process.
shared_pool = WorkerPool()


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

    __slots__ = ("_open", "_pool", "backlog", "busy", "gauge", "limit")

    def __init__(self, limit: int, pool: WorkerPool | None = None) -> None:
        self.limit = limit
        self._pool = pool = shared_pool if pool is None else pool
        #: Items holding one of the places: handed to a thread, and not finished.
        self.busy = 0
        #: Items waiting for a place, in submission order.
        self.backlog: deque[WorkItem] = deque()
        #: The share's items that wait for a thread (a place, or a thread to take them).
        self.gauge = ThreadGauge()
        self._open = True
        with pool.lock:
            pool.capacity += limit

    def submit(
        self,
        run: Callable[..., Any],
        fn: Any,
        args: tuple[Any, ...],
        on_done: Callable[[WorkItem], object] | None = None,
    ) -> WorkItem:
        """Run ``run(fn, *args)`` on a thread of the pool; ``on_done`` is told when it ends."""
        item = WorkItem(run, fn, args, on_done, self.gauge)
        self._start_thread(item)
        return item

    def _start_thread(self, item: WorkItem) -> None:
        """Start ``item`` on a thread: a waiting one, a new one, or the share's next free one.

        :raises RuntimeError: if no thread could be started and none of the share's
            items runs (nothing is left counted then)
        """
        pool = self._pool
        with pool.lock:
            if self.busy >= self.limit:
                self.backlog.append(item)
                return
            self.busy += 1
            waiting = pool.spare > 0
            if waiting:
                pool.spare -= 1
        if waiting:
            pool.jobs.put((item, self))
            return
        try:
            pool.new_thread(item, self)
        except BaseException:
            # No thread (the system's limit): a thread that ends one of the
            # share's other items takes this one; with none, nothing is left
            # counted and the caller is told.
            with pool.lock:
                self.busy -= 1
                alone = self.busy == 0
                if not alone:
                    self.backlog.appendleft(item)  # it came before those queued
            if alone:
                with _claim:
                    self.gauge.left += 1  # it will never start
                raise

    def next_queued(self) -> WorkItem | None:
        """A thread ended one of the items: the next queued one keeps its place, or it is free.

        Called with the pool's lock held.
        """
        backlog = self.backlog
        while backlog:
            item = backlog.popleft()
            if not item.cancelled():
                return item
        self.busy -= 1
        return None

    @property
    def idle(self) -> bool:
        """Whether no item of the share holds a thread (no abandoned call holds one)."""
        return self.busy == 0

    def shutdown(self) -> None:
        """Cancel the queued work, and end the idle threads that the pool no longer needs.

        The threads that run the share's items go back to the pool after.
        """
        pool = self._pool
        with pool.lock:
            queued = list(self.backlog)
            self.backlog.clear()
            surplus = 0
            if self._open:
                self._open = False
                pool.capacity = max(0, pool.capacity - self.limit)
                surplus = pool.spare - max(WORKER_IDLE_MAX, pool.capacity)
                if surplus > 0:
                    pool.spare -= surplus
        for _ in range(surplus):
            pool.jobs.put(None)
        for item in queued:
            item.cancel()


def _forget_idle_pools() -> None:
    """In a forked child: the pool's threads stayed in the parent, and its locks and queue."""
    global _claim
    _claim = threading.Lock()
    shared_pool.reset()  # in place: the shares made before the fork use it


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_idle_pools)


def borrow_workers(limit: int) -> Workers:
    """An activity's share of the pool, at most ``limit`` threads at once."""
    return Workers(limit)
