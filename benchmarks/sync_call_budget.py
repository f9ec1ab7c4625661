"""Where the time of one ``synchronous_call`` goes, against the least it could cost.

    python benchmarks/sync_call_budget.py [--loop asyncio|uvloop] [--repeat N]

Four patterns, interleaved in one process, each awaiting a trivial coroutine
20,000 times one after another:

- *bare*: ``async with semaphore: await body()``, the benchmark's baseline;
- *isolated*: the same, but the body runs in a copy of the context of its
  own (the context rule of docs/design.md), one ``Context.run`` per step;
- *minimal*: what a synchronous call must keep at the very least on top of
  that: a count in and out, a frame that ``current_activity()`` reads and
  that holds the caller's task for ``cancel()``, and that frame's
  registration with the activity. No thread check, no validation, no
  re-entry, no FIFO fairness, no result check, no listeners;
- *activity*: ``Activity.synchronous_call``.

It prints each pattern's median µs per call and its ratio to *bare*. What
separates *minimal* from *activity* is the checks docs/design.md asks for; what
separates *bare* from *isolated* is the context rule itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:
    # Run as a script: import the clone's root as benchmarks/run.py does.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable, Coroutine
from contextvars import ContextVar, copy_context
from typing import Any

from activity import Activity
from activity._backends._common import drive_in_context
from benchmarks.harness import LIMIT, yield_once
from benchmarks.scenarios.sync_call import activity_sync_call, bare_sync_call, isolated_sync_call

Body = Callable[[int], Coroutine[Any, Any, float]]


class _Frame:
    __slots__ = ("__weakref__", "activity", "task")

    def __init__(self, activity: _Minimal, task: asyncio.Task[Any] | None) -> None:
        self.activity = activity
        self.task = task


_current_frame: ContextVar[_Frame | None] = ContextVar("minimal.frame", default=None)


class _Minimal:
    """A synchronous call with only what it must keep: counts, a frame, a registration."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.accepted = self.running = self.completed = 0
        self.slots = 0
        self.frames: set[_Frame] = set()

    async def synchronous_call(self, fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        if self.slots >= LIMIT:
            raise RuntimeError("the benchmark never fills the limit")
        self.accepted += 1
        self.running += 1
        self.slots += 1
        frame = _Frame(self, asyncio.current_task(self.loop))
        self.frames.add(frame)
        context = copy_context()
        context.run(_current_frame.set, frame)  # what current_activity() would read
        result = await drive_in_context(fn(), context)
        self.frames.discard(frame)
        self.running -= 1
        self.completed += 1
        self.slots -= 1
        return result


async def _minimal_sync_call(calls: int) -> float:
    minimal = _Minimal(asyncio.get_running_loop())
    start = time.perf_counter()
    for _ in range(calls):
        await minimal.synchronous_call(yield_once)
    return time.perf_counter() - start


PATTERNS: dict[str, Body] = {
    "bare": bare_sync_call,
    "isolated": isolated_sync_call,
    "minimal": _minimal_sync_call,
    "activity": activity_sync_call,
}


async def _measure(repeat: int, calls: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in PATTERNS}
    async with Activity():  # imports and caches warm before the first sample
        pass
    for _ in range(repeat):
        for name, body in PATTERNS.items():
            samples[name].append(await body(calls) / calls * 1e6)
    return samples


def main(argv: list[str] | None = None) -> int:
    """Measure the four patterns and print a table."""
    parser = argparse.ArgumentParser(description="Where the time of one synchronous_call goes.")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20_000)
    options = parser.parse_args(argv)
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if options.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        samples = runner.run(_measure(options.repeat, options.calls))
    bare = statistics.median(samples["bare"])
    print(f"| {options.loop} | µs/call | ratio to bare |")
    print("|---|---:|---:|")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {median / bare:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
