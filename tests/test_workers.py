"""The lent thread pool and its work items, on their own (mostly without a loop)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from typing import Any

import pytest

from activity import Activity, _dispatch
from activity._dispatch import Workers, WorkItem

WAIT = 30  # seconds a test may wait for a thread before it fails instead of hanging
#: A thread limit no other test uses, so that the pool handed back is this test's.
FORK_LIMIT = 11


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
        self._lock = threading.Lock()

    def __call__(self, item: WorkItem) -> None:
        with self._lock:
            self.items.append(item)
            self.threads.append(threading.current_thread().name)
            if self._workers is not None:
                self.idle_when_told.append(self._workers.idle)
            if len(self.items) >= self.expected:
                self.all_told.set()


@pytest.fixture
def workers() -> Any:
    pool = Workers(3)
    yield pool
    pool.shutdown()


class TestWorkItem:
    def test_runs_in_a_worker_thread_and_tells_once(self, workers: Workers) -> None:
        told = Told()

        def where(x: str) -> tuple[str, str]:
            return x, threading.current_thread().name

        item = workers.submit(run, where, ("a",), told)
        assert told.all_told.wait(WAIT)
        value, thread = item.result()
        assert value == "a"
        assert thread.startswith("activity-worker-")
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
            if tb.tb_frame.f_code.co_filename == _dispatch.__file__:  # the pool's frames
                held.extend(tb.tb_frame.f_locals.values())
            tb = tb.tb_next
        assert not any(
            value is item or value is payload or (type(value) is tuple and payload in value)
            for value in held
        )

    def test_stop_iteration_is_an_ordinary_failure(self, workers: Workers) -> None:
        told = Told()

        def stop() -> None:
            raise StopIteration

        item = workers.submit(run, stop, (), told)
        assert told.all_told.wait(WAIT)
        assert type(item.exception()) is StopIteration

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
        assert item._fn is None
        assert item._run is None
        assert item._args == ()


class TestWorkers:
    def test_threads_start_as_work_needs_them_up_to_the_limit(self, workers: Workers) -> None:
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
        assert not running.acquire(timeout=0)  # the limit is 3: two wait in the queue
        assert workers._threads == 3
        assert not workers.idle
        release.set()
        assert told.all_told.wait(WAIT)
        names = {item.result() for item in items}
        assert len(names) == 3
        assert told.idle_when_told[-1]  # the last one was counted free before it told

    def test_an_idle_thread_is_reused_not_added(self, workers: Workers) -> None:
        for expected in range(1, 4):
            told = Told()
            item = workers.submit(run, threading.current_thread, (), told)
            assert told.all_told.wait(WAIT)
            assert item.result().name.endswith("_1")
            assert workers._threads == 1, expected
        assert workers.idle

    def test_work_cancelled_in_the_queue_is_counted_free_at_once(self, workers: Workers) -> None:
        # So that a pool handed back right after is idle, and lent again.
        started, release = threading.Event(), threading.Event()
        told = Told()
        told.expected = 3

        def park() -> None:
            started.set()
            release.wait(WAIT)

        running = [workers.submit(run, park, (), told) for _ in range(3)]
        assert started.wait(WAIT)
        queued = workers.submit(run, park, (), Told())  # the limit is 3: it waits
        assert workers._busy == 4
        assert queued.cancel()
        assert workers._busy == 3
        release.set()
        assert told.all_told.wait(WAIT)
        assert all(item.done() for item in running)
        assert workers.idle  # the cancelled item, still in the queue, is not counted

    def test_shutdown_cancels_queued_work_and_ends_the_threads(self) -> None:
        pool = Workers(1)
        started, release = threading.Event(), threading.Event()
        first_told, queued_told = Told(), Told()

        def park() -> threading.Thread:
            started.set()
            release.wait(WAIT)
            return threading.current_thread()

        first = pool.submit(run, park, (), first_told)
        assert started.wait(WAIT)
        queued = pool.submit(run, park, (), queued_told)
        pool.shutdown()
        assert queued.cancelled()
        assert queued_told.items == [queued]
        release.set()
        assert first_told.all_told.wait(WAIT)
        thread = first.result()
        thread.join(WAIT)
        assert not thread.is_alive()
        assert pool.idle

    def test_many_submitters_and_items_all_end_and_the_count_returns_to_zero(self) -> None:
        pool = Workers(4)
        told = Told(pool)
        told.expected = 2000

        def double(n: int) -> int:
            return n * 2

        def submit_many(base: int) -> list[WorkItem]:
            return [pool.submit(run, double, (base + i,), told) for i in range(500)]

        try:
            with concurrent.futures.ThreadPoolExecutor(4) as submitters:
                batches = list(submitters.map(submit_many, range(0, 2000, 500)))
            assert told.all_told.wait(WAIT)
            results = sorted(item.result() for batch in batches for item in batch)
            assert results == [n * 2 for n in range(2000)]
            assert len(told.items) == 2000
            assert pool.idle
            assert pool._threads <= 4
        finally:
            pool.shutdown()


def refuse_thread(workers: Workers, number: int) -> None:
    """Workers._start_thread when the system has no thread to give."""
    raise RuntimeError("can't start new thread")


class TestThreadsThatCannotStart:
    def test_with_no_thread_nothing_is_left_counted(
        self, workers: Workers, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        with monkeypatch.context() as patch:
            patch.setattr(Workers, "_start_thread", refuse_thread)
            with pytest.raises(RuntimeError, match="new thread"):
                workers.submit(run, id, (1,), Told())
        assert workers.idle
        assert workers._threads == 0
        told = Told()
        item = workers.submit(run, abs, (-2,), told)  # threads start again once they can
        assert told.all_told.wait(WAIT)
        assert item.result() == 2

    def test_the_pools_other_threads_take_the_work(
        self, workers: Workers, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        started, release = threading.Event(), threading.Event()
        first_told, second_told = Told(), Told()

        def park() -> str:
            started.set()
            release.wait(WAIT)
            return "first"

        first = workers.submit(run, park, (), first_told)
        assert started.wait(WAIT)
        with monkeypatch.context() as patch:
            patch.setattr(Workers, "_start_thread", refuse_thread)
            second = workers.submit(run, abs, (-3,), second_told)  # queued, not refused
        assert workers._threads == 1
        release.set()
        assert first_told.all_told.wait(WAIT)
        assert second_told.all_told.wait(WAIT)
        assert (first.result(), second.result()) == ("first", 3)
        assert workers.idle


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12+: fork with threads
def test_a_forked_child_does_not_borrow_the_parents_idle_threads() -> None:
    async def blocking_call() -> int:
        async with Activity(thread_limit=FORK_LIMIT) as act:
            return await act.synchronous_call(abs, -7)

    # Used and handed back idle in the parent: its threads wait on its queue.
    assert asyncio.run(blocking_call()) == 7
    assert _dispatch._idle_pools.get(FORK_LIMIT)
    pid = os.fork()
    if pid == 0:  # the child: with the parent's pool it would wait forever
        code = 1
        try:
            result = asyncio.run(asyncio.wait_for(blocking_call(), WAIT))
            code = 0 if result == 7 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
