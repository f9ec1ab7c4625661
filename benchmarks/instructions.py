"""Instructions per call of one benchmark row, counted by callgrind instead of timed.

    python benchmarks/instructions.py --scenario async_call --loop uvloop --row "overflow=WAIT"

Wall-clock time on a shared machine drifts too much to show a change of a few
percent; the instructions a row executes do not drift. This runs the row
under ``valgrind --tool=callgrind`` twice, in a fresh process each time: once
with ``--calls`` calls (default 5,000) and once with a fifth of them, both
after the same warm-up of 300 calls in the same process. The difference of
the two counts over the difference of the calls is the cost of one call. A
run's fixed costs (the full collection that ``sample()`` starts with, the new
loop, the activity opened and closed) are in both counts and cancel out; a
run with no calls at all would leave them in, spread over the calls. The row
is the benchmark's own (``benchmarks/scenarios``), run by the harness's
``sample()``, so the counts are of exactly what the timed benchmark runs.

``--row`` picks the row whose name contains the given text; ``--list`` lists
the rows of the scenario on the loop. The hash seed lays out sets and dicts
differently from run to run, which moved the count of the same code by a few
hundred, so every run uses one seed (``PYTHONHASHSEED=0``); trio, which
orders the tasks it wakes at random, still moves by a thousand or two. Read
differences below about 500 (trio: 2,000) as none. Needs valgrind.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:
    # Run as a script: import the clone's root as benchmarks/run.py does.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

from benchmarks.harness import FULL, LOOPS, Loop, Pattern, sample
from benchmarks.scenarios import SCENARIOS, groups_of

__all__ = ["count", "main", "patterns"]

#: Calls run in each process before the counted ones: imports and caches settle.
WARM_UP = 300
_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def patterns(scenario: str, loop: Loop) -> list[Pattern]:
    """The rows of ``scenario`` on ``loop``, at the full run's sizes."""
    return [p for group in groups_of(FULL, [loop], [scenario]) for p in group.patterns]


def _pick(scenario: str, loop: Loop, row: str) -> Pattern:
    found = [p for p in patterns(scenario, loop) if row in p.name]
    if len(found) != 1:
        names = "; ".join(p.name for p in patterns(scenario, loop))
        how = "no row" if not found else f"{len(found)} rows"
        raise SystemExit(f"{how} of {scenario} on {loop} match {row!r}; the rows: {names}")
    return found[0]


def _run_child(scenario: str, loop: Loop, row: str, calls: int) -> None:
    pattern = _pick(scenario, loop, row)
    sample(dataclasses.replace(pattern, calls=WARM_UP))
    if calls:
        sample(dataclasses.replace(pattern, calls=calls))


def _instructions(scenario: str, loop: Loop, row: str, calls: int) -> int:
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        str(calls),
        "--scenario",
        scenario,
        "--loop",
        loop,
        "--row",
        row,
    ]
    # One hash seed for every run: the layout of sets and dicts moves the count otherwise.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"callgrind failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return int(found.group(1))


def count(scenario: str, loop: Loop, row: str, calls: int = 5_000) -> int:
    """Instructions per call of the row of ``scenario`` on ``loop`` whose name holds ``row``.

    Counted as ``(I(calls) - I(calls // 5)) / (calls - calls // 5)``, where
    ``I(n)`` is a whole run with ``n`` calls: both runs pay the same fixed costs.
    """
    _pick(scenario, loop, row)  # a bad name fails here, before valgrind runs
    fewer = calls // 5
    if fewer < 1:
        raise SystemExit(f"--calls must be at least 5, not {calls}")
    with ThreadPoolExecutor(2) as pool:
        more_calls = pool.submit(_instructions, scenario, loop, row, calls)
        fewer_calls = pool.submit(_instructions, scenario, loop, row, fewer)
        return round((more_calls.result() - fewer_calls.result()) / (calls - fewer))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/instructions.py",
        description="Instructions per call of one benchmark row, counted by callgrind.",
    )
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="async_call")
    parser.add_argument("--loop", choices=LOOPS, default="asyncio")
    parser.add_argument("--row", default="activity", help="text that the row's name contains")
    parser.add_argument("--calls", type=int, default=5_000, help="calls counted (default 5,000)")
    parser.add_argument("--list", action="store_true", help="list the rows and stop")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.list:
        for pattern in patterns(args.scenario, args.loop):
            print(pattern.name)
        return
    if args.child is not None:
        _run_child(args.scenario, args.loop, args.row, args.child)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed: it counts the instructions")
    per_call = count(args.scenario, args.loop, args.row, args.calls)
    print(f"{args.scenario} on {args.loop}, {_pick(args.scenario, args.loop, args.row).name}:")
    print(f"{per_call:,} instructions per call")


if __name__ == "__main__":
    main()
