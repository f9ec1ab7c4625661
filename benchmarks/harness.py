"""The harness every scenario runs in: rows, sizes, sampling and interleaving.

Each scenario runs ``activity`` and the patterns a user would otherwise write
(a bounded spawn on an ``asyncio.Semaphore`` + ``asyncio.TaskGroup``, a pool
of workers, aiojobs, anyio task groups, ``asyncio.to_thread``...) in one
process, interleaved: every repetition runs every row once, in turn, so that a
change in the machine's load falls on all rows alike. A row's figure is the
median of its repetitions. Its ratio is to the strongest baseline of the same
scenario and loop in the same run: the fastest of its ``baseline`` rows, the
patterns that give each call what ``activity`` gives it (a task, a context
copy and a cancellation of its own). Compare ratios, not absolute times,
between machines or runs.

A ratio is *paired*: the median, over the repetitions, of the row's sample
divided by the baseline's sample of the same repetition. The speed of a
shared machine moves by half again for seconds at a time; two samples taken
a moment apart see the same speed, two medians need not. So that the rows
compared with each other run a moment apart, each repetition runs the rows of
about the same cost first (those whose warm-up took at most
:data:`CLOSE_COST` times the fastest row's), then the slow ones.

A row is labelled *naive* when it is a weaker way to write a peer's pattern
(a task per call parked on the semaphore, aiojobs with its default settings):
it stays in the tables, as what such code costs, but a faster form of the
same pattern is there beside it.

Every sample runs in a fresh event loop, after a garbage collection, and
times only the work (the loop's creation and teardown are outside). The
trivial coroutine awaits ``sleep(0)`` once: it gives the loop a turn, as any
real call does, so the limit of 100 binds (a body that never yields would run
to its end before the next call starts, and no pattern would bound anything).

The peers are imported only when their rows run; they come with the ``bench``
extra (``pip install -e '.[bench]'``: aiojobs, uvloop, trio). A row whose
peer is missing is left out, and the output says so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import math
import statistics
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

__all__ = [
    "FULL",
    "LIMIT",
    "LOOPS",
    "QUICK",
    "Body",
    "CoroutineFunction",
    "Group",
    "Loop",
    "Pattern",
    "Role",
    "Row",
    "Sizes",
    "Thunk",
    "Traced",
    "Unit",
    "available_loops",
    "blocking_noop",
    "drop_missing",
    "measure",
    "paired_ratio",
    "park",
    "power",
    "settle",
    "sizes_text",
    "strongest",
    "trio_yield_once",
    "yield_once",
]

#: The concurrency limit of every scenario (running calls, threads, jobs).
LIMIT: Final = 100
#: Rows whose warm-up cost per call is at most this many times the fastest row's run
#: first in each repetition, next to each other (see the module doc).
CLOSE_COST: Final = 3.0

Loop = Literal["asyncio", "uvloop", "trio"]
Unit = Literal["us", "B"]
#: ``activity``: activity itself. ``baseline``: a pattern with the same guarantees per call
#: (a task, a context copy and a cancellation of its own), written with the loop's own
#: primitives; ratios and targets are taken against the fastest of them. ``peer``: another
#: library (aiojobs, anyio), with targets of its own where the project sets one.
#: ``reference``: a pattern that gives less (no handle or no context per call), or a floor.
Role = Literal["activity", "baseline", "peer", "reference"]
#: Runs one sample of ``calls`` calls on the running loop; returns seconds, or bytes.
Body = Callable[[int], Coroutine[Any, Any, float]]
Thunk = Callable[[], Awaitable[object]]
CoroutineFunction = Callable[[], Coroutine[Any, Any, object]]

LOOPS: Final[tuple[Loop, ...]] = ("asyncio", "uvloop", "trio")


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
    #: A weaker form of a pattern that has a stronger row beside it (shown as "naive").
    naive: bool = False


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
    naive: bool = False

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
            "naive": self.naive,
            "samples": self.samples,
        }


# -- what the bodies share ------------------------------------------------------------------


async def yield_once() -> None:
    """The trivial coroutine of asyncio and uvloop: it gives the loop one turn."""
    await asyncio.sleep(0)


async def park(event: asyncio.Event) -> None:
    """A call parked on I/O, here an event."""
    await event.wait()


def blocking_noop() -> None:
    """The trivial blocking callable."""


def trio_yield_once() -> CoroutineFunction:
    """The trivial coroutine of trio (imported only when a trio row runs)."""
    import trio

    async def yield_once() -> None:
        await trio.lowlevel.checkpoint()

    return yield_once


class Traced:
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


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def power(size: int) -> str:
    exponent = math.log10(size) if size > 0 else 0.0
    if exponent == int(exponent) and size >= 1000:
        return f"10^{int(exponent)}"
    return f"{size:,}"


def sizes_text(sizes: Sequence[int]) -> str:
    return ", ".join(power(size) for size in sizes)


# -- running -------------------------------------------------------------------------------------


def sample(pattern: Pattern) -> float:
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


def measure(group: Group, repeat: int, log: Callable[[str], None]) -> list[Row]:
    rows = [
        Row(group.scenario, group.loop, p.name, p.role, p.calls, group.unit, naive=p.naive)
        for p in group.patterns
    ]
    scale = 1e6 if group.unit == "us" else 1.0
    started = time.perf_counter()
    # A short warm-up run of each row: imports, caches and thread start-up are not
    # measured. Its time per call sorts the rows into the close ones and the slow ones.
    costs: list[float] = []
    for pattern in group.patterns:
        warm = dataclasses.replace(pattern, calls=min(pattern.calls, 500))
        began = time.perf_counter()
        sample(warm)
        costs.append((time.perf_counter() - began) / warm.calls)
    cheapest = min(costs)
    close: list[tuple[Pattern, Row]] = []
    slow: list[tuple[Pattern, Row]] = []
    for pair, cost in zip(zip(group.patterns, rows, strict=True), costs, strict=True):
        (close if cost <= CLOSE_COST * cheapest else slow).append(pair)
    if group.repeat is not None:
        repeat = min(repeat, group.repeat)
    for index in range(repeat):
        # Rotate each block every repetition: no row always runs right after the same one.
        for block in (close, slow):
            shift = index % len(block) if block else 0
            for pattern, row in block[shift:] + block[:shift]:
                if pattern.repeat is not None and len(row.samples) >= pattern.repeat:
                    continue
                row.samples.append(sample(pattern) * scale)
    for row in rows:
        baseline = baseline_of(row, rows)
        row.baseline = baseline.pattern
        if row.scenario.startswith("scaling"):
            # Sizes of one pattern, not patterns compared: the growth of its median.
            row.ratio = row.median / baseline.median if baseline.median > 0 else None
        else:
            row.ratio = paired_ratio(row, baseline)
    log(f"  {group.scenario} on {group.loop}: {time.perf_counter() - started:.1f} s")
    return rows


def baseline_of(row: Row, rows: Sequence[Row]) -> Row:
    """The strongest baseline of the group; in scaling, the same pattern at the smallest size.

    The strongest baseline is the fastest (or, for memory, the smallest) of the
    group's ``baseline`` rows: the best a user can do with the loop's own
    primitives while giving each call what ``activity`` gives it. A group
    without one compares its rows to its first.
    """
    if row.scenario.startswith("scaling"):
        family = row.pattern.rpartition(", ")[0]
        return next(other for other in rows if other.pattern.rpartition(", ")[0] == family)
    return strongest([other for other in rows if other.role == "baseline"]) or rows[0]


def paired_ratio(top: Row, bottom: Row) -> float | None:
    """The median over the repetitions of ``top``'s sample / ``bottom``'s of the same one.

    Repetitions that only one of them ran (a row with a cap on its repetitions
    stops early) are left out; ``None`` if no repetition has both.
    """
    pairs = zip(top.samples, bottom.samples, strict=False)
    ratios = [mine / theirs for mine, theirs in pairs if theirs > 0]
    return statistics.median(ratios) if ratios else None


def strongest(rows: Sequence[Row]) -> Row | None:
    """The row of ``rows`` with the smallest median (the first of equals), or None if none."""
    return min(rows, key=lambda row: row.median, default=None)


def available_loops(requested: str, notes: list[str]) -> list[Loop]:
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
                f"{loop} is not installed, its rows are left out: pip install -e '.[bench]'"
            )
            continue
        chosen.append(loop)
    return chosen


def drop_missing(group: Group, notes: list[str]) -> Group:
    """``group`` without the rows whose peer is not installed; ``notes`` says which."""
    kept: list[Pattern] = []
    for pattern in group.patterns:
        if "aiojobs" in pattern.name:
            try:
                __import__("aiojobs")
            except ImportError:
                note = "aiojobs is not installed, its rows are left out: pip install -e '.[bench]'"
                if note not in notes:
                    notes.append(note)
                continue
        kept.append(pattern)
    # Everything else is kept, the group's cap on repetitions too.
    return dataclasses.replace(group, patterns=tuple(kept))
