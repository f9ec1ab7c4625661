"""The command line: ``python -m activity`` (also installed as ``activity``).

Each subcommand is one ``_add_<name>_command(commands)`` function that adds its
parser and sets ``run`` to a function taking the parsed options and returning
the exit code; :data:`_COMMANDS` lists them. Adding a subcommand is one such
function and one entry in that tuple.

``demo`` runs a realistic batch through a bounded activity and prints what the
activity counted. Its output needs ``rich`` (the ``cli`` extra).

``top URL`` shows a running application's statistics endpoint live (see
:mod:`activity._top`); its table needs ``rich``, its ``--once --json`` does not.

The benchmark is not a subcommand: it lives in the repository, outside the
package (``python benchmarks/run.py`` from a clone). :data:`_MOVED` names the
commands that left, so that running one says where it went.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import hashlib
import json
import math
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from time import perf_counter
from typing import TYPE_CHECKING, Any, Final, Protocol

from . import (
    Activity,
    AsyncWorkRejectedError,
    Call,
    CallStatus,
    Overflow,
    __version__,
    hresult_of,
)
from ._top import http_url, run_top

if TYPE_CHECKING:
    from collections.abc import Callable

    from . import ActivityStatistics


__all__ = ["main"]


class _Commands(Protocol):
    """What ``ArgumentParser.add_subparsers()`` returns, as far as a command needs it."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


def main(argv: list[str] | None = None) -> int:
    """Run the command line.

    :param argv: the arguments, without the program name (default: ``sys.argv[1:]``)
    :return: the exit code: 0 on success, 1 when a check failed, 2 on a usage error
        or a missing optional dependency, 130 when interrupted
    """
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] in _MOVED:
        print(f"activity {argv[0]}: {_MOVED[argv[0]]}", file=sys.stderr)
        return 2
    parser = _build_parser()
    try:
        options = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else 2
    run: Callable[[argparse.Namespace], int] = options.run
    try:
        return run(options)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="activity",
        description="COM+ activities for asyncio: bounded, observable, never-lost work.",
        epilog="Run 'activity COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for add_command in _COMMANDS:
        add_command(commands)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


# -- demo ------------------------------------------------------------------------------


def _add_demo_command(commands: _Commands) -> None:
    parser = commands.add_parser(
        "demo",
        help="run a realistic batch through a bounded activity and summarize it",
        description=(
            "Run a batch of mixed work items through one bounded activity: mostly "
            "async I/O-like waits, some blocking hashing in worker threads, a few "
            "failures, per-call timeouts and cancellations. A producer replays an "
            "arrival trace (a steady stream plus a flood every second) faster than "
            "the activity drains, so with Overflow.REJECT some submissions are "
            "rejected. The summary shows the activity's counters, which must add "
            "up (accepted == completed + failed + cancelled); the exit code is 0 "
            "when they do and 1 otherwise. Needs rich: pip install 'activity[cli]'."
        ),
    )
    parser.add_argument(
        "--size",
        type=_positive_int,
        default=3000,
        help="how many work items to submit (default: %(default)s)",
    )
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        default=50,
        help="how many calls may run at once, the activity's max_concurrency "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--queue",
        type=_non_negative_int,
        default=500,
        help="how many accepted calls may wait to run, the max_pending bound; past "
        "that, submissions are rejected (default: %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=4,
        help="worker threads for the blocking items, the activity's thread_limit "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the work items and their arrival times: the same seed gives "
        "the same items, though which are rejected depends on timing (default: %(default)s)",
    )
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="do not show the live progress bar (on stderr)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the summary as a JSON object instead of a table",
    )
    parser.set_defaults(run=_run_demo)


class Kind(enum.Enum):
    """What a demo item does: wait on I/O, burn CPU, fail, time out or get cancelled."""

    IO = "io"
    CPU = "cpu"
    FAIL = "fail"
    TIMEOUT = "timeout"
    CANCEL = "cancel"


#: The mix of work items, by weight.
_MIX: Final = {Kind.IO: 82, Kind.CPU: 8, Kind.FAIL: 4, Kind.TIMEOUT: 4, Kind.CANCEL: 2}
#: Steady arrivals per second, on top of the floods.
_RATE: Final = 350.0
#: A flood arrives at these many seconds, then every _FLOOD_PERIOD seconds.
_FIRST_FLOOD: Final = 0.25
_FLOOD_PERIOD: Final = 1.0
#: A flood is this many times what the activity can hold (running + pending), so it
#: always overflows the queue.
FLOOD_FACTOR: Final = (1.05, 1.35)
_BLOCK: Final = 4096
#: The failures of the failing items: E_FAIL, E_INVALIDARG and E_ACCESSDENIED.
_FAILURES: Final[tuple[tuple[Callable[[str], Exception], str], ...]] = (
    (ConnectionResetError, "upstream reset the connection"),
    (ValueError, "malformed record"),
    (PermissionError, "no write access to the bucket"),
)


@dataclass(frozen=True, slots=True)
class _Item:
    index: int
    kind: Kind
    #: When the item arrives, in seconds from the start of the run.
    at: float
    #: How long the work waits (I/O-like items) or how many blocks it hashes (CPU items).
    seconds: float = 0.0
    rounds: int = 0
    #: The per-call timeout (timeout items), or when the producer cancels it (cancel items).
    timeout: float | None = None
    cancel_after: float | None = None
    error: int = 0


def plan_items(size: int, capacity: int, seed: int) -> list[_Item]:
    """Draw the work items and their arrival times; the same seed gives the same plan."""
    rng = random.Random(seed)
    kinds = list(_MIX)
    weights = list(_MIX.values())
    items: list[_Item] = []
    steady_at = 0.0
    next_flood = _FIRST_FLOOD
    while len(items) < size:
        steady_at += rng.expovariate(_RATE)
        if steady_at >= next_flood:
            at, count = next_flood, math.ceil(capacity * rng.uniform(*FLOOD_FACTOR))
            next_flood += _FLOOD_PERIOD
        else:
            at, count = steady_at, 1
        for _ in range(min(count, size - len(items))):
            items.append(_draw(rng, len(items), rng.choices(kinds, weights)[0], at))
    return items


def _draw(rng: random.Random, index: int, kind: Kind, at: float) -> _Item:
    if kind is Kind.CPU:
        return _Item(index, kind, at, rounds=rng.randint(150, 300))
    if kind is Kind.FAIL:
        return _Item(index, kind, at, rng.uniform(0.001, 0.01), error=rng.randrange(len(_FAILURES)))
    if kind is Kind.TIMEOUT:
        return _Item(index, kind, at, rng.uniform(0.04, 0.08), timeout=rng.uniform(0.01, 0.02))
    if kind is Kind.CANCEL:
        return _Item(index, kind, at, rng.uniform(2.0, 3.0), cancel_after=rng.uniform(0.005, 0.05))
    return _Item(index, kind, at, rng.uniform(0.002, 0.02))


async def _io_wait(seconds: float) -> float:
    """An I/O-like wait: a request to a service that answers in ``seconds``."""
    await asyncio.sleep(seconds)
    return seconds


async def _flaky(seconds: float, error: int) -> float:
    """An I/O-like wait that fails."""
    await asyncio.sleep(seconds)
    error_class, message = _FAILURES[error]
    raise error_class(message)


def _hash_blocks(seed: int, rounds: int) -> str:
    """Blocking CPU work: hash ``rounds`` blocks of 4 KiB (hashlib releases the GIL)."""
    block = seed.to_bytes(8, "little") * (_BLOCK // 8)
    digest = hashlib.sha256()
    for _ in range(rounds):
        digest.update(block)
    return digest.hexdigest()


@dataclass(slots=True)
class Report:
    """What the demo saw: its statistics at the end of production and at exit, and latencies."""

    size: int
    options: dict[str, int]
    at_end_of_production: ActivityStatistics | None = None
    final: ActivityStatistics | None = None
    #: Seconds from acceptance to finish, one per accepted call.
    latencies: list[float] = field(default_factory=list[float])
    #: How the calls ended, as seen by awaiting them.
    seen: Counter[CallStatus] = field(default_factory=Counter[CallStatus])
    #: Failures by HRESULT name, as seen by the activity's error_handler.
    failures: Counter[str] = field(default_factory=Counter[str])
    wall: float = 0.0

    def problems(self) -> list[str]:
        """Return what does not add up (nothing, when the activity lost no call)."""
        final, before = self.final, self.at_end_of_production
        if final is None or before is None:
            return ["the batch did not run to the end"]
        problems: list[str] = []
        if final.accepted != final.completed + final.failed + final.cancelled:
            problems.append(
                f"accepted ({final.accepted}) != completed ({final.completed}) + failed "
                f"({final.failed}) + cancelled ({final.cancelled})"
            )
        if final.in_flight:
            problems.append(f"{final.in_flight} calls still in flight after the block exited")
        if before.accepted != before.in_flight + before.finished:
            problems.append(f"counters inside the block do not add up: {before!r}")
        if final.accepted + final.rejected != self.size:
            problems.append(
                f"accepted ({final.accepted}) + rejected ({final.rejected}) != "
                f"items submitted ({self.size})"
            )
        counted = {
            CallStatus.COMPLETED: final.completed,
            CallStatus.FAILED: final.failed,
            CallStatus.CANCELLED: final.cancelled,
        }
        for status, count in counted.items():
            if self.seen[status] != count:
                problems.append(
                    f"{self.seen[status]} calls were seen {status.value}, "
                    f"the activity counted {count}"
                )
        if self.failures.total() != final.failed:
            problems.append(
                f"the error handler saw {self.failures.total()} failures, "
                f"the activity counted {final.failed}"
            )
        return problems

    def summary(self) -> dict[str, Any]:
        """The figures, as a JSON-ready mapping."""
        final = self.final
        assert final is not None
        finished = final.finished
        problems = self.problems()
        return {
            "items": self.size,
            "accepted": final.accepted,
            "rejected": final.rejected,
            "completed": final.completed,
            "failed": final.failed,
            "cancelled": final.cancelled,
            "failures": dict(sorted(self.failures.items())),
            "p50_ms": round(_percentile(self.latencies, 50) * 1000, 3),
            "p99_ms": round(_percentile(self.latencies, 99) * 1000, 3),
            "wall_s": round(self.wall, 3),
            "calls_per_s": round(finished / self.wall, 1) if self.wall > 0 else 0.0,
            "ok": not problems,
            "problems": problems,
            "options": self.options,
        }


def _percentile(values: list[float], percent: float) -> float:
    """The nearest-rank percentile of ``values`` (0.0 when there are none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


async def _run_batch(
    options: argparse.Namespace, on_tick: Callable[[ActivityStatistics], object] | None
) -> Report:
    """Submit the planned items to one activity and record what became of each."""
    size: int = options.size
    concurrency: int = options.concurrency
    queue: int = options.queue
    report = Report(
        size=size,
        options={
            "size": size,
            "concurrency": concurrency,
            "queue": queue,
            "threads": options.threads,
            "seed": options.seed,
        },
    )
    plan = plan_items(size, concurrency + queue, options.seed)

    def on_error(call: Call[Any], exc: BaseException) -> None:
        report.failures[hresult_of(exc).name] += 1

    act = Activity(
        name="demo",
        max_concurrency=concurrency,
        max_pending=queue,
        overflow=Overflow.REJECT,
        thread_limit=options.threads,
        error_handler=on_error,
    )
    monitor = None if on_tick is None else asyncio.create_task(_monitor(act, on_tick))
    start = perf_counter()
    try:
        # The watchers outlive the activity's block: its exit drains the calls that
        # are still pending or running, and the watchers see them finish.
        async with asyncio.TaskGroup() as watchers:
            async with act:
                await _produce(act, plan, start, watchers, report)
                report.at_end_of_production = act.statistics()
            report.final = act.statistics()
        report.wall = perf_counter() - start
    finally:
        if monitor is not None:
            monitor.cancel()
            await asyncio.wait([monitor])
    if on_tick is not None:
        on_tick(report.final)
    return report


async def _produce(
    act: Activity,
    plan: list[_Item],
    start: float,
    watchers: asyncio.TaskGroup,
    report: Report,
) -> None:
    """Replay the arrival trace; count rejected submissions and move on."""
    for item in plan:
        delay = item.at - (perf_counter() - start)
        if delay > 0:
            await asyncio.sleep(delay)
        name = f"{item.kind.value}-{item.index}"
        try:
            call: Call[object]
            if item.kind is Kind.CPU:
                call = await act.asynchronous_call(_hash_blocks, item.index, item.rounds, name=name)
            elif item.kind is Kind.FAIL:
                call = await act.asynchronous_call(_flaky, item.seconds, item.error, name=name)
            else:
                call = await act.asynchronous_call(
                    _io_wait, item.seconds, name=name, timeout=item.timeout
                )
        except AsyncWorkRejectedError:
            continue  # the activity counts it; a real producer would retry later or shed it
        watchers.create_task(_watch(call, perf_counter(), item.cancel_after, report))


async def _watch(
    call: Call[object], accepted_at: float, cancel_after: float | None, report: Report
) -> None:
    """Wait for one call to end; record its latency and how it ended."""
    if cancel_after is not None:
        await asyncio.sleep(cancel_after)
        call.cancel("the producer no longer needs it")
    # wait() never raises; the error_handler has already observed a failure.
    await call.wait()
    report.latencies.append(perf_counter() - accepted_at)
    report.seen[call.status] += 1


async def _monitor(act: Activity, on_tick: Callable[[ActivityStatistics], object]) -> None:
    while True:
        on_tick(act.statistics())
        await asyncio.sleep(0.05)


def _run_demo(options: argparse.Namespace) -> int:
    try:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.table import Table
    except ImportError:
        print(
            "activity demo needs the 'rich' package; install it with: pip install 'activity[cli]'",
            file=sys.stderr,
        )
        return 2

    if options.progress:
        # The bar fills as items are settled (finished or rejected), out of all the
        # items of the batch; the rate and the time left follow from the same count.
        progress = Progress(
            TextColumn("[bold]demo[/]"),
            BarColumn(bar_width=16),
            MofNCompleteColumn(),
            TextColumn("{task.fields[finished]} finished, {task.fields[rejected]} rejected"),
            TextColumn("{task.fields[rate]:.0f}/s eta"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        task = progress.add_task(
            "demo", total=options.size, finished=0, accepted=0, rejected=0, rate=0.0
        )
        started = time.monotonic()

        def on_tick(stats: ActivityStatistics) -> None:
            settled = stats.finished + stats.rejected
            elapsed = time.monotonic() - started
            progress.update(
                task,
                completed=settled,
                finished=stats.finished,
                accepted=stats.accepted,
                rejected=stats.rejected,
                rate=settled / elapsed if elapsed > 0 else 0.0,
            )

        with progress:
            report = asyncio.run(_run_batch(options, on_tick))
    else:
        report = asyncio.run(_run_batch(options, None))

    summary = report.summary()
    if options.json:
        print(json.dumps(summary, indent=2))
    else:
        table = Table(title=f"activity demo: {summary['items']} items", title_justify="left")
        table.add_column("")
        table.add_column("value", justify="right")
        for key in ("accepted", "rejected", "completed", "failed", "cancelled"):
            table.add_row(key, str(summary[key]))
        for code, count in summary["failures"].items():
            table.add_row(f"  {code}", str(count), style="dim")
        table.add_section()
        table.add_row("p50 latency", f"{summary['p50_ms']:.1f} ms")
        table.add_row("p99 latency", f"{summary['p99_ms']:.1f} ms")
        table.add_row("wall time", f"{summary['wall_s']:.2f} s")
        table.add_row("calls/s", f"{summary['calls_per_s']:.0f}")
        Console().print(table)
    for problem in summary["problems"]:
        print(f"activity demo: {problem}", file=sys.stderr)
    return 0 if summary["ok"] else 1


# -- top -------------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text}")
    return value


def _add_top_command(commands: _Commands) -> None:
    parser = commands.add_parser(
        "top",
        help="watch a running application's statistics endpoint live",
        description=(
            "Read a web application's statistics endpoint (the statistics_path of "
            "activity's web integrations) every interval and show, for the app "
            "activity and each open request, what is pending and running, what has "
            "completed, failed, been cancelled or rejected, and the rates per second "
            "between two readings. When the server cannot be read it says why and "
            "keeps trying; Ctrl-C quits. The table needs rich: pip install "
            "'activity[cli]'."
        ),
    )
    parser.add_argument(
        "url",
        type=http_url,
        help="the statistics endpoint, for example http://127.0.0.1:8000/_activity/stats",
    )
    parser.add_argument(
        "--interval",
        type=_positive_float,
        default=1.0,
        metavar="SECONDS",
        help="seconds between readings (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=5.0,
        metavar="SECONDS",
        help="seconds a reading may take (default: %(default)s)",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="read once, print the table and exit: 0 if read, 1 if not",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="with --once (which it implies): print the document as served, with a "
        "'url' key, as JSON; needs no rich",
    )
    parser.set_defaults(run=run_top)


#: The subcommands, each added by its function.
_COMMANDS: Final[tuple[Callable[[_Commands], None], ...]] = (_add_demo_command, _add_top_command)

#: Commands that are no longer part of the package, and where each went.
_MOVED: Final = {
    "bench": "the benchmark is no longer part of the package; from a clone of the "
    "repository, run: python benchmarks/run.py [--quick] [--json FILE]",
}


if __name__ == "__main__":
    sys.exit(main())
