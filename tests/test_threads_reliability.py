"""Blocking calls in threads: calling back in, StopIteration, and threads that outlive their use."""

# Names bound inside `with pytest.raises(...)` blocks are read after them.
# pyright: reportPossiblyUnboundVariable=false

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import pytest

from activity import (
    Activity,
    Binding,
    CallStatus,
    Synchronization,
    ThreadPool,
    _workers,
)
from activity._workers import WorkerPool, Workers, WorkItem
from activity.pytest_plugin import assert_balanced

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.anyio

WAIT = 20  # seconds before a test that would hang fails instead

#: The worker pool is asyncio's and uvloop's; on trio, threads are trio's own cache's.
ASYNCIO_ONLY = pytest.mark.parametrize(
    "anyio_backend",
    [("asyncio", {"use_uvloop": False}), ("asyncio", {"use_uvloop": True})],
    ids=["asyncio", "uvloop"],
)


def this_thread() -> threading.Thread:
    return threading.current_thread()


def call_back(act: Activity, fn: Callable[..., Any], *args: Any) -> tuple[threading.Thread, Any]:
    """A blocking body that calls back into its own activity; where it ran, and what it got."""
    return this_thread(), act.synchronous_call_from_thread(fn, *args)


class TestCallingBackFromABlockingCall:
    """A blocking call's nested blocking calls run on its own thread, never waiting for it."""

    @pytest.mark.parametrize("binding", [Binding.NO_BINDING, Binding.BIND_TO_POOL_THREAD])
    async def test_on_the_apartment_thread(self, binding: Binding) -> None:
        async with Activity(thread_pool=ThreadPool.STA, binding=binding) as act:
            with anyio.fail_after(WAIT):
                outer, inner = await act.synchronous_call(call_back, act, this_thread)
        assert outer is inner
        assert "-sta" in outer.name
        stats = act.statistics()
        assert_balanced(stats)
        assert (stats.accepted, stats.completed) == (2, 2)

    @pytest.mark.parametrize("synchronous", [True, False], ids=["synchronous", "asynchronous"])
    async def test_on_the_only_worker_thread(self, synchronous: bool) -> None:
        async with Activity(thread_limit=1) as act:
            with anyio.fail_after(WAIT):
                if synchronous:
                    outer, inner = await act.synchronous_call(call_back, act, this_thread)
                else:
                    outer, inner = await (await act.asynchronous_call(call_back, act, this_thread))
        assert outer is inner
        assert_balanced(act.statistics())

    async def test_when_every_worker_thread_waits_for_its_call_back(self) -> None:
        # Both nested calls run at once, each on the thread that waits for it.
        both = threading.Barrier(2, timeout=WAIT)

        def meet() -> threading.Thread:
            both.wait()
            return this_thread()

        async with Activity(thread_limit=2) as act:
            calls = [await act.asynchronous_call(call_back, act, meet) for _ in range(2)]
            with anyio.fail_after(WAIT):
                results = [await call for call in calls]
        assert all(outer is inner for outer, inner in results)
        assert results[0][0] is not results[1][0]
        assert_balanced(act.statistics())

    async def test_through_a_coroutine_and_two_levels_deep(self) -> None:
        # blocking -> coroutine -> blocking -> blocking, all one chain.
        async with Activity(thread_pool=ThreadPool.STA) as act:

            async def middle() -> tuple[threading.Thread, Any]:
                return await act.synchronous_call(call_back, act, this_thread)

            with anyio.fail_after(WAIT):
                outer, (middle_thread, innermost) = await act.synchronous_call(
                    call_back, act, middle
                )
        assert outer is middle_thread is innermost
        stats = act.statistics()
        assert_balanced(stats)
        assert (stats.accepted, stats.completed) == (4, 4)

    async def test_inside_a_synchronization_domain(self) -> None:
        async with Activity(thread_pool=ThreadPool.STA, synchronization=Synchronization.NEW) as act:
            with anyio.fail_after(WAIT):
                outer, inner = await act.synchronous_call(call_back, act, this_thread)
        assert outer is inner

    async def test_the_nested_calls_exception_reaches_the_caller_unchanged(self) -> None:
        error = ValueError("nested")

        def fail() -> None:
            raise error

        def catch(act: Activity) -> BaseException | None:
            try:
                act.synchronous_call_from_thread(fail)
            except ValueError as exc:
                return exc
            return None

        async with Activity(thread_limit=1) as act:
            with anyio.fail_after(WAIT):
                assert await act.synchronous_call(catch, act) is error
        stats = act.statistics()
        assert_balanced(stats)
        assert (stats.completed, stats.failed) == (1, 1)

    async def test_another_chains_call_does_not_run_on_the_waiting_thread(self) -> None:
        async with Activity(thread_limit=2) as act:

            async def start_another_chain() -> threading.Thread:
                other = await act.asynchronous_call(this_thread)
                return await other

            with anyio.fail_after(WAIT):
                outer, other = await act.synchronous_call(call_back, act, start_another_chain)
        assert outer is not other
        assert_balanced(act.statistics())


class TestStopIteration:
    """A body's StopIteration fails its call as RuntimeError caused by it, on every path."""

    @staticmethod
    def raising(stop: StopIteration) -> Callable[[], None]:
        def body() -> None:
            raise stop

        return body

    @staticmethod
    def check(exc: BaseException | None, stop: StopIteration) -> None:
        assert type(exc) is RuntimeError
        assert exc.__cause__ is stop

    @pytest.mark.parametrize(
        "options",
        [
            {},
            {"thread_pool": ThreadPool.STA},
            {"synchronization": Synchronization.NEW},
        ],
        ids=["mta", "sta", "domain"],
    )
    async def test_a_blocking_body(self, options: dict[str, Any]) -> None:
        async with Activity(**options) as act:
            stop = StopIteration("sync")
            with pytest.raises(RuntimeError) as raised:
                await act.synchronous_call(self.raising(stop))
            self.check(raised.value, stop)

            stop = StopIteration("async")
            call = await act.asynchronous_call(self.raising(stop))
            await call.wait()
            assert call.status is CallStatus.FAILED
            self.check(call.exception(), stop)
            with pytest.raises(RuntimeError) as raised:
                call.result()
            self.check(raised.value, stop)
        stats = act.statistics()
        assert_balanced(stats)
        assert (stats.accepted, stats.failed) == (2, 2)

    async def test_a_blocking_body_bound_to_the_loop_thread(self) -> None:
        async with Activity() as act:
            act.bind_to_current_thread()
            stop = StopIteration("bound")
            call = await act.asynchronous_call(self.raising(stop))
            await call.wait()
            self.check(call.exception(), stop)
            stop = StopIteration("bound, sync")
            with pytest.raises(RuntimeError) as raised:
                await act.synchronous_call(self.raising(stop))
            self.check(raised.value, stop)

    async def test_a_coroutine_body(self) -> None:
        stop = StopIteration("coroutine")

        async def body() -> None:
            raise stop

        async with Activity() as act:
            with pytest.raises(RuntimeError) as raised:
                await act.synchronous_call(body)
            self.check(raised.value, stop)
            call = await act.asynchronous_call(body)
            await call.wait()
            self.check(call.exception(), stop)

    async def test_from_a_thread(self) -> None:
        stops = [StopIteration("from a thread"), StopIteration("asynchronously")]

        def from_a_thread(act: Activity) -> list[BaseException | None]:
            caught: BaseException | None = None
            try:
                act.synchronous_call_from_thread(self.raising(stops[0]))
            except BaseException as exc:
                caught = exc
            future = act.asynchronous_call_from_thread(self.raising(stops[1]))
            return [caught, future.exception(WAIT)]

        async with Activity() as act:
            with anyio.fail_after(WAIT):
                # A thread of anyio's, and a worker thread of the activity's own.
                caught = await anyio.to_thread.run_sync(from_a_thread, act)
                caught += await act.synchronous_call(from_a_thread, act)
        for exc, stop in zip(caught, stops * 2, strict=True):
            self.check(exc, stop)


class TestWorkerThreads:
    """One pool of threads for every activity; idle threads end."""

    @ASYNCIO_ONLY
    async def test_a_thread_is_shared_by_activities_of_any_limit(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        started: list[str] = []
        new_thread = WorkerPool.new_thread

        def counted(pool: WorkerPool, item: WorkItem, workers: Workers) -> None:
            started.append(f"limit {workers.limit}")
            new_thread(pool, item, workers)

        monkeypatch.setattr(WorkerPool, "new_thread", counted)
        async with Activity(thread_limit=3) as first:
            await first.synchronous_call(this_thread)
        del started[:]  # it may have started one: now at least one waits for work
        for limit in (2, 5, 1):
            async with Activity(thread_limit=limit) as act:
                thread = await act.synchronous_call(this_thread)
                assert thread.name.startswith("activity-worker-pool_")
        assert started == []

    @ASYNCIO_ONLY
    async def test_threads_end_once_idle_after_their_activities_close(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(_workers, "WORKER_IDLE_TIMEOUT", 0.05)
        used = await run_at_once_in_activities((4, 3, 2))
        assert len(used) == 9  # every call had a thread of its own, all at once
        assert wait_until(lambda: not any(thread.is_alive() for thread in used))

    @ASYNCIO_ONLY
    async def test_closing_activities_end_the_idle_threads_no_open_one_needs(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The idle timeout is left as it is: the threads end as the activities close.
        monkeypatch.setattr(_workers, "WORKER_IDLE_MAX", 2)
        used = await run_at_once_in_activities((5, 4, 3))
        assert len(used) == 12
        # The pool keeps 2 idle threads at most now, whichever they are.
        assert wait_until(lambda: sum(thread.is_alive() for thread in used) <= 2)


async def run_at_once_in_activities(limits: tuple[int, ...]) -> set[threading.Thread]:
    """Fill each activity's ``thread_limit`` with blocking calls all running at once.

    :return: the threads they ran on
    """
    everyone = threading.Barrier(sum(limits), timeout=WAIT)
    used: set[threading.Thread] = set()

    def meet() -> None:
        used.add(threading.current_thread())
        everyone.wait()

    async def fill(limit: int) -> None:
        async with Activity(thread_limit=limit, max_concurrency=limit) as act:
            calls = [await act.asynchronous_call(meet) for _ in range(limit)]
            for call in calls:
                await call
            assert_balanced(act.statistics())

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            for limit in limits:
                tg.start_soon(fill, limit)
    return used


def wait_until(condition: Callable[[], bool]) -> bool:
    """Poll ``condition`` until it holds or ``WAIT`` seconds have passed; return it."""
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
