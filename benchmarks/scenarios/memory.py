"""Memory per queued call and per running parked call, measured with tracemalloc.

What a backlog costs, and what many slow calls in flight cost (each parked on
an event, as on I/O), next to a bare task (queued on a semaphore, or parked
in a task group) and aiojobs jobs. On trio, the floor of a running call is a
bare task in a cancel scope of its own.

The bare task queued on a semaphore is the naive pattern of ``async_call``;
its bounded spawn has no queued call to measure (the submitter waits for a
place before it creates a task), and a running call of it is a bare task.
"""

from __future__ import annotations

import asyncio

from activity import Activity
from benchmarks.harness import Group, Loop, Pattern, Sizes, Traced, park, settle

__all__ = ["activity_memory_queued", "groups", "trio_activity_memory_queued"]


async def activity_memory_queued(calls: int) -> float:
    release = asyncio.Event()
    traced = Traced()
    held = 0.0  # Activity.__aexit__ is typed as able to swallow an exception
    async with Activity(max_concurrency=1, max_pending=calls) as act:
        await act.asynchronous_call(park, release)  # holds the only place to run
        await settle()
        traced.start()
        for _ in range(calls):
            await act.asynchronous_call(park, release)
        held = traced.stop()
        act.cancel()  # the backlog ends CANCELLED at once instead of running one by one
    return held


async def _bare_memory_queued(calls: int) -> float:
    release = asyncio.Event()
    semaphore = asyncio.Semaphore(1)
    traced = Traced()

    async def one() -> None:
        async with semaphore:
            await park(release)

    held = 0.0
    async with asyncio.TaskGroup() as tg:
        tg.create_task(one())
        await settle()
        traced.start()
        for _ in range(calls):
            tg.create_task(one())
        await settle()
        held = traced.stop()
        release.set()
    return held


async def _aiojobs_memory_queued(calls: int) -> float:
    import aiojobs

    release = asyncio.Event()
    traced = Traced()
    # No close timeout: closing cancels every job, which takes longer than the default
    # 0.1 s for tens of thousands of them (and then logs each as timed out).
    scheduler = aiojobs.Scheduler(limit=1, pending_limit=calls, close_timeout=None)
    await scheduler.spawn(park(release))
    await settle()
    traced.start()
    for _ in range(calls):
        await scheduler.spawn(park(release))
    held = traced.stop()
    release.set()
    await scheduler.close()  # cancels the jobs instead of running them one by one
    return held


async def _activity_memory_running(calls: int) -> float:
    release = asyncio.Event()
    traced = Traced()
    held = 0.0  # Activity.__aexit__ is typed as able to swallow an exception
    async with Activity(max_concurrency=calls, max_pending=0) as act:
        traced.start()
        for _ in range(calls):
            await act.asynchronous_call(park, release)
        await settle()
        held = traced.stop()
        release.set()
    return held


async def _bare_memory_running(calls: int) -> float:
    release = asyncio.Event()
    traced = Traced()
    held = 0.0
    async with asyncio.TaskGroup() as tg:
        traced.start()
        for _ in range(calls):
            tg.create_task(park(release))
        await settle()
        held = traced.stop()
        release.set()
    return held


async def _aiojobs_memory_running(calls: int) -> float:
    import aiojobs

    release = asyncio.Event()
    traced = Traced()
    async with aiojobs.Scheduler(limit=None) as scheduler:
        traced.start()
        for _ in range(calls):
            await scheduler.spawn(park(release))
        await settle()
        held = traced.stop()
        release.set()
    return held


async def trio_activity_memory_queued(calls: int) -> float:
    import trio
    import trio.testing

    release = trio.Event()
    traced = Traced()
    held = 0.0  # Activity.__aexit__ is typed as able to swallow an exception
    async with Activity(max_concurrency=1, max_pending=calls) as act:
        await act.asynchronous_call(release.wait)
        await trio.testing.wait_all_tasks_blocked()
        traced.start()
        for _ in range(calls):
            await act.asynchronous_call(release.wait)
        held = traced.stop()
        act.cancel()
    return held


async def _trio_bare_memory_queued(calls: int) -> float:
    import trio
    import trio.testing

    release = trio.Event()
    semaphore = trio.Semaphore(1)
    traced = Traced()

    async def one() -> None:
        async with semaphore:
            await release.wait()

    held = 0.0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(one)
        await trio.testing.wait_all_tasks_blocked()
        traced.start()
        for _ in range(calls):
            nursery.start_soon(one)
        await trio.testing.wait_all_tasks_blocked()
        held = traced.stop()
        release.set()
    return held


async def _trio_activity_memory_running(calls: int) -> float:
    import trio
    import trio.testing

    release = trio.Event()
    traced = Traced()
    held = 0.0  # Activity.__aexit__ is typed as able to swallow an exception
    async with Activity(max_concurrency=calls, max_pending=0) as act:
        traced.start()
        for _ in range(calls):
            await act.asynchronous_call(release.wait)
        await trio.testing.wait_all_tasks_blocked()
        held = traced.stop()
        release.set()
    return held


async def _trio_tasks_memory_running(calls: int, scoped: bool) -> float:
    """Bytes held per bare trio task parked on an event, each in a cancel scope if ``scoped``."""
    import trio
    import trio.testing

    release = trio.Event()
    traced = Traced()

    async def in_scope() -> None:
        with trio.CancelScope():
            await release.wait()

    body = in_scope if scoped else release.wait
    held = 0.0
    async with trio.open_nursery() as nursery:
        traced.start()
        for _ in range(calls):
            nursery.start_soon(body)
        await trio.testing.wait_all_tasks_blocked()
        held = traced.stop()
        release.set()
    return held


async def _trio_bare_memory_running(calls: int) -> float:
    return await _trio_tasks_memory_running(calls, scoped=False)


async def _trio_scoped_memory_running(calls: int) -> float:
    """A bare task in a cancel scope of its own: the least a call that trio can cancel alone holds.

    trio cancels only through cancel scopes, so a call that can be cancelled
    without its neighbours (``Call.cancel()``, a timeout) runs in one.
    """
    return await _trio_tasks_memory_running(calls, scoped=True)


def groups(loop: Loop, sizes: Sizes) -> list[Group]:
    """The rows of this scenario on ``loop``, at ``sizes``."""
    trio = loop == "trio"
    queued: tuple[Pattern, ...]
    running: tuple[Pattern, ...]
    n = sizes.memory
    if trio:
        queued = (
            Pattern("activity queued call", loop, "activity", n, trio_activity_memory_queued),
            Pattern(
                "bare task waiting on a trio.Semaphore",
                loop,
                "baseline",
                n,
                _trio_bare_memory_queued,
                naive=True,
            ),
        )
        running = (
            Pattern("activity running call", loop, "activity", n, _trio_activity_memory_running),
            Pattern("bare task in a nursery", loop, "baseline", n, _trio_bare_memory_running),
            Pattern(
                "bare task in a cancel scope of its own",
                loop,
                "reference",
                n,
                _trio_scoped_memory_running,
            ),
        )
    else:
        queued = (
            Pattern("activity queued call", loop, "activity", n, activity_memory_queued),
            Pattern(
                "bare task waiting on a Semaphore",
                loop,
                "baseline",
                n,
                _bare_memory_queued,
                naive=True,
            ),
            Pattern("aiojobs pending job", loop, "peer", n, _aiojobs_memory_queued),
        )
        running = (
            Pattern("activity running call", loop, "activity", n, _activity_memory_running),
            Pattern("bare task in a TaskGroup", loop, "baseline", n, _bare_memory_running),
            Pattern("aiojobs running job", loop, "peer", n, _aiojobs_memory_running),
        )
    return [
        Group(
            "memory_queued",
            f"memory per queued call: {n:,} calls waiting for a place (tracemalloc)",
            "What a backlog costs: the bytes held per accepted call that waits its turn.",
            loop,
            "B",
            queued,
            sizes.memory_repeat,
        ),
        Group(
            "memory_running",
            f"memory per running parked call: {n:,} calls awaiting an event (tracemalloc)",
            "What many slow calls in flight cost (each parked on I/O, here an event).",
            loop,
            "B",
            running,
            sizes.memory_repeat,
        ),
    ]
