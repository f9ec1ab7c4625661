"""The worker pool, activities' shares of it, and work items (mostly without a loop)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

from activity import Activity, _workers
from activity._workers import WorkerPool, Workers, WorkItem

if TYPE_CHECKING:
    from collections.abc import Callable

WAIT = 30  # seconds a test may wait for a thread before it fails instead of hanging


def run(fn: Any, *args: Any) -> Any:
    """The ``run`` a dispatcher passes: here, a plain call."""
    return fn(*args)


class Told:
    """A done callback that records each work item it was told of, and from which thread."""

    def __init__(self, workers: Workers | None = None) -> None:
        self.items: list[WorkItem] = []
        self.threads: list[str] = []
        self.idle_when_told: list[bool] = []
        self.all_told = threading.Event()
        self.expected = 1
        self._workers = workers
        self.lock = threading.Lock()

    def __call__(self, item: WorkItem) -> None:
        with self.lock:
            self.items.append(item)
            self.threads.append(threading.current_thread().name)
            if self._workers is not None:
                self.idle_when_told.append(self._workers.idle)
            if len(self.items) >= self.expected:
                self.all_told.set()


@pytest.fixture
def pool() -> WorkerPool:
    """A pool of the test's own: its threads and counts are this test's alone."""
    return WorkerPool()


@pytest.fixture
def workers(pool: WorkerPool) -> Any:
    share = Workers(3, pool)
    yield share
    share.shutdown()


def wait_until(condition: Callable[[], bool]) -> bool:
    """Poll ``condition`` until it holds or ``WAIT`` seconds have passed; return it."""
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def pool_threads(pool: WorkerPool) -> int:
    """How many of the pool's threads are idle, waiting for work."""
    with pool.lock:
        return pool.spare


class TestWorkItem:
    def test_runs_in_a_worker_thread_and_tells_once(self, workers: Workers) -> None:
        told = Told()

        def where(x: str) -> tuple[str, str]:
            return x, threading.current_thread().name

        item = workers.submit(run, where, ("a",), told)
        assert told.all_told.wait(WAIT)
        value, thread = item.result()
        assert value == "a"
        assert thread.startswith("activity-worker-pool_")
        assert told.items == [item]
        assert told.threads == [thread]  # told from the thread that ran it
        assert item.done()
        assert not item.cancelled()
        assert item.exception() is None

    def test_a_failure_is_kept_and_raised_by_result(self, workers: Workers) -> None:
        told = Told()
        boom = ValueError("boom")

        def fail() -> None:
            raise boom

        item = workers.submit(run, fail, (), told)
        assert told.all_told.wait(WAIT)
        assert item.exception() is boom
        with pytest.raises(ValueError, match="boom") as info:
            item.result()
        assert info.value is boom

    def test_a_failures_traceback_keeps_neither_the_item_nor_the_arguments(
        self, workers: Workers
    ) -> None:
        told = Told()
        payload = object()

        def fail(_: object) -> None:
            raise ValueError("boom")

        item = workers.submit(run, fail, (payload,), told)
        assert told.all_told.wait(WAIT)
        exc = item.exception()
        assert exc is not None
        tb = exc.__traceback__
        held: list[object] = []
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == _workers.__file__:  # the pool's frames
                held.extend(tb.tb_frame.f_locals.values())
            tb = tb.tb_next
        assert not any(
            value is item or value is payload or (type(value) is tuple and payload in value)
            for value in held
        )

    def test_stop_iteration_fails_as_runtime_error_caused_by_it(self, workers: Workers) -> None:
        # A coroutine reads the outcome, and a StopIteration cannot leave one.
        told = Told()
        stop = StopIteration("done")

        def stop_it() -> None:
            raise stop

        item = workers.submit(run, stop_it, (), told)
        assert told.all_told.wait(WAIT)
        exc = item.exception()
        assert type(exc) is RuntimeError
        assert exc.__cause__ is stop
        assert stop.__traceback__ is not None  # where the body raised it
        with pytest.raises(RuntimeError) as info:
            item.result()
        assert info.value.__cause__ is stop

    def test_cancelled_before_it_starts_never_runs(self) -> None:
        ran: list[int] = []
        told = Told()
        item = WorkItem(run, ran.append, (1,), told)  # never queued: nothing can start it
        assert item.cancel()
        assert item.cancel()  # still cancelled
        assert item.cancelled()
        assert item.done()
        assert told.items == [item]  # told once, from the cancelling thread
        assert told.threads == [threading.current_thread().name]
        assert not item.execute()  # a thread that takes it afterwards does not run it
        item.notify()
        assert ran == []
        assert told.items == [item]
        with pytest.raises(concurrent.futures.CancelledError):
            item.result()
        with pytest.raises(concurrent.futures.CancelledError):
            item.exception()

    def test_a_started_item_cannot_be_cancelled(self, workers: Workers) -> None:
        started, release = threading.Event(), threading.Event()
        told = Told()

        def park() -> str:
            started.set()
            release.wait(WAIT)
            return "done"

        item = workers.submit(run, park, (), told)
        assert started.wait(WAIT)
        assert not item.cancel()
        assert not item.cancelled()
        assert not item.done()
        release.set()
        assert told.all_told.wait(WAIT)
        assert item.result() == "done"

    def test_the_body_and_its_arguments_are_let_go_once_run(self, workers: Workers) -> None:
        told = Told()
        payload = object()
        item = workers.submit(run, id, (payload,), told)
        assert told.all_told.wait(WAIT)
        assert item.fn is None
        assert item.run is None
        assert item.args == ()


class TestWorkers:
    def test_at_most_limit_items_hold_a_thread_and_the_rest_wait_their_turn(
        self, workers: Workers
    ) -> None:
        release = threading.Event()
        running = threading.Semaphore(0)
        told = Told(workers)
        told.expected = 5

        def park() -> str:
            running.release()
            release.wait(WAIT)
            return threading.current_thread().name

        items = [workers.submit(run, park, (), told) for _ in range(5)]
        for _ in range(3):
            assert running.acquire(timeout=WAIT)
        assert not running.acquire(timeout=0)  # the limit is 3: two wait in the share's queue
        assert workers.busy == 3
        assert len(workers.backlog) == 2
        assert not workers.idle
        release.set()
        assert told.all_told.wait(WAIT)
        names = {item.result() for item in items}
        assert len(names) == 3  # the waiting ones ran on the threads that ended the others
        assert told.idle_when_told[-1]  # the last one was counted free before it told

    def test_a_waiting_thread_is_reused_whatever_the_share(self, pool: WorkerPool) -> None:
        shares = [Workers(limit, pool) for limit in (3, 2, 1)]
        try:
            told = Told()
            first = shares[0].submit(run, threading.current_thread, (), told)
            assert told.all_told.wait(WAIT)
            thread = first.result()
            assert pool_threads(pool) == 1  # counted waiting before it told
            for share in (*shares, *shares):
                told = Told()
                item = share.submit(run, threading.current_thread, (), told)
                assert told.all_told.wait(WAIT)
                assert item.result() is thread  # the pool's only thread, not a new one
            assert pool_threads(pool) == 1
        finally:
            for share in shares:
                share.shutdown()

    def test_work_cancelled_in_the_shares_queue_never_runs(self, workers: Workers) -> None:
        started, release = threading.Event(), threading.Event()
        told = Told()
        told.expected = 3
        ran: list[int] = []

        def park() -> None:
            started.set()
            release.wait(WAIT)

        running = [workers.submit(run, park, (), told) for _ in range(3)]
        assert started.wait(WAIT)
        queued_told = Told()
        queued = workers.submit(run, ran.append, (1,), queued_told)  # the limit is 3: it waits
        assert workers.busy == 3
        assert queued.cancel()
        assert queued_told.items == [queued]  # told at once, from the cancelling thread
        release.set()
        assert told.all_told.wait(WAIT)
        assert all(item.done() for item in running)
        assert workers.idle  # the cancelled item took no place
        assert not workers.backlog
        assert ran == []

    def test_shutdown_cancels_queued_work_and_the_thread_goes_back_to_the_pool(
        self, pool: WorkerPool
    ) -> None:
        share = Workers(1, pool)
        started, release = threading.Event(), threading.Event()
        first_told, queued_told = Told(), Told()

        def park() -> threading.Thread:
            started.set()
            release.wait(WAIT)
            return threading.current_thread()

        first = share.submit(run, park, (), first_told)
        assert started.wait(WAIT)
        queued = share.submit(run, park, (), queued_told)
        share.shutdown()
        assert queued.cancelled()
        assert queued_told.items == [queued]
        release.set()
        assert first_told.all_told.wait(WAIT)
        assert first.result().is_alive()
        assert share.idle
        assert pool_threads(pool) == 1  # idle in the pool, for the next share

    def test_idle_threads_end_after_the_idle_timeout(
        self, pool: WorkerPool, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(_workers, "WORKER_IDLE_TIMEOUT", 0.05)
        share = Workers(4, pool)
        release = threading.Event()
        running = threading.Semaphore(0)
        told = Told()
        told.expected = 4

        def park() -> threading.Thread:
            running.release()
            release.wait(WAIT)
            return threading.current_thread()

        items = [share.submit(run, park, (), told) for _ in range(4)]
        for _ in range(4):
            assert running.acquire(timeout=WAIT)
        release.set()
        assert told.all_told.wait(WAIT)
        share.shutdown()
        for item in items:
            thread = item.result()
            thread.join(WAIT)
            assert not thread.is_alive()
        assert pool_threads(pool) == 0

    def test_a_closing_share_ends_the_idle_threads_no_share_needs(
        self, pool: WorkerPool, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(_workers, "WORKER_IDLE_MAX", 1)
        small, large = Workers(1, pool), Workers(3, pool)
        release = threading.Event()
        running = threading.Semaphore(0)
        told = Told()
        told.expected = 3

        def park() -> threading.Thread:
            running.release()
            release.wait(WAIT)
            return threading.current_thread()

        items = [large.submit(run, park, (), told) for _ in range(3)]
        for _ in range(3):
            assert running.acquire(timeout=WAIT)
        release.set()
        assert told.all_told.wait(WAIT)
        assert pool_threads(pool) == 3  # the open shares may run 4 at once: all stay
        large.shutdown()
        # Only the small share is open: one idle thread is enough (WORKER_IDLE_MAX).
        threads = [item.result() for item in items]
        assert wait_until(lambda: sum(thread.is_alive() for thread in threads) == 1)
        assert pool_threads(pool) == 1
        small.shutdown()

    def test_many_submitters_and_items_all_end_and_the_count_returns_to_zero(
        self, pool: WorkerPool
    ) -> None:
        share = Workers(4, pool)
        told = Told(share)
        told.expected = 2000
        lock = threading.Lock()
        now = peak = 0

        def double(n: int) -> int:
            nonlocal now, peak
            with lock:
                now += 1
                peak = max(peak, now)
            with lock:
                now -= 1
            return n * 2

        def submit_many(base: int) -> list[WorkItem]:
            return [share.submit(run, double, (base + i,), told) for i in range(500)]

        try:
            with concurrent.futures.ThreadPoolExecutor(4) as submitters:
                batches = list(submitters.map(submit_many, range(0, 2000, 500)))
            assert told.all_told.wait(WAIT)
            results = sorted(item.result() for batch in batches for item in batch)
            assert results == [n * 2 for n in range(2000)]
            assert len(told.items) == 2000
            assert share.idle
            assert peak <= 4
            assert 1 <= pool_threads(pool) <= 4
        finally:
            share.shutdown()


class NoNewThreads(WorkerPool):
    """A pool whose threads cannot start, as when the system has none to give."""

    __slots__ = ()

    def new_thread(self, item: WorkItem, workers: Workers) -> None:
        raise RuntimeError("can't start new thread")


class TestThreadsThatCannotStart:
    def test_with_no_thread_nothing_is_left_counted(self) -> None:
        pool = NoNewThreads()
        share = Workers(3, pool)
        with pytest.raises(RuntimeError, match="new thread"):
            share.submit(run, id, (1,), Told())
        assert share.idle
        assert not share.backlog
        assert pool_threads(pool) == 0

    def test_the_shares_other_threads_take_the_work(self, pool: WorkerPool) -> None:
        share = Workers(3, pool)
        started, release = threading.Event(), threading.Event()
        first_told, second_told = Told(), Told()

        def park() -> str:
            started.set()
            release.wait(WAIT)
            return "first"

        first = share.submit(run, park, (), first_told)
        assert started.wait(WAIT)
        pool.__class__ = NoNewThreads  # from now on, no thread can start (same slots)
        second = share.submit(run, abs, (-3,), second_told)  # queued, not refused
        assert share.busy == 1
        assert list(share.backlog) == [second]
        release.set()
        assert first_told.all_told.wait(WAIT)
        assert second_told.all_told.wait(WAIT)
        assert (first.result(), second.result()) == ("first", 3)
        assert share.idle
        share.shutdown()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12+: fork with threads
def test_a_forked_child_does_not_hand_work_to_the_parents_idle_threads() -> None:
    async def blocking_call() -> int:
        async with Activity() as act:
            return await act.synchronous_call(abs, -7)

    # Used and idle in the parent: its threads wait on the pool's queue.
    assert asyncio.run(blocking_call()) == 7
    assert pool_threads(_workers.shared_pool) >= 1
    pid = os.fork()
    if pid == 0:  # the child: with the parent's threads counted it would wait forever
        code = 1
        try:
            result = asyncio.run(asyncio.wait_for(blocking_call(), WAIT))
            code = 0 if result == 7 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
