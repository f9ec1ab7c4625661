"""asynchronous_call: trivial coroutine calls at limit 100, until all are done.

What a batch job, a crawler or a fan-out pays per item to hand work to the
activity and have it run, next to the same work under a bare semaphore and
task group, aiojobs and anyio. The pool of 100 workers is a reference, not a
peer: it needs no task per call, but gives each item no handle, no context of
its own and no outcome.
"""

from __future__ import annotations

import asyncio
import math
import time

from activity import Activity
from benchmarks.harness import (
    LIMIT,
    Body,
    Group,
    Loop,
    Pattern,
    Sizes,
    Thunk,
    trio_yield_once,
    yield_once,
)

__all__ = [
    "activity_async_call",
    "bare_async_call",
    "groups",
    "trio_activity_async_call",
    "trio_bare_async_call",
]


async def activity_async_call(calls: int) -> float:
    start = time.perf_counter()
    async with Activity(max_concurrency=LIMIT, max_pending=calls) as act:
        for _ in range(calls):
            await act.asynchronous_call(yield_once)
        await act.wait_idle()
    return time.perf_counter() - start


async def bare_async_call(calls: int) -> float:
    semaphore = asyncio.Semaphore(LIMIT)

    async def one() -> None:
        async with semaphore:
            await yield_once()

    start = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(calls):
            tg.create_task(one())
    return time.perf_counter() - start


async def _pool_async_call(calls: int) -> float:
    queue: asyncio.Queue[Thunk | None] = asyncio.Queue()

    async def worker() -> None:
        while (fn := await queue.get()) is not None:
            await fn()

    start = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(LIMIT):
            tg.create_task(worker())
        for _ in range(calls):
            await queue.put(yield_once)
        for _ in range(LIMIT):
            await queue.put(None)
    return time.perf_counter() - start


async def _aiojobs_async_call(calls: int) -> float:
    import aiojobs

    start = time.perf_counter()
    async with aiojobs.Scheduler(limit=LIMIT, pending_limit=calls) as scheduler:
        for _ in range(calls):
            await scheduler.spawn(yield_once())
    return time.perf_counter() - start


def _anyio_async_call(body: Thunk) -> Body:
    async def run(calls: int) -> float:
        import anyio

        limiter = anyio.CapacityLimiter(LIMIT)

        async def one() -> None:
            async with limiter:
                await body()

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(calls):
                tg.start_soon(one)
        return time.perf_counter() - start

    return run


async def trio_activity_async_call(calls: int) -> float:
    body = trio_yield_once()
    start = time.perf_counter()
    async with Activity(max_concurrency=LIMIT, max_pending=calls) as act:
        for _ in range(calls):
            await act.asynchronous_call(body)
        await act.wait_idle()
    return time.perf_counter() - start


async def trio_bare_async_call(calls: int) -> float:
    import trio

    body = trio_yield_once()
    semaphore = trio.Semaphore(LIMIT)

    async def one() -> None:
        async with semaphore:
            await body()

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(calls):
            nursery.start_soon(one)
    return time.perf_counter() - start


async def _trio_pool_async_call(calls: int) -> float:
    import trio

    body = trio_yield_once()
    send, receive = trio.open_memory_channel[Thunk](math.inf)

    async def worker() -> None:
        async for fn in receive:
            await fn()

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(LIMIT):
            nursery.start_soon(worker)
        async with send:
            for _ in range(calls):
                await send.send(body)
    return time.perf_counter() - start


def groups(loop: Loop, sizes: Sizes) -> list[Group]:
    """The rows of this scenario on ``loop``, at ``sizes``."""
    trio = loop == "trio"
    patterns: tuple[Pattern, ...]
    n = sizes.async_call
    if trio:
        patterns = (
            Pattern("activity asynchronous_call", loop, "activity", n, trio_activity_async_call),
            Pattern("bare trio.Semaphore + nursery", loop, "baseline", n, trio_bare_async_call),
            Pattern(
                "pool of 100 workers + memory channel",
                loop,
                "reference",
                n,
                _trio_pool_async_call,
            ),
            Pattern(
                "anyio start_soon + CapacityLimiter",
                loop,
                "peer",
                n,
                _anyio_async_call(trio_yield_once()),
            ),
        )
    else:
        patterns = (
            Pattern("activity asynchronous_call", loop, "activity", n, activity_async_call),
            Pattern("bare Semaphore + TaskGroup", loop, "baseline", n, bare_async_call),
            Pattern("pool of 100 workers + Queue", loop, "reference", n, _pool_async_call),
            Pattern("aiojobs Scheduler(limit=100)", loop, "peer", n, _aiojobs_async_call),
            Pattern(
                "anyio start_soon + CapacityLimiter",
                loop,
                "peer",
                n,
                _anyio_async_call(yield_once),
            ),
        )
    return [
        Group(
            "async_call",
            f"asynchronous_call: {n:,} trivial coroutine calls at limit {LIMIT}, "
            "until all are done",
            "The cost of handing work to the activity and having it run: submission, "
            "admission, a task per call, the outcome recorded. What a batch job, a "
            "crawler or a fan-out pays per item.",
            loop,
            "us",
            patterns,
        )
    ]
