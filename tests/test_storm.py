"""Storms and leaks: many calls, many threads, shutdown racing submission, and what is left.

The 10^6-call storm is marked ``storm`` and runs only when asked for
(``python -m pytest -m storm tests/test_storm.py``); every run includes its
10^5 variant and the other storms.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
from collections import Counter
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from activity import (
    Activity,
    ActivityClosedError,
    AsyncWorkRejectedError,
    Call,
    CallStatus,
    Overflow,
    ThreadPool,
    _workers,
)
from activity.pytest_plugin import assert_balanced

pytestmark = pytest.mark.anyio

#: Seconds a test waits for threads, tasks or a drain before it fails instead of hanging.
WAIT = 30.0


@pytest.fixture
def storm(request: pytest.FixtureRequest) -> None:
    """Skip a ``storm`` test unless the run selects storms (``-m storm``)."""
    if "storm" not in (request.config.option.markexpr or ""):
        pytest.skip("a long storm: run it with -m storm")


async def tiny() -> None:
    pass


async def echo(value: Any) -> Any:
    await anyio.lowlevel.checkpoint()
    return value


def blocking_echo(value: Any) -> Any:
    return value


def current_tasks() -> set[object]:
    """The tasks of the running loop (trio: the whole task tree)."""
    try:
        import asyncio

        return set(asyncio.all_tasks())
    except RuntimeError:  # not asyncio: trio
        import trio

        found: set[object] = set()
        todo = [trio.lowlevel.current_root_task()]
        while todo:
            task = todo.pop()
            if task is None:
                continue
            found.add(task)
            for nursery in task.child_nurseries:
                todo.extend(nursery.child_tasks)
        return found


async def run_tiny_calls(count: int) -> Activity:
    """Push ``count`` coroutine calls through one activity, a batch at a time."""
    batch = 5000
    async with Activity(max_concurrency=100, max_pending=batch) as act:
        submit = act.asynchronous_call
        for start in range(0, count, batch):
            for _ in range(min(batch, count - start)):
                await submit(tiny)
            await act.wait_idle()
    return act


async def storm_of_tiny_calls(count: int) -> None:
    # Memory is counted in blocks of Python's allocator (sys.getallocatedblocks()):
    # it counts live objects whatever the allocator keeps cached, so it does not
    # drift with arena reuse as RSS does, and costs nothing per call, unlike
    # tracemalloc (which would make this storm several times slower). A call that
    # leaked a single object would leave `count` blocks behind.
    await run_tiny_calls(5000)  # warm up: first-use caches are not a leak
    gc.collect()
    before = sys.getallocatedblocks()
    act = await run_tiny_calls(count)
    stats = act.statistics()
    assert_balanced(stats)
    assert (stats.accepted, stats.completed) == (count, count)
    assert (stats.pending, stats.running, stats.failed, stats.cancelled, stats.rejected) == (
        0,
        0,
        0,
        0,
        0,
    )
    del act, stats
    gc.collect()
    after = sys.getallocatedblocks()
    assert after <= before * 1.1, f"{after - before} blocks more after {count} calls"


class TestTinyCallStorm:
    async def test_a_hundred_thousand_calls(self, anyio_backend: Any) -> None:
        await storm_of_tiny_calls(10**5)

    @pytest.mark.storm
    @pytest.mark.timeout(600)
    @pytest.mark.usefixtures("storm")
    async def test_a_million_calls(self, anyio_backend: Any) -> None:
        await storm_of_tiny_calls(10**6)


class TestShutdownRace:
    async def test_threads_submit_while_the_activity_closes(self, anyio_backend: Any) -> None:
        """Each of 1,000 threads' submissions is accepted and ends once, or is refused."""
        count = 1000
        go = threading.Event()
        refused: list[BaseException] = []
        unexpected: list[BaseException] = []
        sync_ended: list[Any] = []
        futures: list[Any] = []
        told: Counter[int] = Counter()
        lock = threading.Lock()
        act = Activity(max_concurrency=20, max_pending=100, shutdown_timeout=WAIT)

        def tell(index: int) -> Any:
            def done(_: object) -> None:
                with lock:
                    told[index] += 1

            return done

        def submit(index: int) -> None:
            go.wait(WAIT)
            try:
                if index % 2:
                    future = act.asynchronous_call_from_thread(echo, index)
                    with lock:
                        futures.append((index, future))
                    future.add_done_callback(tell(index))
                else:
                    value = act.synchronous_call_from_thread(echo, index)
                    with lock:
                        sync_ended.append(value)
            except (ActivityClosedError, AsyncWorkRejectedError) as exc:
                with lock:
                    refused.append(exc)
            except BaseException as exc:
                with lock:
                    unexpected.append(exc)

        threads = [
            threading.Thread(target=submit, args=(i,), name=f"submitter-{i}") for i in range(count)
        ]
        for thread in threads:
            thread.start()
        try:
            async with act:
                go.set()
                # Leave while most threads are still on their way in.
                with anyio.fail_after(WAIT):
                    while act.statistics().accepted < 100:  # noqa: ASYNC110 - counters have no event
                        await anyio.sleep(0.001)
        finally:
            go.set()
            # The threads need the loop to hear back: wait without blocking it.
            with anyio.move_on_after(WAIT):
                while any(thread.is_alive() for thread in threads):  # noqa: ASYNC110 - threads
                    await anyio.sleep(0.01)
        hung = [thread.name for thread in threads if thread.is_alive()]
        assert not hung, f"{len(hung)} threads never returned"
        assert not unexpected, unexpected[:5]
        assert len(futures) + len(sync_ended) + len(refused) == count
        stats = act.statistics()
        assert_balanced(stats)
        assert stats.accepted == len(futures) + len(sync_ended)
        assert stats.rejected == sum(isinstance(e, AsyncWorkRejectedError) for e in refused)
        assert (stats.pending, stats.running) == (0, 0)
        # Nothing was cancelled: the drain had time for all of it.
        assert stats.completed == stats.accepted
        assert sorted(sync_ended) == sorted(v for v in sync_ended if v % 2 == 0)
        for index, future in futures:
            assert future.result(0) == index
        assert all(told[index] == 1 for index, _ in futures), "a future was told twice or never"

    async def test_tasks_submit_while_the_block_exits(self, anyio_backend: Any) -> None:
        """Submitters on the loop race the exit: every accepted call ends exactly once."""
        calls: list[Call[Any]] = []
        told: Counter[int] = Counter()
        ended_by: list[BaseException] = []
        sync_results: list[Any] = []
        rejected = 0

        def tell(call: Call[Any]) -> None:
            told[call.id] += 1

        async def submitter(act: Activity, number: int) -> None:
            nonlocal rejected
            while True:
                try:
                    if number % 3:
                        call = await act.asynchronous_call(echo, number)
                        calls.append(call)
                        call.add_done_callback(tell)
                    else:
                        sync_results.append(await act.synchronous_call(echo, number))
                except ActivityClosedError as exc:
                    ended_by.append(exc)
                    return
                except AsyncWorkRejectedError:
                    rejected += 1
                    await anyio.lowlevel.checkpoint()

        submitters = 30
        async with (
            anyio.create_task_group() as tg,
            Activity(
                max_concurrency=10,
                max_pending=40,
                overflow=Overflow.REJECT,
                shutdown_timeout=WAIT,
            ) as act,
        ):
            for number in range(submitters):
                tg.start_soon(submitter, act, number)
            with anyio.fail_after(WAIT):
                while act.statistics().accepted < 500:
                    await anyio.lowlevel.checkpoint()
            # The block has exited; the submitters learn it at their next call.
        assert len(ended_by) == submitters
        stats = act.statistics()
        assert_balanced(stats)
        assert stats.accepted == len(calls) + len(sync_results)
        assert stats.rejected == rejected
        assert stats.completed == stats.accepted  # drained, none lost or cancelled
        assert all(call.status is CallStatus.COMPLETED for call in calls)
        assert all(told[call.id] == 1 for call in calls)


class TestNothingLeftBehind:
    async def test_tasks_threads_and_descriptors(
        self, anyio_backend: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """After thread, coroutine and STA calls, closing leaves no task, thread or fd."""
        # Idle worker threads end after WORKER_IDLE_TIMEOUT (10 s by default): shorter
        # here, so the test sees the threads that ran its calls end.
        monkeypatch.setattr(_workers, "WORKER_IDLE_TIMEOUT", 0.1)
        gc.collect()
        tasks_before = current_tasks()
        threads_before = set(threading.enumerate())
        fds_before = sorted(os.listdir("/proc/self/fd"))
        for thread_pool in (ThreadPool.MTA, ThreadPool.STA):
            async with Activity(thread_pool=thread_pool, thread_limit=8) as act:
                async with anyio.create_task_group() as tg:
                    for i in range(30):
                        tg.start_soon(act.synchronous_call, blocking_echo, i)
                        tg.start_soon(act.synchronous_call, echo, i)
                for i in range(30):
                    await act.asynchronous_call(blocking_echo, i)
                    await act.asynchronous_call(echo, i)
            stats = act.statistics()
            assert_balanced(stats)
            assert stats.completed == stats.accepted == 120

        def left() -> tuple[set[object], list[str], list[str]]:
            threads = {
                thread.name
                for thread in set(threading.enumerate()) - threads_before
                # The event loop libraries' own caches keep idle threads for 10 s:
                # trio's (anyio.to_thread on trio) and anyio's (anyio.to_thread on
                # asyncio, with which the exit waits for an STA thread to end).
                if not thread.name.startswith(("Trio thread", "AnyIO worker thread"))
            }
            fds = sorted(os.listdir("/proc/self/fd"))
            return current_tasks() - tasks_before, sorted(threads), fds

        with anyio.move_on_after(WAIT):
            while True:
                tasks, threads, fds = left()
                if not tasks and not threads and fds == fds_before:
                    break
                await anyio.sleep(0.05)
        tasks, threads, fds = left()
        assert not tasks, tasks
        assert not threads, threads
        assert fds == fds_before
