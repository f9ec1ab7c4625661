"""The benchmark behind ``python -m activity bench``: activity against what users already have.

Each scenario runs ``activity`` and the patterns a user would otherwise write
(a bare ``asyncio.Semaphore`` + ``asyncio.TaskGroup``, aiojobs, anyio task
groups, ``asyncio.to_thread``...) in one process, interleaved: every
repetition runs every row once, in turn, so that a change in the machine's
load falls on all rows alike. A row's figure is the median of its
repetitions; its ratio is to the bare pattern of the same scenario and loop in
the same run. Compare ratios, not absolute times, between machines or runs.

Every sample runs in a fresh event loop, after a garbage collection, and
times only the work (the loop's creation and teardown are outside). The
trivial coroutine awaits ``sleep(0)`` once: it gives the loop a turn, as any
real call does, so the limit of 100 binds (a body that never yields would run
to its end before the next call starts, and no pattern would bound anything).

The peers are imported only when their rows run; they come with the ``bench``
extra (``pip install 'activity[bench]'``: aiojobs, uvloop, trio). A row whose
peer is missing is left out, and the output says so.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import platform
import queue
import statistics
import sys
import threading
import time
import tracemalloc
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias

from ._activity import Activity
from ._dispatch import drive_in_context

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    _Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["add_arguments", "add_bench_command", "main", "run"]

#: The concurrency limit of every scenario (running calls, threads, jobs).
LIMIT: Final = 100

Loop = Literal["asyncio", "uvloop", "trio"]
Unit = Literal["us", "B"]
Role = Literal["activity", "baseline", "peer", "reference"]
#: Runs one sample of ``calls`` calls on the running loop; returns seconds, or bytes.
Body = Callable[[int], Coroutine[Any, Any, float]]
Thunk = Callable[[], Awaitable[object]]
CoroutineFunction = Callable[[], Coroutine[Any, Any, object]]

#: The scaling scenario's floor: what DESIGN keeps per queued call, and no more.
SCALING_FLOOR: Final = "a handle and a context copy per call, 100 workers"
LOOPS: Final[tuple[Loop, ...]] = ("asyncio", "uvloop", "trio")
SCENARIOS: Final = ("async_call", "sync_call", "blocking", "memory", "scaling")


@dataclass(frozen=True, slots=True)
class Sizes:
    """How many calls each scenario makes, and how many repetitions it gets."""

    async_call: int = 20_000
    sync_call: int = 20_000
    blocking_concurrent: int = 5_000
    blocking_serial: int = 2_000
    memory: int = 50_000
    scaling: tuple[int, ...] = (1_000, 10_000, 100_000, 1_000_000)
    #: The largest scaling size on trio, whose activity runs an anyio task per call.
    scaling_trio_max: int = 100_000
    #: The largest size whose memory is measured (tracemalloc slows allocations down).
    scaling_memory_max: int = 1_000_000
    #: Repetitions of the scaling rows of ``scaling_big`` calls or more.
    scaling_big_repeat: int = 3
    scaling_big: int = 1_000_000
    #: Repetitions of the memory rows (None: as many as the others); their figures
    #: are deterministic to a few bytes.
    memory_repeat: int | None = 3
    #: Whether the scaling scenario also runs the bare pattern at each size.
    scaling_reference: bool = True
    #: Whether it runs the floor (a handle and a context copy per call) at each size.
    scaling_floor: bool = True

    def scaled(self, factor: float) -> Sizes:
        """Every call count multiplied by ``factor`` (at least one call)."""

        def n(value: int) -> int:
            return max(1, round(value * factor))

        return Sizes(
            async_call=n(self.async_call),
            sync_call=n(self.sync_call),
            blocking_concurrent=n(self.blocking_concurrent),
            blocking_serial=n(self.blocking_serial),
            memory=n(self.memory),
            scaling=tuple(dict.fromkeys(n(size) for size in self.scaling)),
            scaling_trio_max=n(self.scaling_trio_max),
            scaling_memory_max=n(self.scaling_memory_max),
            scaling_big_repeat=self.scaling_big_repeat,
            scaling_big=n(self.scaling_big),
            memory_repeat=self.memory_repeat,
            scaling_reference=self.scaling_reference,
            scaling_floor=self.scaling_floor,
        )


FULL: Final = Sizes()
QUICK: Final = Sizes(
    async_call=3_000,
    sync_call=3_000,
    blocking_concurrent=800,
    blocking_serial=300,
    memory=2_000,
    scaling=(1_000, 10_000, 100_000),
    scaling_trio_max=10_000,
    scaling_memory_max=10_000,
    scaling_big_repeat=1,
    scaling_big=100_000,
    memory_repeat=1,
    scaling_reference=False,
)


# -- the rows ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pattern:
    """One row of a scenario: what runs, on which loop, and how it is compared."""

    name: str
    loop: Loop
    role: Role
    calls: int
    body: Body
    repeat: int | None = None


@dataclass(frozen=True, slots=True)
class Group:
    """The rows of one scenario on one loop, interleaved and compared with each other."""

    scenario: str
    title: str
    meaning: str
    loop: Loop
    unit: Unit
    patterns: tuple[Pattern, ...]
    #: At most this many repetitions for every row (None: as many as asked).
    repeat: int | None = None


@dataclass(slots=True)
class Row:
    """The measured figures of one pattern."""

    scenario: str
    loop: Loop
    pattern: str
    role: Role
    calls: int
    unit: Unit
    samples: list[float] = field(default_factory=list[float])
    baseline: str | None = None
    ratio: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def per_second(self) -> float | None:
        return 1e6 / self.median if self.unit == "us" and self.median > 0 else None

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "loop": self.loop,
            "pattern": self.pattern,
            "role": self.role,
            "calls": self.calls,
            "unit": self.unit,
            "median": self.median,
            "min": min(self.samples),
            "max": max(self.samples),
            "per_second": self.per_second,
            "baseline": self.baseline,
            "ratio": self.ratio,
            "samples": self.samples,
        }


# -- asyncio and uvloop bodies -----------------------------------------------------------------


async def _yield_once() -> None:
    await asyncio.sleep(0)


async def _park(event: asyncio.Event) -> None:
    await event.wait()


def _blocking_noop() -> None:
    return None


async def _activity_async_call(calls: int) -> float:
    start = time.perf_counter()
    async with Activity(max_concurrency=LIMIT, max_pending=calls) as act:
        for _ in range(calls):
            await act.asynchronous_call(_yield_once)
        await act.wait_idle()
    return time.perf_counter() - start


async def _bare_async_call(calls: int) -> float:
    semaphore = asyncio.Semaphore(LIMIT)

    async def one() -> None:
        async with semaphore:
            await _yield_once()

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
            await queue.put(_yield_once)
        for _ in range(LIMIT):
            await queue.put(None)
    return time.perf_counter() - start


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
    """The least a call queued under DESIGN's rules holds, run by a pool of workers.

    Each accepted call has a handle and a copy of its submitter's context, and
    runs in it; nothing else (no admission, no counters, no task per call).
    How its time per call grows with the backlog is what the interpreter adds
    (its cyclic garbage collector above all), for any implementation.
    """
    start = time.perf_counter()
    backlog = deque(_Handle(_yield_once) for _ in range(calls))
    async with asyncio.TaskGroup() as tg:
        for _ in range(LIMIT):
            tg.create_task(_drain(backlog))
    return time.perf_counter() - start


async def _aiojobs_async_call(calls: int) -> float:
    import aiojobs

    start = time.perf_counter()
    async with aiojobs.Scheduler(limit=LIMIT, pending_limit=calls) as scheduler:
        for _ in range(calls):
            await scheduler.spawn(_yield_once())
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


async def _activity_sync_call(calls: int) -> float:
    start = time.perf_counter()
    async with Activity(max_concurrency=LIMIT) as act:
        for _ in range(calls):
            await act.synchronous_call(_yield_once)
    return time.perf_counter() - start


async def _bare_sync_call(calls: int) -> float:
    semaphore = asyncio.Semaphore(LIMIT)
    start = time.perf_counter()
    for _ in range(calls):
        async with semaphore:
            await _yield_once()
    return time.perf_counter() - start


async def _isolated_awaits(
    calls: int, semaphore: AbstractAsyncContextManager[Any], body: CoroutineFunction
) -> float:
    """The bare await, in a copy of the context of its own: what isolation alone costs.

    A coroutine awaited in its caller's task sees its own context only if each
    of its steps runs in it; this is the least that DESIGN's context rule
    (every call in a copy of its submitter's context) costs, with none of the
    activity's bookkeeping.
    """
    start = time.perf_counter()
    for _ in range(calls):
        async with semaphore:
            await drive_in_context(body(), copy_context())
    return time.perf_counter() - start


async def _isolated_sync_call(calls: int) -> float:
    """:func:`_isolated_awaits` under an ``asyncio.Semaphore``."""
    return await _isolated_awaits(calls, asyncio.Semaphore(LIMIT), _yield_once)


async def _workers(calls: int, call: Thunk) -> None:
    """Keep ``LIMIT`` calls in flight: one task per place, each awaiting a call at a time."""
    todo = iter(range(calls))

    async def worker() -> None:
        for _ in todo:
            await call()

    async with asyncio.TaskGroup() as tg:
        for _ in range(min(LIMIT, calls)):
            tg.create_task(worker())


async def _activity_blocking_concurrent(calls: int) -> float:
    start = time.perf_counter()
    async with Activity(max_concurrency=LIMIT, max_pending=calls, thread_limit=LIMIT) as act:
        for _ in range(calls):
            await act.asynchronous_call(_blocking_noop)
        await act.wait_idle()
    return time.perf_counter() - start


async def _to_thread_blocking_concurrent(calls: int) -> float:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=LIMIT))
    start = time.perf_counter()
    await _workers(calls, lambda: asyncio.to_thread(_blocking_noop))
    return time.perf_counter() - start


async def _executor_blocking_concurrent(calls: int) -> float:
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=LIMIT) as executor:
        start = time.perf_counter()
        await _workers(calls, lambda: loop.run_in_executor(executor, _blocking_noop))
        elapsed = time.perf_counter() - start
    return elapsed


async def _anyio_blocking_concurrent(calls: int) -> float:
    import anyio.to_thread

    limiter = anyio.CapacityLimiter(LIMIT)
    start = time.perf_counter()
    await _workers(calls, lambda: anyio.to_thread.run_sync(_blocking_noop, limiter=limiter))
    return time.perf_counter() - start


async def _activity_blocking_serial(calls: int) -> float:
    start = time.perf_counter()
    async with Activity(max_concurrency=LIMIT) as act:
        for _ in range(calls):
            await act.synchronous_call(_blocking_noop)
    return time.perf_counter() - start


async def _to_thread_blocking_serial(calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        await asyncio.to_thread(_blocking_noop)
    return time.perf_counter() - start


async def _executor_blocking_serial(calls: int) -> float:
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=LIMIT) as executor:
        start = time.perf_counter()
        for _ in range(calls):
            await loop.run_in_executor(executor, _blocking_noop)
        elapsed = time.perf_counter() - start
    return elapsed


async def _anyio_blocking_serial(calls: int) -> float:
    import anyio.to_thread

    start = time.perf_counter()
    for _ in range(calls):
        await anyio.to_thread.run_sync(_blocking_noop)
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
            _blocking_noop()
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


class _Traced:
    """Bytes allocated (and still held) between ``start()`` and ``bytes()``."""

    __slots__ = ("_before",)

    def __init__(self) -> None:
        self._before = 0

    def start(self) -> None:
        gc.collect()
        tracemalloc.start()
        self._before = tracemalloc.get_traced_memory()[0]

    def stop(self) -> float:
        held = tracemalloc.get_traced_memory()[0] - self._before
        tracemalloc.stop()
        return float(held)


async def _settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def _activity_memory_queued(calls: int) -> float:
    release = asyncio.Event()
    traced = _Traced()
    held = 0.0  # Activity.__aexit__ is typed as able to swallow an exception
    async with Activity(max_concurrency=1, max_pending=calls) as act:
        await act.asynchronous_call(_park, release)  # holds the only place to run
        await _settle()
        traced.start()
        for _ in range(calls):
            await act.asynchronous_call(_park, release)
        held = traced.stop()
        act.cancel()  # the backlog ends CANCELLED at once instead of running one by one
    return held


async def _bare_memory_queued(calls: int) -> float:
    release = asyncio.Event()
    semaphore = asyncio.Semaphore(1)
    traced = _Traced()

    async def one() -> None:
        async with semaphore:
            await _park(release)

    held = 0.0
    async with asyncio.TaskGroup() as tg:
        tg.create_task(one())
        await _settle()
        traced.start()
        for _ in range(calls):
            tg.create_task(one())
        await _settle()
        held = traced.stop()
        release.set()
    return held


async def _aiojobs_memory_queued(calls: int) -> float:
    import aiojobs

    release = asyncio.Event()
    traced = _Traced()
    # No close timeout: closing cancels every job, which takes longer than the default
    # 0.1 s for tens of thousands of them (and then logs each as timed out).
    scheduler = aiojobs.Scheduler(limit=1, pending_limit=calls, close_timeout=None)
    await scheduler.spawn(_park(release))
    await _settle()
    traced.start()
    for _ in range(calls):
        await scheduler.spawn(_park(release))
    held = traced.stop()
    release.set()
    await scheduler.close()  # cancels the jobs instead of running them one by one
    return held


async def _activity_memory_running(calls: int) -> float:
    release = asyncio.Event()
    traced = _Traced()
    held = 0.0  # Activity.__aexit__ is typed as able to swallow an exception
    async with Activity(max_concurrency=calls, max_pending=0) as act:
        traced.start()
        for _ in range(calls):
            await act.asynchronous_call(_park, release)
        await _settle()
        held = traced.stop()
        release.set()
    return held


async def _bare_memory_running(calls: int) -> float:
    release = asyncio.Event()
    traced = _Traced()
    held = 0.0
    async with asyncio.TaskGroup() as tg:
        traced.start()
        for _ in range(calls):
            tg.create_task(_park(release))
        await _settle()
        held = traced.stop()
        release.set()
    return held


async def _aiojobs_memory_running(calls: int) -> float:
    import aiojobs

    release = asyncio.Event()
    traced = _Traced()
    async with aiojobs.Scheduler(limit=None) as scheduler:
        traced.start()
        for _ in range(calls):
            await scheduler.spawn(_park(release))
        await _settle()
        held = traced.stop()
        release.set()
    return held


# -- trio bodies ---------------------------------------------------------------------------------


def _trio_yield_once() -> CoroutineFunction:
    import trio

    async def yield_once() -> None:
        await trio.lowlevel.checkpoint()

    return yield_once


async def _trio_activity_async_call(calls: int) -> float:
    body = _trio_yield_once()
    start = time.perf_counter()
    async with Activity(max_concurrency=LIMIT, max_pending=calls) as act:
        for _ in range(calls):
            await act.asynchronous_call(body)
        await act.wait_idle()
    return time.perf_counter() - start


async def _trio_bare_async_call(calls: int) -> float:
    import trio

    body = _trio_yield_once()
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

    body = _trio_yield_once()
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


async def _trio_floor_async_call(calls: int) -> float:
    """:func:`_floor_async_call` on trio."""
    import trio

    body = _trio_yield_once()
    start = time.perf_counter()
    backlog = deque(_Handle(body) for _ in range(calls))
    async with trio.open_nursery() as nursery:
        for _ in range(LIMIT):
            nursery.start_soon(_drain, backlog)
    return time.perf_counter() - start


async def _trio_activity_sync_call(calls: int) -> float:
    body = _trio_yield_once()
    start = time.perf_counter()
    async with Activity(max_concurrency=LIMIT) as act:
        for _ in range(calls):
            await act.synchronous_call(body)
    return time.perf_counter() - start


async def _trio_bare_sync_call(calls: int) -> float:
    import trio

    body = _trio_yield_once()
    semaphore = trio.Semaphore(LIMIT)
    start = time.perf_counter()
    for _ in range(calls):
        async with semaphore:
            await body()
    return time.perf_counter() - start


async def _trio_isolated_sync_call(calls: int) -> float:
    """:func:`_isolated_awaits` under a ``trio.Semaphore``."""
    import trio

    return await _isolated_awaits(calls, trio.Semaphore(LIMIT), _trio_yield_once())


async def _trio_activity_memory_queued(calls: int) -> float:
    import trio
    import trio.testing

    release = trio.Event()
    traced = _Traced()
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
    traced = _Traced()

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
    traced = _Traced()
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
    traced = _Traced()

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


# -- the scenarios -----------------------------------------------------------------------------


def _groups(sizes: Sizes, loops: Sequence[Loop], scenarios: Sequence[str]) -> list[Group]:
    groups: list[Group] = []
    for scenario in scenarios:
        for loop in loops:
            groups.extend(_scenario_groups(scenario, loop, sizes))
    return groups


def _scenario_groups(scenario: str, loop: Loop, sizes: Sizes) -> list[Group]:
    trio = loop == "trio"
    patterns: tuple[Pattern, ...]
    queued: tuple[Pattern, ...]
    running: tuple[Pattern, ...]
    if scenario == "async_call":
        n = sizes.async_call
        if trio:
            patterns = (
                Pattern(
                    "activity asynchronous_call", loop, "activity", n, _trio_activity_async_call
                ),
                Pattern(
                    "bare trio.Semaphore + nursery", loop, "baseline", n, _trio_bare_async_call
                ),
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
                    _anyio_async_call(_trio_yield_once()),
                ),
            )
        else:
            patterns = (
                Pattern("activity asynchronous_call", loop, "activity", n, _activity_async_call),
                Pattern("bare Semaphore + TaskGroup", loop, "baseline", n, _bare_async_call),
                Pattern("pool of 100 workers + Queue", loop, "reference", n, _pool_async_call),
                Pattern("aiojobs Scheduler(limit=100)", loop, "peer", n, _aiojobs_async_call),
                Pattern(
                    "anyio start_soon + CapacityLimiter",
                    loop,
                    "peer",
                    n,
                    _anyio_async_call(_yield_once),
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
    if scenario == "sync_call":
        n = sizes.sync_call
        if trio:
            patterns = (
                Pattern("activity synchronous_call", loop, "activity", n, _trio_activity_sync_call),
                Pattern(
                    "bare await under a trio.Semaphore", loop, "baseline", n, _trio_bare_sync_call
                ),
                Pattern(
                    "bare await in its own context copy, under a trio.Semaphore",
                    loop,
                    "reference",
                    n,
                    _trio_isolated_sync_call,
                ),
            )
        else:
            patterns = (
                Pattern("activity synchronous_call", loop, "activity", n, _activity_sync_call),
                Pattern("bare await under a Semaphore", loop, "baseline", n, _bare_sync_call),
                Pattern(
                    "bare await in its own context copy, under a Semaphore",
                    loop,
                    "reference",
                    n,
                    _isolated_sync_call,
                ),
            )
        return [
            Group(
                "sync_call",
                f"synchronous_call: {n:,} trivial coroutine calls, one after another",
                "The latency the activity adds to one awaited call: what a request handler "
                "pays to run a step inside the activity rather than await it directly.",
                loop,
                "us",
                patterns,
            )
        ]
    if scenario == "blocking":
        if trio:
            return []
        n, m = sizes.blocking_concurrent, sizes.blocking_serial
        return [
            Group(
                "blocking_concurrent",
                f"blocking callables, {LIMIT} at a time: {n:,} calls on {LIMIT} threads",
                "Plain functions run in worker threads, many in flight: what a batch of file "
                "or database calls without an async driver pays per call. The peers keep "
                f"{LIMIT} calls in flight with {LIMIT} tasks that each await one call at a time.",
                loop,
                "us",
                (
                    Pattern(
                        "activity asynchronous_call",
                        loop,
                        "activity",
                        n,
                        _activity_blocking_concurrent,
                    ),
                    Pattern(
                        "asyncio.to_thread", loop, "baseline", n, _to_thread_blocking_concurrent
                    ),
                    Pattern("loop.run_in_executor", loop, "peer", n, _executor_blocking_concurrent),
                    Pattern(
                        "anyio.to_thread.run_sync", loop, "peer", n, _anyio_blocking_concurrent
                    ),
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
    if scenario == "memory":
        n = sizes.memory
        if trio:
            queued = (
                Pattern("activity queued call", loop, "activity", n, _trio_activity_memory_queued),
                Pattern(
                    "bare task waiting on a trio.Semaphore",
                    loop,
                    "baseline",
                    n,
                    _trio_bare_memory_queued,
                ),
            )
            running = (
                Pattern(
                    "activity running call", loop, "activity", n, _trio_activity_memory_running
                ),
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
                Pattern("activity queued call", loop, "activity", n, _activity_memory_queued),
                Pattern(
                    "bare task waiting on a Semaphore", loop, "baseline", n, _bare_memory_queued
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
    if scenario == "scaling":
        limit = sizes.scaling_trio_max if trio else max(sizes.scaling)
        chosen = [size for size in sizes.scaling if size <= limit]
        big = sizes.scaling_big_repeat

        def cap(size: int) -> int | None:
            return big if size >= sizes.scaling_big else None

        time_patterns = [
            Pattern(
                f"activity, {_power(size)} calls",
                loop,
                "activity",
                size,
                _trio_activity_async_call if trio else _activity_async_call,
                cap(size),
            )
            for size in chosen
        ]
        if sizes.scaling_floor:
            time_patterns += [
                Pattern(
                    f"{SCALING_FLOOR}, {_power(size)} calls",
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
                    f"{bare_name}, {_power(size)} calls",
                    loop,
                    "reference",
                    size,
                    _trio_bare_async_call if trio else _bare_async_call,
                    cap(size),
                )
                for size in chosen
            ]
        return [
            Group(
                "scaling",
                f"scaling: asynchronous_call until done, {_sizes_text(chosen)} calls "
                "queued at once",
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
                f"{_sizes_text([n for n in chosen if n <= sizes.scaling_memory_max])} calls queued",
                "Whether a backlog's memory grows linearly with its length.",
                loop,
                "B",
                tuple(
                    Pattern(
                        f"activity, {_power(size)} calls",
                        loop,
                        "activity",
                        size,
                        _trio_activity_memory_queued if trio else _activity_memory_queued,
                        1 if size >= sizes.scaling_big else None,
                    )
                    for size in chosen
                    if size <= sizes.scaling_memory_max
                ),
                sizes.memory_repeat,
            ),
        ]
    raise ValueError(f"unknown scenario {scenario!r}")


def _power(size: int) -> str:
    exponent = math.log10(size) if size > 0 else 0.0
    if exponent == int(exponent) and size >= 1000:
        return f"10^{int(exponent)}"
    return f"{size:,}"


def _sizes_text(sizes: Sequence[int]) -> str:
    return ", ".join(_power(size) for size in sizes)


# -- running -------------------------------------------------------------------------------------


def _sample(pattern: Pattern) -> float:
    """Run ``pattern`` once in a fresh loop; return its figure per call (µs or bytes)."""
    gc.collect()
    if pattern.loop == "trio":
        import trio

        total = trio.run(pattern.body, pattern.calls)
    else:
        factory: Callable[[], asyncio.AbstractEventLoop] | None = None
        if pattern.loop == "uvloop":
            import uvloop

            factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            total = runner.run(pattern.body(pattern.calls))
    return total / pattern.calls


def _measure(group: Group, repeat: int, log: Callable[[str], None]) -> list[Row]:
    rows = [
        Row(group.scenario, group.loop, p.name, p.role, p.calls, group.unit) for p in group.patterns
    ]
    scale = 1e6 if group.unit == "us" else 1.0
    started = time.perf_counter()
    # A short warm-up run of each row: imports, caches and thread start-up are not measured.
    for pattern in group.patterns:
        warm = Pattern(
            pattern.name, pattern.loop, pattern.role, min(pattern.calls, 500), pattern.body
        )
        _sample(warm)
    if group.repeat is not None:
        repeat = min(repeat, group.repeat)
    for index in range(repeat):
        order = list(zip(group.patterns, rows, strict=True))
        # Rotate the order each repetition: no row always runs right after the same one.
        shift = index % len(order)
        for pattern, row in order[shift:] + order[:shift]:
            if pattern.repeat is not None and len(row.samples) >= pattern.repeat:
                continue
            row.samples.append(_sample(pattern) * scale)
    for row in rows:
        baseline = _baseline_of(row, rows)
        row.baseline = baseline.pattern
        row.ratio = row.median / baseline.median if baseline.median > 0 else None
    log(f"  {group.scenario} on {group.loop}: {time.perf_counter() - started:.1f} s")
    return rows


def _baseline_of(row: Row, rows: Sequence[Row]) -> Row:
    """The bare pattern of the group; in scaling, the same pattern at the smallest size."""
    if row.scenario.startswith("scaling"):
        family = row.pattern.rpartition(", ")[0]
        return next(other for other in rows if other.pattern.rpartition(", ")[0] == family)
    return next((other for other in rows if other.role == "baseline"), rows[0])


def _available_loops(requested: str, notes: list[str]) -> list[Loop]:
    wanted: list[Loop] = list(LOOPS) if requested == "all" else [requested]  # type: ignore[list-item]
    chosen: list[Loop] = []
    for loop in wanted:
        if loop == "asyncio":
            chosen.append(loop)
            continue
        try:
            __import__(loop)
        except ImportError:
            notes.append(
                f"{loop} is not installed, its rows are left out: pip install 'activity[bench]'"
            )
            continue
        chosen.append(loop)
    return chosen


def _drop_missing(group: Group, notes: list[str]) -> Group:
    kept: list[Pattern] = []
    for pattern in group.patterns:
        if pattern.role == "peer" and "aiojobs" in pattern.name:
            try:
                __import__("aiojobs")
            except ImportError:
                note = (
                    "aiojobs is not installed, its rows are left out: pip install 'activity[bench]'"
                )
                if note not in notes:
                    notes.append(note)
                continue
        kept.append(pattern)
    return Group(group.scenario, group.title, group.meaning, group.loop, group.unit, tuple(kept))


# -- targets ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """One goal of the hot path, checked against the figures of this run."""

    goal: str
    loop: Loop
    value: float
    limit: float
    at_most: bool
    #: The same ratio with the scenario's floor (a reference row that does only
    #: what the goal's semantics need) in place of activity, where it has one.
    floor: float | None = None

    @property
    def met(self) -> bool:
        return self.value <= self.limit if self.at_most else self.value >= self.limit

    def as_json(self) -> dict[str, Any]:
        return {
            "goal": self.goal,
            "loop": self.loop,
            "value": self.value,
            "limit": self.limit,
            "at_most": self.at_most,
            "met": self.met,
            "floor": self.floor,
        }


def _targets(rows: Sequence[Row]) -> list[Target]:
    def find(scenario: str, loop: Loop, role: Role, name: str = "") -> Row | None:
        for row in rows:
            if (row.scenario, row.loop, row.role) == (scenario, loop, role) and name in row.pattern:
                return row
        return None

    targets: list[Target] = []

    def ratio(
        goal: str,
        loop: Loop,
        top: Row | None,
        bottom: Row | None,
        limit: float,
        at_most: bool = True,
        floor: Row | None = None,
    ) -> None:
        """Add ``top / bottom`` as a target; ``floor`` stands for activity in its floor ratio."""
        if top is None or bottom is None or bottom.median <= 0:
            return
        floor_ratio = None
        if floor is not None and floor.median > 0:
            # activity is the top of an "at most" ratio, the bottom of an "at least" one.
            floor_ratio = floor.median / bottom.median if at_most else top.median / floor.median
        targets.append(Target(goal, loop, top.median / bottom.median, limit, at_most, floor_ratio))

    for loop in LOOPS:
        act = find("async_call", loop, "activity")
        ratio(
            "asynchronous_call ≤ 1.2x bare Semaphore + task group",
            loop,
            act,
            find("async_call", loop, "baseline"),
            1.2,
        )
        ratio(
            "asynchronous_call ≤ 1.0x pool of 100 workers (stretch)",
            loop,
            act,
            find("async_call", loop, "reference"),
            1.0,
        )
        ratio(
            "asynchronous_call ≥ 1.4x faster than aiojobs",
            loop,
            find("async_call", loop, "peer", "aiojobs"),
            act,
            1.4,
            at_most=False,
        )
        ratio(
            "synchronous_call ≤ 1.5x bare awaited call under a semaphore",
            loop,
            find("sync_call", loop, "activity"),
            find("sync_call", loop, "baseline"),
            1.5,
            floor=find("sync_call", loop, "reference"),
        )
        for scenario, how in (
            ("blocking_concurrent", "100 at a time"),
            ("blocking_serial", "one at a time"),
        ):
            act = find(scenario, loop, "activity")
            floor = find(scenario, loop, "reference")
            ratio(
                f"blocking, {how}, ≤ 1.1x asyncio.to_thread",
                loop,
                act,
                find(scenario, loop, "baseline"),
                1.1,
                floor=floor,
            )
            ratio(
                f"blocking, {how}, ≥ 1.5x faster than anyio.to_thread.run_sync",
                loop,
                find(scenario, loop, "peer", "anyio"),
                act,
                1.5,
                at_most=False,
                floor=floor,
            )
        queued = find("memory_queued", loop, "activity")
        if queued is not None:
            targets.append(Target("a queued call ≤ 600 bytes", loop, queued.median, 600, True))
        ratio(
            "a running parked call ≤ 1.3x a bare task",
            loop,
            find("memory_running", loop, "activity"),
            find("memory_running", loop, "baseline"),
            1.3,
            floor=find("memory_running", loop, "reference"),
        )
        scaling = [
            row
            for row in rows
            if row.scenario == "scaling" and row.loop == loop and row.role == "activity"
        ]
        if len(scaling) > 1:
            medians = [row.median for row in scaling]
            # No floor figure: the floor's growth is the interpreter's, and a call that
            # costs more per se shows the same growth as a smaller ratio; it is no bound.
            targets.append(
                Target(
                    f"µs/call flat within 20% from {scaling[0].pattern.split(', ')[1]} to "
                    f"{scaling[-1].pattern.split(', ')[1]} (slowest / fastest)",
                    loop,
                    max(medians) / min(medians),
                    1.2,
                    True,
                )
            )
    return targets


# -- output ---------------------------------------------------------------------------------------


def _format_number(value: float, unit: Unit) -> str:
    if unit == "B":
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def render(result: dict[str, Any]) -> str:
    """The figures of a run as Markdown: one table per scenario, then the targets."""
    lines: list[str] = []
    env = result["environment"]
    lines.append(f"`{result['command']}`")
    lines.append("")
    lines.append(
        f"Python {env['python']} on {env['platform']}, {env['cpus']} CPUs; "
        + ", ".join(f"{name} {version}" for name, version in env["versions"].items())
        + f"; load average {env['load_before']} before, {env['load_after']} after; "
        f"{result['repeat']} repetitions, median; {result['seconds']:.0f} s in all."
    )
    lines.extend(f"- {note}" for note in result["notes"])
    rows = [Row(**{k: v for k, v in row.items() if k in _ROW_FIELDS}) for row in result["rows"]]
    seen: list[str] = []
    for group in result["groups"]:
        scenario = group["scenario"]
        if scenario in seen:
            continue
        seen.append(scenario)
        unit: Unit = group["unit"]
        lines.append("")
        lines.append(f"### {group['title']}")
        lines.append("")
        lines.append(group["meaning"])
        lines.append("")
        if unit == "us":
            lines.append("| loop | pattern | µs/call | calls/s | min-max µs | ratio |")
            lines.append("|---|---|---:|---:|---:|---:|")
        else:
            lines.append("| loop | pattern | bytes/call | min-max bytes | ratio |")
            lines.append("|---|---|---:|---:|---:|")
        for row in rows:
            if row.scenario != scenario:
                continue
            spread = (
                f"{_format_number(min(row.samples), unit)}-{_format_number(max(row.samples), unit)}"
            )
            ratio = "" if row.ratio is None else f"{row.ratio:.2f}x"
            name = f"**{row.pattern}**" if row.role == "activity" else row.pattern
            if row.role == "reference":
                name += " (reference)"
            cells = [row.loop, name, _format_number(row.median, unit)]
            if unit == "us":
                per_second = row.per_second
                cells.append("" if per_second is None else f"{per_second:,.0f}")
            cells += [spread, ratio]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if scenario.startswith("scaling"):
            lines.append("Ratio: to the same pattern at the smallest size, on the same loop.")
        else:
            baseline = next((r.baseline for r in rows if r.scenario == scenario), None)
            lines.append(f"Ratio: to *{baseline}* on the same loop in the same run.")
    if result["targets"]:
        lines.append("")
        lines.append("### Targets")
        lines.append("")
        lines.append("| goal | loop | measured | limit | met | floor |")
        lines.append("|---|---|---:|---:|:---:|---:|")
        for target in result["targets"]:
            if "bytes" in target["goal"]:
                value, limit = f"{target['value']:,.0f} B", f"{target['limit']:,.0f} B"
            else:
                value, limit = f"{target['value']:.2f}x", f"{target['limit']:g}x"
            met = "yes" if target["met"] else "**no**"
            floor = target.get("floor")
            floor_text = "" if floor is None else f"{floor:.2f}x"
            lines.append(
                f"| {target['goal']} | {target['loop']} | {value} | {limit} | {met} "
                f"| {floor_text} |"
            )
        lines.append("")
        lines.append(
            "Floor: the same ratio with the scenario's reference row in activity's place, "
            "a pattern that does only what the goal's semantics need (an await in its own "
            "context copy; one thread fed by a queue; a trio task in a cancel scope of its "
            "own). Where the floor misses the limit, no implementation with those semantics "
            "meets it in this run."
        )
    return "\n".join(lines) + "\n"


_ROW_FIELDS: Final = frozenset(
    {"scenario", "loop", "pattern", "role", "calls", "unit", "samples", "baseline", "ratio"}
)


def _versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for name in ("activity", "anyio", "aiojobs", "uvloop", "trio"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _load() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:  # pragma: no cover - no load average on this platform
        return "unknown"


# -- the command line ------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to ``parser`` and make it run the benchmark."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller sizes, fewer repetitions and no scaling point at 10^6: under 30 s",
    )
    parser.add_argument(
        "--json", metavar="FILE", help="also write every figure (and each sample) to FILE as JSON"
    )
    parser.add_argument(
        "--repeat",
        type=_positive_int,
        metavar="N",
        help="repetitions of each row, interleaved (default: 5, or 3 with --quick)",
    )
    parser.add_argument(
        "--loop",
        choices=(*LOOPS, "all"),
        default="all",
        help="which event loop to run on (default: all that are installed)",
    )
    parser.add_argument(
        "--scenario",
        choices=SCENARIOS,
        action="append",
        metavar="NAME",
        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument(
        "--scale",
        type=_positive_float,
        default=1.0,
        metavar="FACTOR",
        help="multiply every call count by FACTOR, for a slow machine or a smoke test "
        "(default: %(default)s)",
    )
    parser.set_defaults(run=run)


def add_bench_command(commands: _Commands) -> None:
    """Add the ``bench`` subcommand to the command line of ``python -m activity``."""
    parser = commands.add_parser(
        "bench",
        help="measure activity against the bare asyncio patterns, aiojobs and anyio",
        description=(
            "Run activity and the patterns it replaces (a bare Semaphore + TaskGroup, "
            "aiojobs, anyio task groups, asyncio.to_thread...) in one process, "
            "interleaved, and print a Markdown table per scenario: the median per call, "
            "calls per second, the spread of the repetitions and the ratio of each row "
            "to the bare pattern. The peers come with pip install 'activity[bench]'."
        ),
    )
    add_arguments(parser)


def run(options: argparse.Namespace) -> int:
    """Run the benchmark with parsed options; print the tables; return the exit code."""
    quick: bool = options.quick
    sizes = (QUICK if quick else FULL).scaled(options.scale)
    repeat: int = options.repeat or (3 if quick else 5)
    scenarios: list[str] = options.scenario or list(SCENARIOS)
    notes: list[str] = []
    if quick:
        notes.append(
            f"--quick: smaller sizes, {repeat} repetitions (1 for memory and for "
            f"{_power(sizes.scaling_big)} calls), scaling up to {_power(max(sizes.scaling))} "
            f"calls (no 10^6 point; memory up to {_power(sizes.scaling_memory_max)}, trio up "
            f"to {_power(sizes.scaling_trio_max)})"
        )
    if options.scale != 1.0:
        notes.append(f"--scale {options.scale:g}: every call count multiplied by {options.scale:g}")
    loops = _available_loops(options.loop, notes)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    command = "python -m activity bench " + " ".join(_argv_of(options))
    load_before = _load()
    started = time.perf_counter()
    groups = [_drop_missing(group, notes) for group in _groups(sizes, loops, scenarios)]
    rows: list[Row] = []
    for group in groups:
        if group.patterns:
            rows.extend(_measure(group, repeat, log))
    result: dict[str, Any] = {
        "command": command.strip(),
        "environment": {
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(terse=True),
            "cpus": os.cpu_count(),
            "versions": _versions(),
            "load_before": load_before,
            "load_after": _load(),
        },
        "quick": quick,
        "repeat": repeat,
        "sizes": {
            "async_call": sizes.async_call,
            "sync_call": sizes.sync_call,
            "blocking_concurrent": sizes.blocking_concurrent,
            "blocking_serial": sizes.blocking_serial,
            "memory": sizes.memory,
            "scaling": list(sizes.scaling),
        },
        "seconds": time.perf_counter() - started,
        "notes": notes,
        "groups": [
            {
                "scenario": g.scenario,
                "loop": g.loop,
                "title": g.title,
                "meaning": g.meaning,
                "unit": g.unit,
            }
            for g in groups
        ],
        "rows": [row.as_json() for row in rows],
        "targets": [target.as_json() for target in _targets(rows)],
    }
    print(render(result), end="")
    if options.json:
        with open(options.json, "w", encoding="utf-8") as file:
            json.dump(result, file, indent=2)
            file.write("\n")
    return 0


def _argv_of(options: argparse.Namespace) -> Iterator[str]:
    if options.quick:
        yield "--quick"
    if options.repeat:
        yield f"--repeat {options.repeat}"
    if options.loop != "all":
        yield f"--loop {options.loop}"
    for scenario in options.scenario or ():
        yield f"--scenario {scenario}"
    if options.scale != 1.0:
        yield f"--scale {options.scale:g}"
    if options.json:
        yield f"--json {options.json}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark as a program: ``python -m activity bench`` without the CLI around it.

    :param argv: the options, without the program name (default: ``sys.argv[1:]``)
    :return: the exit code
    """
    parser = argparse.ArgumentParser(
        prog="python -m activity bench",
        description="Measure activity against the patterns it replaces.",
    )
    add_arguments(parser)
    options = parser.parse_args(argv)
    return run(options)
