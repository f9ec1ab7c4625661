"""Blocking callables in worker threads, 100 at a time and one at a time.

What plain functions (a file, a database driver without async support) pay
for the trip to a worker thread and back, next to ``asyncio.to_thread``,
``loop.run_in_executor`` and ``anyio.to_thread.run_sync``. The floor of the
serial rows is one thread fed by a ``SimpleQueue``. asyncio and uvloop only.

100 at a time, ``activity`` runs in the two admission settings of
``async_call`` (a backlog of 100 that waits, and one that holds every call),
and ``asyncio.to_thread`` in two forms, both baselines (each call gets a
context copy and a future of its own): 100 tasks that each await one call at
a time, and the bounded spawn (a task per call, started once the semaphore
gives it a place). The targets are taken against the faster of the two.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from activity import Activity, Overflow
from benchmarks.harness import LIMIT, Group, Loop, Pattern, Sizes, Thunk, blocking_noop
from benchmarks.scenarios.async_call import ACTIVITY_UNBOUNDED, ACTIVITY_WAIT

__all__ = ["groups"]


async def _workers(calls: int, call: Thunk) -> None:
    """Keep ``LIMIT`` calls in flight: one task per place, each awaiting a call at a time."""
    todo = iter(range(calls))

    async def worker() -> None:
        for _ in todo:
            await call()

    async with asyncio.TaskGroup() as tg:
        for _ in range(min(LIMIT, calls)):
            tg.create_task(worker())


async def _activity_blocking(calls: int, wait: bool) -> float:
    start = time.perf_counter()
    if wait:
        act = Activity(
            max_concurrency=LIMIT, max_pending=LIMIT, overflow=Overflow.WAIT, thread_limit=LIMIT
        )
    else:
        act = Activity(max_concurrency=LIMIT, max_pending=calls, thread_limit=LIMIT)
    async with act:
        for _ in range(calls):
            await act.asynchronous_call(blocking_noop)
        await act.wait_idle()
    return time.perf_counter() - start


async def _activity_blocking_concurrent(calls: int) -> float:
    return await _activity_blocking(calls, wait=False)


async def _activity_wait_blocking_concurrent(calls: int) -> float:
    return await _activity_blocking(calls, wait=True)


async def _to_thread_blocking_concurrent(calls: int) -> float:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=LIMIT))
    start = time.perf_counter()
    await _workers(calls, lambda: asyncio.to_thread(blocking_noop))
    return time.perf_counter() - start


async def _to_thread_spawn_blocking_concurrent(calls: int) -> float:
    """The bounded spawn of ``async_call`` around ``asyncio.to_thread``: a task per call."""
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=LIMIT))
    semaphore = asyncio.Semaphore(LIMIT)

    async def one() -> None:
        try:
            await asyncio.to_thread(blocking_noop)
        finally:
            semaphore.release()

    start = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(calls):
            await semaphore.acquire()
            tg.create_task(one())
    return time.perf_counter() - start


async def _executor_blocking_concurrent(calls: int) -> float:
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=LIMIT) as executor:
        start = time.perf_counter()
        await _workers(calls, lambda: loop.run_in_executor(executor, blocking_noop))
        elapsed = time.perf_counter() - start
    return elapsed


async def _anyio_blocking_concurrent(calls: int) -> float:
    import anyio.to_thread

    limiter = anyio.CapacityLimiter(LIMIT)
    start = time.perf_counter()
    await _workers(calls, lambda: anyio.to_thread.run_sync(blocking_noop, limiter=limiter))
    return time.perf_counter() - start


async def _activity_blocking_serial(calls: int) -> float:
    start = time.perf_counter()
    async with Activity(max_concurrency=LIMIT) as act:
        for _ in range(calls):
            await act.synchronous_call(blocking_noop)
    return time.perf_counter() - start


async def _to_thread_blocking_serial(calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        await asyncio.to_thread(blocking_noop)
    return time.perf_counter() - start


async def _executor_blocking_serial(calls: int) -> float:
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=LIMIT) as executor:
        start = time.perf_counter()
        for _ in range(calls):
            await loop.run_in_executor(executor, blocking_noop)
        elapsed = time.perf_counter() - start
    return elapsed


async def _anyio_blocking_serial(calls: int) -> float:
    import anyio.to_thread

    start = time.perf_counter()
    for _ in range(calls):
        await anyio.to_thread.run_sync(blocking_noop)
    return time.perf_counter() - start


async def _queue_thread_blocking_serial(calls: int) -> float:
    """One thread fed by a ``SimpleQueue``: the least an awaited trip to a thread costs.

    Nothing but the two wake-ups (the thread's, then the loop's) and a future:
    no context copied, no limit, no cancellation. No implementation of an
    awaited blocking call can be faster than this on the same machine.
    """
    loop = asyncio.get_running_loop()
    work: queue.SimpleQueue[asyncio.Future[None] | None] = queue.SimpleQueue()

    def serve() -> None:
        while (future := work.get()) is not None:
            blocking_noop()
            loop.call_soon_threadsafe(future.set_result, None)

    thread = threading.Thread(target=serve, name="bench-queue-thread", daemon=True)
    thread.start()
    try:
        start = time.perf_counter()
        for _ in range(calls):
            future: asyncio.Future[None] = loop.create_future()
            work.put(future)
            await future
        elapsed = time.perf_counter() - start
    finally:
        work.put(None)
        thread.join()
    return elapsed


def groups(loop: Loop, sizes: Sizes) -> list[Group]:
    """The rows of this scenario on ``loop``, at ``sizes``."""
    trio = loop == "trio"
    if trio:
        return []
    n, m = sizes.blocking_concurrent, sizes.blocking_serial
    return [
        Group(
            "blocking_concurrent",
            f"blocking callables, {LIMIT} at a time: {n:,} calls on {LIMIT} threads",
            "Plain functions run in worker threads, many in flight: what a batch of file "
            "or database calls without an async driver pays per call. The peers keep "
            f"{LIMIT} calls in flight with {LIMIT} tasks that each await one call at a time; "
            "asyncio.to_thread runs that way and as a bounded spawn (a task per call, "
            "started once the semaphore gives it a place).",
            loop,
            "us",
            (
                Pattern(ACTIVITY_WAIT, loop, "activity", n, _activity_wait_blocking_concurrent),
                Pattern(ACTIVITY_UNBOUNDED, loop, "activity", n, _activity_blocking_concurrent),
                Pattern("asyncio.to_thread", loop, "baseline", n, _to_thread_blocking_concurrent),
                Pattern(
                    "asyncio.to_thread, bounded spawn",
                    loop,
                    "baseline",
                    n,
                    _to_thread_spawn_blocking_concurrent,
                ),
                Pattern("loop.run_in_executor", loop, "peer", n, _executor_blocking_concurrent),
                Pattern("anyio.to_thread.run_sync", loop, "peer", n, _anyio_blocking_concurrent),
            ),
        ),
        Group(
            "blocking_serial",
            f"blocking callables, one at a time: {m:,} calls, each awaited",
            "The round trip to a worker thread and back for one awaited blocking call.",
            loop,
            "us",
            (
                Pattern(
                    "activity synchronous_call", loop, "activity", m, _activity_blocking_serial
                ),
                Pattern("asyncio.to_thread", loop, "baseline", m, _to_thread_blocking_serial),
                Pattern("loop.run_in_executor", loop, "peer", m, _executor_blocking_serial),
                Pattern("anyio.to_thread.run_sync", loop, "peer", m, _anyio_blocking_serial),
                Pattern(
                    "one thread fed by a SimpleQueue",
                    loop,
                    "reference",
                    m,
                    _queue_thread_blocking_serial,
                ),
            ),
        ),
    ]
