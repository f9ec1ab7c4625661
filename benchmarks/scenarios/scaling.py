"""Scaling: asynchronous_call until done with 10^3 to 10^6 calls queued at once.

Whether a call costs the same in a huge batch as in a small one, in time and
in memory. Two references run at the same sizes: the floor, the least any
queued call holds (a handle and a copy of its context, run by 100 workers),
whose growth is what the interpreter itself adds as the heap grows; and the
naive bare pattern (a task per call, parked on the semaphore).

The stronger patterns of ``async_call`` (the bounded spawn, the pool fed by a
bounded queue, aiojobs or activity with a backlog of 100) queue nothing: the
submitter waits for a place. They have no backlog whose growth to measure,
and do not run here.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from contextvars import copy_context
from typing import Final

from activity._backends._common import drive_in_context
from benchmarks.harness import (
    LIMIT,
    CoroutineFunction,
    Group,
    Loop,
    Pattern,
    Sizes,
    power,
    sizes_text,
    trio_yield_once,
    yield_once,
)
from benchmarks.scenarios.async_call import (
    activity_async_call,
    bare_async_call,
    trio_activity_async_call,
    trio_bare_async_call,
)
from benchmarks.scenarios.memory import activity_memory_queued, trio_activity_memory_queued

__all__ = ["SCALING_FLOOR", "groups"]

#: The scaling scenario's floor: what docs/design.md keeps per queued call, and no more.
SCALING_FLOOR: Final = "a handle and a context copy per call, 100 workers"


class _Handle:
    """What the floor of the scaling scenario keeps per queued call: a handle, a context copy."""

    __slots__ = ("context", "done", "fn", "result")

    def __init__(self, fn: CoroutineFunction) -> None:
        self.fn = fn
        self.context = copy_context()
        self.result: object = None
        self.done = False

    async def run(self) -> None:
        self.result = await drive_in_context(self.fn(), self.context)
        self.done = True


async def _drain(backlog: deque[_Handle]) -> None:
    """One of the floor's workers: run queued handles until none is left."""
    while backlog:
        await backlog.popleft().run()


async def _floor_async_call(calls: int) -> float:
    """The least a call queued under the rules of docs/design.md holds, run by a pool of workers.

    Each accepted call has a handle and a copy of its submitter's context, and
    runs in it; nothing else (no admission, no counters, no task per call).
    How its time per call grows with the backlog is what the interpreter adds
    (its cyclic garbage collector above all), for any implementation.
    """
    start = time.perf_counter()
    backlog = deque(_Handle(yield_once) for _ in range(calls))
    async with asyncio.TaskGroup() as tg:
        for _ in range(LIMIT):
            tg.create_task(_drain(backlog))
    return time.perf_counter() - start


async def _trio_floor_async_call(calls: int) -> float:
    """:func:`_floor_async_call` on trio."""
    import trio

    body = trio_yield_once()
    start = time.perf_counter()
    backlog = deque(_Handle(body) for _ in range(calls))
    async with trio.open_nursery() as nursery:
        for _ in range(LIMIT):
            nursery.start_soon(_drain, backlog)
    return time.perf_counter() - start


def groups(loop: Loop, sizes: Sizes) -> list[Group]:
    """The rows of this scenario on ``loop``, at ``sizes``."""
    trio = loop == "trio"
    limit = sizes.scaling_trio_max if trio else max(sizes.scaling)
    chosen = [size for size in sizes.scaling if size <= limit]
    big = sizes.scaling_big_repeat

    def cap(size: int) -> int | None:
        return big if size >= sizes.scaling_big else None

    time_patterns = [
        Pattern(
            f"activity, {power(size)} calls",
            loop,
            "activity",
            size,
            trio_activity_async_call if trio else activity_async_call,
            cap(size),
        )
        for size in chosen
    ]
    if sizes.scaling_floor:
        time_patterns += [
            Pattern(
                f"{SCALING_FLOOR}, {power(size)} calls",
                loop,
                "reference",
                size,
                _trio_floor_async_call if trio else _floor_async_call,
                cap(size),
            )
            for size in chosen
        ]
    if sizes.scaling_reference:
        bare_name = "bare trio.Semaphore + nursery" if trio else "bare Semaphore + TaskGroup"
        time_patterns += [
            Pattern(
                f"{bare_name}, {power(size)} calls",
                loop,
                "reference",
                size,
                trio_bare_async_call if trio else bare_async_call,
                cap(size),
                naive=True,
            )
            for size in chosen
        ]
    return [
        Group(
            "scaling",
            f"scaling: asynchronous_call until done, {sizes_text(chosen)} calls queued at once",
            "Whether a call costs the same in a small batch and in a huge one: no step of "
            "the path may grow with the backlog. Each row's ratio is to the same pattern "
            "at the smallest size. The floor keeps only what every queued call must have "
            "(a handle and a copy of its context) and runs it on 100 workers: its growth "
            "is what the interpreter itself (its garbage collector above all) adds as the "
            "heap grows, for any implementation. The same added time is a smaller ratio on "
            "a call that costs more per se, so it is no bound on activity's ratio. The "
            "bare pattern, where shown, grows with a task per call.",
            loop,
            "us",
            tuple(time_patterns),
        ),
        Group(
            "scaling_memory",
            "scaling: memory per queued call, "
            f"{sizes_text([n for n in chosen if n <= sizes.scaling_memory_max])} calls queued",
            "Whether a backlog's memory grows linearly with its length.",
            loop,
            "B",
            tuple(
                Pattern(
                    f"activity, {power(size)} calls",
                    loop,
                    "activity",
                    size,
                    trio_activity_memory_queued if trio else activity_memory_queued,
                    1 if size >= sizes.scaling_big else None,
                )
                for size in chosen
                if size <= sizes.scaling_memory_max
            ),
            sizes.memory_repeat,
        ),
    ]
