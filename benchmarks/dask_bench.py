"""The Dask backend's cost and its pay-off, on a local cluster of two worker processes.

    python benchmarks/dask_bench.py [--calls N] [--repeat R] [--chunks C]

Two measures, in one run, on one ``LocalCluster`` (two worker processes on
127.0.0.1, two threads each):

- *small calls*: ``--calls`` (10,000) trivial calls, all submitted at once and
  waited for, through an activity with ``executor=DaskExecutor(client)``
  against bare ``client.submit`` and ``distributed.as_completed``. The rounds
  alternate, ``--repeat`` (3) of each; the median of each is reported, and
  their ratio, which the issue asks to stay at or below 1.2x.
- *a CPU-bound batch*: ``--chunks`` (16) chunks of pure-Python prime counting,
  through an activity on the cluster (two worker processes, one thread each)
  against an activity of the same limit on local threads, which the GIL lets
  run one at a time: the cluster pays once a call's work outweighs its round
  trip through the scheduler.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import statistics
import time
from typing import TYPE_CHECKING, Any, cast

from distributed import Client, LocalCluster, as_completed

from activity import Activity
from activity.dask import DaskExecutor

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

#: The overhead the issue allows the activity over bare Dask, for small calls.
TARGET_RATIO = 1.2


def inc(x: int) -> int:
    return x + 1


def count_primes(start: int, stop: int) -> int:
    """The primes in [start, stop): pure Python, so threads take turns with the GIL."""
    return sum(
        1 for n in range(max(start, 2), stop) if all(n % p for p in range(2, math.isqrt(n) + 1))
    )


def bare_dask(client: Client, calls: int) -> float:
    """Seconds for ``calls`` submits and their results by ``as_completed``."""
    started = time.perf_counter()
    submit: Callable[..., Any] = cast("Any", client).submit
    futures = [submit(inc, i, pure=False) for i in range(calls)]
    completed = cast("Callable[..., Iterable[tuple[Any, int]]]", as_completed)
    total = sum(result for _, result in completed(futures, with_results=True))
    elapsed = time.perf_counter() - started
    assert total == calls * (calls + 1) // 2
    return elapsed


async def through_activity(client: Client, calls: int) -> float:
    """Seconds for ``calls`` asynchronous calls on the cluster, all submitted, all awaited."""
    started = time.perf_counter()
    async with Activity(executor=DaskExecutor(client), max_concurrency=calls, max_pending=0) as act:
        submitted = [await act.asynchronous_call(inc, i) for i in range(calls)]
        total = 0
        for call in submitted:
            total += await call
    elapsed = time.perf_counter() - started
    assert total == calls * (calls + 1) // 2
    return elapsed


async def cpu_batch(executor: DaskExecutor | None, chunks: int, size: int) -> float:
    """Seconds for ``chunks`` prime counts, two at a time, on the cluster or local threads."""
    started = time.perf_counter()
    async with Activity(executor=executor, max_concurrency=2, thread_limit=2) as act:
        calls = [
            await act.asynchronous_call(count_primes, i * size, (i + 1) * size)
            for i in range(chunks)
        ]
        found = [await call for call in calls]
    elapsed = time.perf_counter() - started
    assert sum(found) > 0
    return elapsed


def local_cluster(threads: int) -> Any:
    """Two worker processes on 127.0.0.1 (``distributed`` is partly typed: one cast)."""
    new_cluster = cast("Callable[..., Any]", LocalCluster)
    return new_cluster(
        n_workers=2,
        threads_per_worker=threads,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",
        silence_logs=logging.ERROR,
    )


def connect(cluster: Any) -> Client:
    return cast("Callable[[Any], Client]", Client)(cluster)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--chunk-size", type=int, default=40_000)
    options = parser.parse_args()

    with local_cluster(threads=2) as cluster, connect(cluster) as client:
        bare_dask(client, min(options.calls, 500))  # warm up: workers, imports, connections
        asyncio.run(through_activity(client, min(options.calls, 500)))
        bare: list[float] = []
        ours: list[float] = []
        for _ in range(options.repeat):
            bare.append(bare_dask(client, options.calls))
            ours.append(asyncio.run(through_activity(client, options.calls)))
    bare_s, ours_s = statistics.median(bare), statistics.median(ours)
    ratio = ours_s / bare_s
    per_call = 1e6 / options.calls
    print(f"small calls: {options.calls} trivial calls, 2 worker processes x 2 threads")
    print(f"  bare client.submit + as_completed  {bare_s:7.2f} s  {bare_s * per_call:6.0f} µs/call")
    print(f"  activity on the Dask backend       {ours_s:7.2f} s  {ours_s * per_call:6.0f} µs/call")
    verdict = "within" if ratio <= TARGET_RATIO else "over"
    print(f"  ratio {ratio:.2f}x ({verdict} the {TARGET_RATIO}x target)")

    with local_cluster(threads=1) as cluster, connect(cluster) as client:
        executor = DaskExecutor(client)
        asyncio.run(cpu_batch(executor, 2, 1_000))  # warm up
        remote = statistics.median(
            asyncio.run(cpu_batch(executor, options.chunks, options.chunk_size))
            for _ in range(options.repeat)
        )
    local = statistics.median(
        asyncio.run(cpu_batch(None, options.chunks, options.chunk_size))
        for _ in range(options.repeat)
    )
    print(
        f"CPU-bound batch: {options.chunks} prime counts of {options.chunk_size} numbers, "
        "2 at a time"
    )
    print(f"  local threads (thread_limit=2)     {local:7.2f} s")
    print(f"  2-worker cluster                   {remote:7.2f} s  ({local / remote:.2f}x faster)")


if __name__ == "__main__":
    main()
