"""Statistics that tell the truth: calls waiting for a thread, and wait and run percentiles."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from activity import Activity, AsyncWorkRejectedError, ThreadPool
from activity._tracking import (
    BUCKETS,
    LONG,
    LONG_BUCKETS,
    SHORT,
    SHORT_BUCKETS,
    Histogram,
    bucket_of,
    upper_bound,
)
from activity.pytest_plugin import assert_balanced
from activity.tracking import LatencyStatistics

if TYPE_CHECKING:
    from collections.abc import Callable

    from activity import ActivityStatistics

pytestmark = pytest.mark.anyio

WAIT = 20.0  # seconds before a test that would hang fails instead


async def wait_for(act: Activity, done: Callable[[ActivityStatistics], bool]) -> ActivityStatistics:
    """Read the statistics until ``done`` holds (each reading balanced), or fail after WAIT s."""
    with anyio.fail_after(WAIT):
        while True:
            stats = act.statistics()
            assert_balanced(stats)
            if done(stats):
                return stats
            await anyio.sleep(0.001)


class TestWaitingForThread:
    async def test_running_counts_only_the_calls_a_thread_runs(self) -> None:
        release = threading.Event()

        def work() -> None:
            assert release.wait(WAIT)

        async with Activity(max_concurrency=8, thread_limit=2) as act:
            for _ in range(8):
                await act.asynchronous_call(work)
            stats = await wait_for(act, lambda s: s.running == 2)
            assert (stats.pending, stats.waiting_for_thread, stats.running) == (0, 6, 2)
            assert stats.in_flight == 8
            release.set()
            await act.wait_idle()
            stats = act.statistics()
            assert_balanced(stats)
            assert (stats.waiting_for_thread, stats.running, stats.completed) == (0, 0, 8)

    async def test_the_sta_thread_runs_one_call_and_the_others_wait_for_it(self) -> None:
        release = threading.Event()

        def work() -> None:
            assert release.wait(WAIT)

        async with Activity(max_concurrency=4, thread_pool=ThreadPool.STA) as act:
            for _ in range(3):
                await act.asynchronous_call(work)
            stats = await wait_for(act, lambda s: s.running == 1)
            assert (stats.pending, stats.waiting_for_thread, stats.running) == (0, 2, 1)
            release.set()
        stats = act.statistics()
        assert_balanced(stats)
        assert (stats.waiting_for_thread, stats.running, stats.completed) == (0, 0, 3)

    async def test_a_call_cancelled_while_it_waits_for_a_thread_leaves_the_count(self) -> None:
        release = threading.Event()

        def work() -> None:
            assert release.wait(WAIT)

        entered = threading.Event()

        def first() -> None:
            entered.set()
            work()

        async with Activity(max_concurrency=4, thread_limit=1) as act:
            await act.asynchronous_call(first)
            # It holds the thread before the others ask (trio orders new tasks as it likes).
            await wait_for(act, lambda _: entered.is_set())
            queued = [await act.asynchronous_call(work) for _ in range(2)]
            await wait_for(act, lambda s: s.running == 1 and s.waiting_for_thread == 2)
            queued[0].cancel()
            stats = await wait_for(act, lambda s: s.cancelled == 1)
            assert (stats.waiting_for_thread, stats.running) == (1, 1)
            release.set()
        stats = act.statistics()
        assert_balanced(stats)
        assert (stats.completed, stats.cancelled, stats.in_flight) == (2, 1, 0)

    async def test_coroutine_calls_never_wait_for_a_thread(self) -> None:
        gate = anyio.Event()

        async def work() -> None:
            await gate.wait()

        async with Activity(max_concurrency=3, thread_limit=1) as act:
            for _ in range(5):
                await act.asynchronous_call(work)
            stats = act.statistics()
            assert (stats.pending, stats.waiting_for_thread, stats.running) == (2, 0, 3)
            gate.set()


class TestDurations:
    async def test_queued_calls_wait_and_every_call_is_timed(self) -> None:
        gate = anyio.Event()

        async def work() -> None:
            await gate.wait()

        async with Activity(max_concurrency=1) as act:
            for _ in range(3):
                await act.asynchronous_call(work)
            submitted = time.perf_counter()  # every call was submitted before this
            await wait_for(act, lambda s: s.pending == 2)
            await anyio.sleep(0.01)  # so that the wait is long enough to be seen
            held = time.perf_counter() - submitted
            gate.set()
        stats = act.statistics()
        assert stats.wait_time.count == stats.run_time.count == 3
        for latency in (stats.wait_time, stats.run_time):
            figures = [latency.p50, latency.p90, latency.p99, latency.max]
            known = [figure for figure in figures if figure is not None]
            assert len(known) == 4
            assert known == sorted(known)
            assert known[0] >= 0
        # The first call waited for nothing; the two queued ones for the first call's run,
        # which ended after `held`.
        assert (stats.wait_time.p50 or 0) >= held
        assert (stats.wait_time.max or 0) >= held
        assert (stats.run_time.max or 0) >= held

    async def test_nothing_timed_yet(self) -> None:
        async with Activity() as act:
            stats = act.statistics()
        assert stats.wait_time == stats.run_time == LatencyStatistics()
        assert stats.run_time.p99 is None

    async def test_rejected_and_cancelled_pending_calls_are_not_timed(self) -> None:
        gate = anyio.Event()

        async def work() -> None:
            await gate.wait()

        async with Activity(max_concurrency=1, max_pending=1) as act:
            await act.asynchronous_call(work)
            queued = await act.asynchronous_call(work)
            with pytest.raises(AsyncWorkRejectedError):
                act.asynchronous_call_nowait(work)
            queued.cancel()
            gate.set()
        stats = act.statistics()
        assert (stats.completed, stats.cancelled, stats.rejected) == (1, 1, 1)
        assert stats.wait_time.count == stats.run_time.count == 1

    async def test_blocking_calls_are_timed(self) -> None:
        def work(x: int) -> int:
            return x

        async with Activity() as act:
            calls = [await act.asynchronous_call(work, i) for i in range(10)]
        assert [c.result() for c in calls] == list(range(10))
        stats = act.statistics()
        assert stats.run_time.count == 10
        assert (stats.run_time.max or 0) > 0


class TestHistogram:
    def test_each_duration_falls_in_its_bucket(self) -> None:
        for nanoseconds in [0, 1, 1023, 1024, 1279, 1280, 2047, 2048, 10**6, 10**9, 3 * 10**12]:
            index = bucket_of(nanoseconds)
            below = 0 if index == 0 else upper_bound(index - 1)
            assert below <= nanoseconds < upper_bound(index)

    def test_the_short_table_agrees_with_bucket_of_at_every_step_and_boundary(self) -> None:
        assert len(SHORT_BUCKETS) == SHORT >> 8
        for step in range(SHORT >> 8):
            nanoseconds = step << 8
            assert SHORT_BUCKETS[step] == bucket_of(nanoseconds)
            assert SHORT_BUCKETS[step] == bucket_of(nanoseconds + 255)
        for step in range(SHORT >> 16, LONG >> 16):
            nanoseconds = step << 16
            assert LONG_BUCKETS[step] == bucket_of(nanoseconds)
            assert LONG_BUCKETS[step] == bucket_of(nanoseconds + (1 << 16) - 1)
        for nanoseconds in (SHORT - 1, SHORT, SHORT + 1, LONG - 1, LONG, LONG + 1):
            histogram = Histogram()
            histogram.add(nanoseconds)
            assert histogram.counts[bucket_of(nanoseconds)] == 1
            assert histogram.max == nanoseconds

    def test_the_buckets_are_fixed_and_the_last_takes_anything_longer(self) -> None:
        assert bucket_of(1 << 62) == BUCKETS - 1
        histogram = Histogram()
        for nanoseconds in range(0, 10**7, 997):
            histogram.add(nanoseconds)
        assert len(histogram.counts) == BUCKETS

    def test_percentiles_are_at_most_a_bucket_high(self) -> None:
        histogram = Histogram()
        values = [i * 1000 for i in range(1, 1001)]  # 1 µs .. 1 ms, evenly
        for nanoseconds in values:
            histogram.add(nanoseconds)
        stats = histogram.snapshot()
        assert stats.count == 1000
        assert stats.max == pytest.approx(1e-3)
        for got, exact in ((stats.p50, 500e-6), (stats.p90, 900e-6), (stats.p99, 990e-6)):
            assert got is not None
            assert exact <= got <= exact * 1.26  # one bucket is at most 25 % wide

    def test_one_duration(self) -> None:
        histogram = Histogram()
        histogram.add(5_000_000)
        stats = histogram.snapshot()
        assert stats.p50 == stats.p90 == stats.p99 == stats.max == 0.005


def test_statistics_keep_working_from_another_thread() -> None:
    seen: list[Any] = []

    async def main() -> None:
        async with Activity() as act:
            await act.asynchronous_call(anyio.sleep, 0)
            await act.wait_idle()
            seen.append(await anyio.to_thread.run_sync(act.statistics))

    anyio.run(main)
    assert seen[0].completed == 1
    assert_balanced(seen[0])


def test_top_shows_the_percentiles_as_durations() -> None:
    from activity import _top

    assert _top._figure("wait_time.p99", 0.0025, True) == "2.5 ms"  # pyright: ignore[reportPrivateUsage]
    assert _top._figure("run_time.max", 2e-5, True) == "20 µs"  # pyright: ignore[reportPrivateUsage]
    assert _top._figure("run_time.count", 12, True) == "12"  # pyright: ignore[reportPrivateUsage]
