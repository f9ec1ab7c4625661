"""The goals of activity's hot path, checked against the figures of one run.

These are the project's own targets, not a promise to users: each is a ratio
to the strongest row of its kind in the same run (or, for memory, bytes per
call), and a goal that a run misses shows as **no** in the targets table
with, where the scenario has one, the same ratio for its floor.

The strongest baseline of ``async_call`` is the fastest of its baseline rows,
the patterns that give each call a task, a context copy and a cancellation of
its own: in practice the bounded spawn (``await semaphore.acquire()``, then a
task that releases it). The pool of 100 workers gives less (no handle, no
context, no outcome per call): it is a reference, the stretch goal's. aiojobs
is compared by its fastest pattern (pending limit 100 or N, drained by polling
or by ``async with``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from benchmarks.harness import LOOPS, paired_ratio, strongest

if TYPE_CHECKING:
    from collections.abc import Sequence

    from benchmarks.harness import Loop, Role, Row

__all__ = ["Target", "targets"]


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
    #: The row activity was compared with (the strongest of its kind in the run).
    against: str | None = None

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
            "against": self.against,
        }


def targets(rows: Sequence[Row]) -> list[Target]:
    """Check every goal whose rows ran; a goal without its rows is left out.

    A goal is a ratio to the strongest row of its kind in the same run: the
    fastest baseline (the patterns that give each call what ``activity`` gives
    it, naive forms included), the fastest aiojobs pattern, the fastest
    reference (strongest by median), and its value is the paired ratio (see
    ``benchmarks.harness``). A scenario that runs ``activity`` in several settings (its
    admission: a backlog that waits, a backlog that holds every call) has each
    goal once per setting, named in the goal.
    """

    def matching(scenario: str, loop: Loop, role: Role, name: str = "") -> list[Row]:
        return [
            row
            for row in rows
            if (row.scenario, row.loop, row.role) == (scenario, loop, role) and name in row.pattern
        ]

    def find(scenario: str, loop: Loop, role: Role, name: str = "") -> Row | None:
        """The fastest (or smallest) row of ``role`` in ``scenario`` whose name has ``name``."""
        return strongest(matching(scenario, loop, role, name))

    def settings(scenario: str, loop: Loop) -> list[tuple[str, Row]]:
        """Each activity row of ``scenario``, with its setting as a goal names it ("" if one)."""
        found = matching(scenario, loop, "activity")
        if len(found) == 1:
            return [("", found[0])]
        return [(f" ({row.pattern.removeprefix('activity, ')})", row) for row in found]

    found: list[Target] = []

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
        if top is None or bottom is None:
            return
        value = paired_ratio(top, bottom)
        if value is None:
            return
        floor_ratio = None
        if floor is not None:
            # activity is the top of an "at most" ratio, the bottom of an "at least" one.
            floor_ratio = paired_ratio(floor, bottom) if at_most else paired_ratio(top, floor)
        against = bottom.pattern if at_most else top.pattern
        found.append(Target(goal, loop, value, limit, at_most, floor_ratio, against))

    for loop in LOOPS:
        spawn = find("async_call", loop, "baseline")
        pool = find("async_call", loop, "reference")
        aiojobs = find("async_call", loop, "peer", "aiojobs")
        for setting, act in settings("async_call", loop):
            name = f"asynchronous_call{setting}"
            if loop == "trio":
                ratio(f"{name} ≤ 1.2x the strongest baseline", loop, act, spawn, 1.2)
            else:
                ratio(f"{name} ≤ 1.5x the strongest baseline", loop, act, spawn, 1.5)
                ratio(f"{name} ≤ 1.2x the strongest baseline (goal)", loop, act, spawn, 1.2)
                ratio(
                    f"{name} ≥ 1.4x faster than aiojobs' fastest pattern",
                    loop,
                    aiojobs,
                    act,
                    1.4,
                    at_most=False,
                )
            ratio(f"{name} ≤ 1.0x the pool of 100 workers (stretch)", loop, act, pool, 1.0)
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
            floor = find(scenario, loop, "reference")
            for setting, act in settings(scenario, loop):
                ratio(
                    f"blocking, {how}{setting}, ≤ 1.1x asyncio.to_thread",
                    loop,
                    act,
                    find(scenario, loop, "baseline"),
                    1.1,
                    floor=floor,
                )
                ratio(
                    f"blocking, {how}{setting}, ≥ 1.5x faster than anyio.to_thread.run_sync",
                    loop,
                    find(scenario, loop, "peer", "anyio"),
                    act,
                    1.5,
                    at_most=False,
                    floor=floor,
                )
        queued = find("memory_queued", loop, "activity")
        if queued is not None:
            found.append(Target("a queued call ≤ 600 bytes", loop, queued.median, 600, True))
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
            found.append(
                Target(
                    f"µs/call flat within 20% from {scaling[0].pattern.split(', ')[1]} to "
                    f"{scaling[-1].pattern.split(', ')[1]} (slowest / fastest)",
                    loop,
                    max(medians) / min(medians),
                    1.2,
                    True,
                )
            )
    return found
