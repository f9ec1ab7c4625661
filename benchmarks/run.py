"""Measure activity against the patterns it replaces: the benchmark's command line.

From a clone, with the peers installed (``pip install -e '.[bench]'``)::

    python benchmarks/run.py --quick                            # under 30 s
    python benchmarks/run.py --json benchmarks/results.json     # the full run

``--help`` lists the options. Each scenario is a module of
``benchmarks/scenarios/``; the harness that samples and interleaves their rows
is ``benchmarks/harness.py``, the goals they are checked against
``benchmarks/targets.py``, the Markdown tables ``benchmarks/report.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:
    # Run as a script: Python put this directory first on the path, where its
    # modules would shadow any top-level module of the same name. Put the clone's
    # root there instead, so that ``benchmarks`` (and an uninstalled ``activity``)
    # import as the packages they are, as with ``python -m benchmarks.run``.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import json
import math
import os
import platform
import time
from typing import TYPE_CHECKING, Any

from benchmarks.harness import (
    FULL,
    LOOPS,
    QUICK,
    available_loops,
    drop_missing,
    measure,
    power,
)
from benchmarks.report import load, render, versions
from benchmarks.scenarios import SCENARIOS, groups_of
from benchmarks.targets import targets

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from benchmarks.harness import Row

__all__ = ["main", "run"]

#: How the benchmark is run, as the first line of its output and in its JSON.
COMMAND = "python benchmarks/run.py"


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=COMMAND,
        description=(
            "Run activity and the patterns it replaces (the bounded spawn on a Semaphore "
            "+ TaskGroup, a worker pool, aiojobs, anyio task groups, asyncio.to_thread...) "
            "in one process, interleaved, and print a Markdown table per scenario: the "
            "median per call, calls per second, the spread of the repetitions and the ratio "
            "of each row to the strongest baseline. The peers come with "
            "pip install -e '.[bench]'."
        ),
    )
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
    return parser


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
            f"{power(sizes.scaling_big)} calls), scaling up to {power(max(sizes.scaling))} "
            f"calls (no 10^6 point; memory up to {power(sizes.scaling_memory_max)}, trio up "
            f"to {power(sizes.scaling_trio_max)})"
        )
    if options.scale != 1.0:
        notes.append(f"--scale {options.scale:g}: every call count multiplied by {options.scale:g}")
    loops = available_loops(options.loop, notes)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    command = f"{COMMAND} " + " ".join(_argv_of(options))
    load_before = load()
    started = time.perf_counter()
    groups = [drop_missing(group, notes) for group in groups_of(sizes, loops, scenarios)]
    rows: list[Row] = []
    for group in groups:
        if group.patterns:
            rows.extend(measure(group, repeat, log))
    result: dict[str, Any] = {
        "command": command.strip(),
        "environment": {
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(terse=True),
            "cpus": os.cpu_count(),
            "versions": versions(),
            "load_before": load_before,
            "load_after": load(),
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
        "targets": [target.as_json() for target in targets(rows)],
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
    """Run the benchmark as a program.

    :param argv: the options, without the program name (default: ``sys.argv[1:]``)
    :return: the exit code
    """
    return run(_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
