"""asynchronous_call: trivial coroutine calls at limit 100, until all are done.

What a batch job, a crawler or a fan-out pays per item to hand work to the
activity and have it run, next to the strongest ways to write the same job by
hand and with aiojobs and anyio.

``activity`` runs in two admission settings: a backlog of 100 that makes the
submitter wait when it is full (``max_pending=100, overflow=Overflow.WAIT``),
and a backlog that holds every call (``max_pending=N``, N the number of
calls).

The baselines give each call what ``activity`` gives it (a task, a copy of
the submitter's context, a cancellation of its own) with the loop's own
primitives; the targets are taken against the fastest of them, in practice
the bounded spawn: ``await semaphore.acquire()``, then a task that runs the
call and releases the semaphore (on trio, the same with a ``trio.Semaphore``
and a nursery). The naive form, a task per call parked on the semaphore,
stays as a labelled row: it creates every task at once.

aiojobs runs with a pending limit of 100 and of N, each drained by polling
``len(scheduler)`` (a job leaves the scheduler when it ends; nothing cheaper
tells that all are done) and by ``async with`` (``wait_and_close()``, which
gathers a future per job still there); its default settings stay as a
labelled naive row.

The pool of 100 workers is a reference, not a baseline: it needs no task
per call, but gives each item no handle, no context of its own, no
cancellation and no outcome. It runs fed by a queue of 100 (the submitter
waits for room, as with a backlog of 100 that waits) and by an unbounded one
(which takes every item at once, and spares the submitter a switch per item);
neither is faster on every loop, and the stretch target is taken against the
faster of the two in the run.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import TYPE_CHECKING

from activity import Activity, Overflow
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

if TYPE_CHECKING:
    from benchmarks.harness import CoroutineFunction

__all__ = [
    "ACTIVITY_UNBOUNDED",
    "ACTIVITY_WAIT",
    "activity_async_call",
    "bare_async_call",
    "groups",
    "trio_activity_async_call",
    "trio_bare_async_call",
]

#: The row of activity with a backlog of 100 that makes the submitter wait when full.
ACTIVITY_WAIT = "activity, max_pending=100, overflow=WAIT"
#: The row of activity with a backlog that holds every call.
ACTIVITY_UNBOUNDED = "activity, max_pending=N"


async def _activity_run(calls: int, body: CoroutineFunction, wait: bool) -> float:
    """``calls`` calls of ``body`` through an activity, until all are done."""
    start = time.perf_counter()
    if wait:
        act = Activity(max_concurrency=LIMIT, max_pending=LIMIT, overflow=Overflow.WAIT)
    else:
        act = Activity(max_concurrency=LIMIT, max_pending=calls)
    async with act:
        for _ in range(calls):
            await act.asynchronous_call(body)
        await act.wait_idle()
    return time.perf_counter() - start


async def activity_async_call(calls: int) -> float:
    """activity with a backlog that holds every call (``max_pending=calls``)."""
    return await _activity_run(calls, yield_once, wait=False)


async def _activity_wait_async_call(calls: int) -> float:
    return await _activity_run(calls, yield_once, wait=True)


async def _bounded_spawn_async_call(calls: int) -> float:
    """The bounded spawn: take a place, then start a task that gives it back when done.

    Never more than ``LIMIT`` tasks exist: the submitter waits for a place
    before it creates the next one.
    """
    semaphore = asyncio.Semaphore(LIMIT)

    async def one() -> None:
        try:
            await yield_once()
        finally:
            semaphore.release()

    start = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(calls):
            await semaphore.acquire()
            tg.create_task(one())
    return time.perf_counter() - start


async def bare_async_call(calls: int) -> float:
    """The naive pattern: a task per call at once, each parked on the semaphore."""
    semaphore = asyncio.Semaphore(LIMIT)

    async def one() -> None:
        async with semaphore:
            await yield_once()

    start = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(calls):
            tg.create_task(one())
    return time.perf_counter() - start


def _pool_async_call(maxsize: int) -> Body:
    """100 worker tasks fed by a queue of ``maxsize`` (0: unbounded).

    No task, no handle, no context of its own per call.
    """

    async def run(calls: int) -> float:
        return await _pool_run(calls, asyncio.Queue(maxsize))

    return run


async def _pool_run(calls: int, queue: asyncio.Queue[Thunk | None]) -> float:
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


def _aiojobs_async_call(pending_limit: int | None, poll: bool) -> Body:
    """aiojobs at limit 100 with ``pending_limit`` (None: the number of calls).

    ``poll``: wait until ``len(scheduler)`` is 0, one loop turn at a time, then
    close the scheduler; otherwise leave ``async with``, which waits for every
    job through ``wait_and_close()``.
    """

    async def run(calls: int) -> float:
        import aiojobs

        limit = calls if pending_limit is None else pending_limit
        start = time.perf_counter()
        scheduler = aiojobs.Scheduler(limit=LIMIT, pending_limit=limit)
        if poll:
            for _ in range(calls):
                await scheduler.spawn(yield_once())
            # Polling is the point: aiojobs has no event for "every job is done".
            while len(scheduler):  # noqa: ASYNC110
                await asyncio.sleep(0)
            await scheduler.close()
        else:
            async with scheduler:
                for _ in range(calls):
                    await scheduler.spawn(yield_once())
        return time.perf_counter() - start

    return run


async def _aiojobs_default_async_call(calls: int) -> float:
    """aiojobs as its README shows it: a default ``Scheduler()``, left by ``async with``."""
    import aiojobs

    start = time.perf_counter()
    async with aiojobs.Scheduler() as scheduler:
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
    """:func:`activity_async_call` on trio."""
    return await _activity_run(calls, trio_yield_once(), wait=False)


async def _trio_activity_wait_async_call(calls: int) -> float:
    return await _activity_run(calls, trio_yield_once(), wait=True)


async def _trio_bounded_spawn_async_call(calls: int) -> float:
    """:func:`_bounded_spawn_async_call` with a ``trio.Semaphore`` and a nursery."""
    import trio

    body = trio_yield_once()
    semaphore = trio.Semaphore(LIMIT)

    async def one() -> None:
        try:
            await body()
        finally:
            semaphore.release()

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(calls):
            await semaphore.acquire()
            nursery.start_soon(one)
    return time.perf_counter() - start


async def trio_bare_async_call(calls: int) -> float:
    """:func:`bare_async_call` on trio."""
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


def _trio_pool_async_call(size: float) -> Body:
    """:func:`_pool_async_call` on trio: 100 workers fed by a memory channel of ``size``."""

    async def run(calls: int) -> float:
        return await _trio_pool_run(calls, size)

    return run


async def _trio_pool_run(calls: int, size: float) -> float:
    import trio

    body = trio_yield_once()
    send, receive = trio.open_memory_channel[Thunk](size)

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
    n = sizes.async_call
    patterns: tuple[Pattern, ...]
    if loop == "trio":
        patterns = (
            Pattern(ACTIVITY_WAIT, loop, "activity", n, _trio_activity_wait_async_call),
            Pattern(ACTIVITY_UNBOUNDED, loop, "activity", n, trio_activity_async_call),
            Pattern(
                "bounded spawn: trio.Semaphore.acquire(), then nursery.start_soon",
                loop,
                "baseline",
                n,
                _trio_bounded_spawn_async_call,
            ),
            Pattern(
                "bare trio.Semaphore + nursery",
                loop,
                "baseline",
                n,
                trio_bare_async_call,
                naive=True,
            ),
            *(
                Pattern(
                    f"pool of 100 workers + memory channel({label})",
                    loop,
                    "reference",
                    n,
                    _trio_pool_async_call(size),
                )
                for label, size in (("100", LIMIT), ("inf", math.inf))
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
            Pattern(ACTIVITY_WAIT, loop, "activity", n, _activity_wait_async_call),
            Pattern(ACTIVITY_UNBOUNDED, loop, "activity", n, activity_async_call),
            Pattern(
                "bounded spawn: Semaphore.acquire(), then TaskGroup.create_task",
                loop,
                "baseline",
                n,
                _bounded_spawn_async_call,
            ),
            Pattern("bare Semaphore + TaskGroup", loop, "baseline", n, bare_async_call, naive=True),
            Pattern(
                "pool of 100 workers + Queue(100)", loop, "reference", n, _pool_async_call(LIMIT)
            ),
            Pattern("pool of 100 workers + Queue()", loop, "reference", n, _pool_async_call(0)),
            *(
                Pattern(
                    f"aiojobs Scheduler(limit=100, pending_limit={label}), {how}",
                    loop,
                    "peer",
                    n,
                    _aiojobs_async_call(pending, poll),
                )
                for label, pending in (("100", LIMIT), ("N", None))
                for how, poll in (("polled", True), ("async with", False))
            ),
            Pattern(
                "aiojobs Scheduler() with its defaults, async with",
                loop,
                "peer",
                n,
                _aiojobs_default_async_call,
                naive=True,
            ),
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
            f"asynchronous_call: N = {n:,} trivial coroutine calls at limit {LIMIT}, "
            "until all are done",
            "The cost of handing work to the activity and having it run: submission, "
            "admission, the call run in its own context, the outcome recorded. What a batch "
            "job, a crawler or a fan-out pays per item. activity runs with a backlog of 100 "
            "that makes the submitter wait (overflow=WAIT) and with one that holds every "
            "call (max_pending=N). The bounded spawn takes a place on the semaphore before "
            "it starts each task; the naive pattern starts every task at once, parked on "
            "the semaphore. aiojobs is drained by polling len(scheduler) or by async with. "
            "The pool gives no call a handle, a context or an outcome of its own.",
            loop,
            "us",
            patterns,
        )
    ]
