"""The benchmark's smoke test: every scenario runs at tiny sizes, and its output has its shape.

The benchmark lives outside the package, in ``benchmarks/`` (run from a clone
with ``python benchmarks/run.py``). Speed is shown by the benchmark itself,
never asserted here: these tests check rows and numbers, not how fast anything
is.
"""

from __future__ import annotations

import ast
import gc
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    # ``benchmarks`` is a directory of the clone, not an installed package; under
    # ``python -m pytest`` the working directory (the clone's root) is on the path
    # already, under a bare ``pytest`` it is not.
    sys.path.insert(0, str(ROOT))

from benchmarks import instructions, run  # noqa: E402
from benchmarks.harness import (  # noqa: E402
    QUICK,
    Group,
    Loop,
    Role,
    Row,
    baseline_of,
    drop_missing,
    paired_ratio,
)
from benchmarks.report import render  # noqa: E402
from benchmarks.scenarios import SCENARIOS, groups_of  # noqa: E402
from benchmarks.scenarios.async_call import ACTIVITY_UNBOUNDED, ACTIVITY_WAIT  # noqa: E402
from benchmarks.scenarios.scaling import SCALING_FLOOR  # noqa: E402
from benchmarks.targets import targets  # noqa: E402

pytest.importorskip("aiojobs")
pytest.importorskip("uvloop")
pytest.importorskip("trio")

#: One run of ``--quick`` at a thousandth of its sizes: every scenario, loop and peer.
TINY = ["--quick", "--repeat", "1", "--scale", "0.001"]

Result = tuple[dict[str, Any], str]


def _paired(top: dict[str, Any], bottom: dict[str, Any]) -> float:
    """The paired ratio of two rows of the JSON, computed here from their samples."""
    pairs = zip(top["samples"], bottom["samples"], strict=False)
    ratios: list[float] = sorted(float(a) / float(b) for a, b in pairs)
    middle = len(ratios) // 2
    return ratios[middle] if len(ratios) % 2 else (ratios[middle - 1] + ratios[middle]) / 2


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> Result:
    """One tiny run of every scenario, its JSON read back."""
    path: Path = tmp_path_factory.mktemp("bench") / "bench.json"
    # Every sample starts with a full garbage collection. In the test process the
    # heap holds pytest, Hypothesis and every test module, and collecting it would
    # be nearly all of a tiny run's time: freeze what is there, so that the
    # collections see only what the benchmark itself allocates.
    gc.freeze()
    try:
        code = run.main([*TINY, "--json", str(path)])
    finally:
        gc.unfreeze()
    assert code == 0
    return json.loads(path.read_text(encoding="utf-8")), str(path)


class TestBench:
    def test_every_scenario_and_loop_has_rows(self, result: Result) -> None:
        data, _ = result
        seen = {(row["scenario"], row["loop"]) for row in data["rows"]}
        for loop in ("asyncio", "uvloop", "trio"):
            for scenario in (
                "async_call",
                "sync_call",
                "memory_queued",
                "memory_running",
                "scaling",
                "scaling_memory",
            ):
                assert (scenario, loop) in seen
        for loop in ("asyncio", "uvloop"):
            assert ("blocking_concurrent", loop) in seen
            assert ("blocking_serial", loop) in seen
        assert ("blocking_concurrent", "trio") not in seen

    def test_peers_are_measured(self, result: Result) -> None:
        data, _ = result

        def roles(scenario: str, loop: str) -> dict[str, tuple[str, bool]]:
            return {
                row["pattern"]: (row["role"], row["naive"])
                for row in data["rows"]
                if (row["scenario"], row["loop"]) == (scenario, loop)
            }

        for loop in ("asyncio", "uvloop"):
            assert roles("async_call", loop) == {
                ACTIVITY_WAIT: ("activity", False),
                ACTIVITY_UNBOUNDED: ("activity", False),
                "bounded spawn: Semaphore.acquire(), then TaskGroup.create_task": (
                    "baseline",
                    False,
                ),
                "bare Semaphore + TaskGroup": ("baseline", True),
                "pool of 100 workers + Queue(100)": ("reference", False),
                "pool of 100 workers + Queue()": ("reference", False),
                "aiojobs Scheduler(limit=100, pending_limit=100), polled": ("peer", False),
                "aiojobs Scheduler(limit=100, pending_limit=100), async with": ("peer", False),
                "aiojobs Scheduler(limit=100, pending_limit=N), polled": ("peer", False),
                "aiojobs Scheduler(limit=100, pending_limit=N), async with": ("peer", False),
                "aiojobs Scheduler() with its defaults, async with": ("peer", True),
                "anyio start_soon + CapacityLimiter": ("peer", False),
            }
            blocking = roles("blocking_concurrent", loop)
            assert blocking[ACTIVITY_WAIT] == blocking[ACTIVITY_UNBOUNDED] == ("activity", False)
            assert blocking["asyncio.to_thread"] == ("baseline", False)
            assert blocking["asyncio.to_thread, bounded spawn"] == ("baseline", False)
        assert roles("async_call", "trio") == {
            ACTIVITY_WAIT: ("activity", False),
            ACTIVITY_UNBOUNDED: ("activity", False),
            "bounded spawn: trio.Semaphore.acquire(), then nursery.start_soon": (
                "baseline",
                False,
            ),
            "bare trio.Semaphore + nursery": ("baseline", True),
            "pool of 100 workers + memory channel(100)": ("reference", False),
            "pool of 100 workers + memory channel(inf)": ("reference", False),
            "anyio start_soon + CapacityLimiter": ("peer", False),
        }

    def test_ratios_are_to_the_strongest_baseline(self, result: Result) -> None:
        data, _ = result
        groups = {(row["scenario"], row["loop"]) for row in data["rows"]}
        for scenario, loop in groups:
            if scenario.startswith("scaling"):
                continue
            rows = [r for r in data["rows"] if (r["scenario"], r["loop"]) == (scenario, loop)]
            baselines = [row for row in rows if row["role"] == "baseline"]
            best = min(baselines, key=lambda row: row["median"])
            for row in rows:
                assert row["baseline"] == best["pattern"]
                assert row["ratio"] == pytest.approx(_paired(row, best))

    def test_async_call_targets_use_the_strongest_rows(self, result: Result) -> None:
        data, _ = result
        by_goal = {(target["goal"], target["loop"]): target for target in data["targets"]}
        for loop in ("asyncio", "uvloop", "trio"):
            rows = [
                row
                for row in data["rows"]
                if (row["scenario"], row["loop"]) == ("async_call", loop)
            ]

            def fastest(
                role: str, name: str = "", rows: list[dict[str, Any]] = rows
            ) -> dict[str, Any]:
                return min(
                    (row for row in rows if row["role"] == role and name in row["pattern"]),
                    key=lambda row: row["median"],
                )

            spawn, pool = fastest("baseline"), fastest("reference")
            for act in (row for row in rows if row["role"] == "activity"):
                name = f"asynchronous_call ({act['pattern'].removeprefix('activity, ')})"
                limit = 1.2 if loop == "trio" else 1.5
                target = by_goal[f"{name} ≤ {limit}x the strongest baseline", loop]
                assert target["against"] == spawn["pattern"]
                assert target["value"] == pytest.approx(_paired(act, spawn))
                stretch = by_goal[f"{name} ≤ 1.0x the pool of 100 workers (stretch)", loop]
                assert stretch["against"] == pool["pattern"]
                aiojobs_goal = (f"{name} ≥ 1.4x faster than aiojobs' fastest pattern", loop)
                if loop == "trio":
                    assert aiojobs_goal not in by_goal
                    continue
                aiojobs = fastest("peer", "aiojobs")
                faster = by_goal[aiojobs_goal]
                assert faster["against"] == aiojobs["pattern"]
                assert faster["value"] == pytest.approx(_paired(aiojobs, act))
                assert faster["floor"] is None  # no floor row in this scenario
                goal = by_goal[f"{name} ≤ 1.2x the strongest baseline (goal)", loop]
                assert goal["value"] == target["value"]

    def test_floors_are_measured(self, result: Result) -> None:
        data, _ = result
        references = {
            (row["scenario"], row["loop"], row["pattern"])
            for row in data["rows"]
            if row["role"] == "reference"
        }
        for loop in ("asyncio", "uvloop"):
            assert (
                "sync_call",
                loop,
                "bare await in its own context copy, under a Semaphore",
            ) in references
            assert ("blocking_serial", loop, "one thread fed by a SimpleQueue") in references
        assert (
            "sync_call",
            "trio",
            "bare await in its own context copy, under a trio.Semaphore",
        ) in references
        assert (
            "memory_running",
            "trio",
            "bare task in a cancel scope of its own",
        ) in references
        # Scaling's floor runs at every size activity runs at, on every loop.
        for loop in ("asyncio", "uvloop", "trio"):
            sizes = {
                row["pattern"].rpartition(", ")[2]
                for row in data["rows"]
                if (row["scenario"], row["loop"], row["role"]) == ("scaling", loop, "activity")
            }
            assert sizes
            for size in sizes:
                assert ("scaling", loop, f"{SCALING_FLOOR}, {size}") in references

    def test_targets_carry_their_floor(self, result: Result) -> None:
        data, _ = result
        rows = {(row["scenario"], row["loop"], row["role"]): row for row in data["rows"]}
        anyio_serial = {
            row["loop"]: row
            for row in data["rows"]
            if row["scenario"] == "blocking_serial" and "anyio" in row["pattern"]
        }
        by_goal = {(target["goal"], target["loop"]): target for target in data["targets"]}
        for loop in ("asyncio", "uvloop", "trio"):
            sync = by_goal["synchronous_call ≤ 1.5x bare awaited call under a semaphore", loop]
            floor = rows["sync_call", loop, "reference"]
            bare = rows["sync_call", loop, "baseline"]
            assert sync["floor"] == pytest.approx(_paired(floor, bare))
        for loop in ("asyncio", "uvloop"):
            faster = by_goal[
                "blocking, one at a time, ≥ 1.5x faster than anyio.to_thread.run_sync", loop
            ]
            floor = rows["blocking_serial", loop, "reference"]
            # "faster than" puts activity, and so its floor, below the peer.
            assert faster["floor"] == pytest.approx(_paired(anyio_serial[loop], floor))
            # Scenarios without a floor row have no floor figure.
            many = "blocking, 100 at a time (max_pending=N), ≤ 1.1x asyncio.to_thread"
            assert by_goal[many, loop]["floor"] is None
        parked = by_goal["a running parked call ≤ 1.3x a bare task", "trio"]
        reference = rows["memory_running", "trio", "reference"]
        assert parked["floor"] == pytest.approx(
            _paired(reference, rows["memory_running", "trio", "baseline"])
        )
        assert by_goal["a running parked call ≤ 1.3x a bare task", "asyncio"]["floor"] is None

    def test_figures_are_positive(self, result: Result) -> None:
        data, _ = result
        for row in data["rows"]:
            assert row["unit"] in ("us", "B")
            assert row["samples"], row
            assert all(sample > 0 for sample in row["samples"]), row
            assert row["min"] <= row["median"] <= row["max"]
            assert row["ratio"] > 0
            if row["unit"] == "us":
                assert row["per_second"] > 0
        # Each group's strongest baseline has a ratio of 1 to itself.
        for row in data["rows"]:
            if row["baseline"] == row["pattern"]:
                assert row["ratio"] == 1.0

    def test_targets_are_checked(self, result: Result) -> None:
        data, _ = result
        goals = {target["goal"] for target in data["targets"]}
        assert any(goal.startswith("asynchronous_call") for goal in goals)
        assert any(goal.startswith("a queued call") for goal in goals)
        for target in data["targets"]:
            assert isinstance(target["met"], bool)
            assert target["value"] > 0

    def test_table(self, result: Result) -> None:
        data, path = result
        table = render(data)
        assert table.startswith(
            f"`python benchmarks/run.py --quick --repeat 1 --scale 0.001 --json {path}`"
        )
        assert f"| asyncio | **{ACTIVITY_WAIT}** |" in table
        assert f"| trio | **{ACTIVITY_UNBOUNDED}** |" in table
        assert "| asyncio | bare Semaphore + TaskGroup (naive) |" in table
        assert "| uvloop | aiojobs Scheduler() with its defaults, async with (naive) |" in table
        assert "### Targets" in table
        assert "| goal | loop | measured | limit | met | against | floor |" in table
        assert "(reference)" in table
        assert "Ratio: to the strongest baseline of the same loop in the same run" in table
        assert "--quick" in "\n".join(data["notes"])


def test_bad_options_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run.main(["--repeat", "0"])
    assert "must be at least 1" in capsys.readouterr().err


def test_every_scenario_is_an_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run.main(["--help"])
    output = capsys.readouterr().out
    assert list(SCENARIOS) == ["async_call", "sync_call", "blocking", "memory", "scaling"]
    for option in ("--quick", "--json", "--repeat", "--loop", "--scenario", "--scale"):
        assert option in output


def test_runs_as_a_script_from_anywhere(tmp_path: Path) -> None:
    """``python benchmarks/run.py`` imports the clone's ``benchmarks``, whatever the directory."""
    script = ROOT / "benchmarks" / "run.py"
    done = subprocess.run(
        [sys.executable, str(script), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python benchmarks/run.py")


class TestInstructionCount:
    """``benchmarks/instructions.py`` counts a row of the benchmark itself (no valgrind here)."""

    def test_lists_the_rows_of_the_timed_benchmark(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        instructions.main(["--list", "--scenario", "async_call", "--loop", "uvloop"])
        listed = capsys.readouterr().out.splitlines()
        timed = [p.name for g in groups_of(QUICK, ["uvloop"], ["async_call"]) for p in g.patterns]
        assert listed == timed
        assert ACTIVITY_WAIT in listed

    def test_a_row_is_named_by_text_that_only_it_contains(self) -> None:
        with pytest.raises(SystemExit, match="no row of async_call on trio match 'nothing'"):
            instructions.count("async_call", "trio", "nothing")
        with pytest.raises(SystemExit, match=r"\d+ rows of async_call on asyncio match 'aiojobs'"):
            instructions.count("async_call", "asyncio", "aiojobs")

    def test_a_run_s_fixed_costs_cancel_out(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Both counted runs pay a run's fixed costs, so none of them lands on the calls."""
        warm_up, fixed, per_call = 9_000_000, 2_000_000, 40_000

        def whole_run(scenario: str, loop: str, row: str, calls: int) -> int:
            # What a child costs: its warm-up, then a run of its own (a full
            # collection, a new loop, the activity opened and closed) and its calls.
            assert (scenario, loop, row) == ("async_call", "uvloop", "overflow=WAIT")
            return warm_up + (fixed + per_call * calls if calls else 0)

        monkeypatch.setattr(instructions, "_instructions", whole_run)
        assert instructions.count("async_call", "uvloop", "overflow=WAIT", 5_000) == per_call
        assert instructions.count("async_call", "uvloop", "overflow=WAIT", 7) == per_call
        with pytest.raises(SystemExit, match="--calls must be at least 5, not 4"):
            instructions.count("async_call", "uvloop", "overflow=WAIT", 4)

    def test_the_counted_process_runs_the_row(self) -> None:
        """What valgrind runs: the warm-up and the counted calls, in a child process."""
        done = subprocess.run(
            [
                sys.executable,
                str(ROOT / "benchmarks" / "instructions.py"),
                "--child",
                "50",
                "--scenario",
                "sync_call",
                "--loop",
                "asyncio",
                "--row",
                "activity",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == ""


def test_the_package_does_not_import_the_benchmark() -> None:
    """The wheel ships ``activity`` alone: none of its modules may import ``benchmarks``."""
    modules = sorted((ROOT / "activity").rglob("*.py"))
    assert modules
    for module in modules:
        tree = ast.parse(module.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.partition(".")[0] != "benchmarks", module


def test_memory_rows_keep_their_cap_on_repetitions() -> None:
    """Memory figures are deterministic to a few bytes: their rows run fewer times."""
    memory = [group for group in groups_of(QUICK, ["asyncio"], ["memory"]) if group.repeat]
    assert [group.scenario for group in memory] == ["memory_queued", "memory_running"]
    notes: list[str] = []
    for group in memory:
        kept: Group = drop_missing(group, notes)
        assert kept.repeat == group.repeat == QUICK.memory_repeat
        assert kept.patterns == group.patterns  # aiojobs is installed: nothing dropped
    assert notes == []


def _row(loop: Loop, pattern: str, role: Role, median: float, naive: bool = False) -> Row:
    return Row("async_call", loop, pattern, role, 10, "us", [median], naive=naive)


def test_the_strongest_rows_are_chosen_whatever_their_order() -> None:
    """Ratios and targets are taken against the fastest row of each kind, naive ones included."""
    rows = [
        _row("asyncio", ACTIVITY_WAIT, "activity", 3.0),
        _row("asyncio", ACTIVITY_UNBOUNDED, "activity", 7.5),
        _row("asyncio", "bare", "baseline", 4.0, naive=True),
        _row("asyncio", "spawn", "baseline", 2.0),
        _row("asyncio", "pool(100)", "reference", 1.6),
        _row("asyncio", "pool", "reference", 1.5),
        _row("asyncio", "aiojobs slow", "peer", 12.0),
        _row("asyncio", "aiojobs fast", "peer", 9.0),
        _row("asyncio", "aiojobs naive", "peer", 10.0, naive=True),
        _row("trio", ACTIVITY_WAIT, "activity", 5.0),
        _row("trio", "bare", "baseline", 4.0, naive=True),  # a naive row can be the fastest
        _row("trio", "spawn", "baseline", 4.5),
    ]
    assert baseline_of(rows[0], rows[:9]).pattern == "spawn"
    assert baseline_of(rows[9], rows[9:]).pattern == "bare"
    found = {(target.goal, target.loop): target for target in targets(rows)}
    wait = "asynchronous_call (max_pending=100, overflow=WAIT)"
    unbounded = "asynchronous_call (max_pending=N)"
    spawn = found[f"{wait} ≤ 1.5x the strongest baseline", "asyncio"]
    assert (spawn.value, spawn.against, spawn.met) == (1.5, "spawn", True)
    goal = found[f"{wait} ≤ 1.2x the strongest baseline (goal)", "asyncio"]
    assert (goal.value, goal.met) == (1.5, False)
    assert found[f"{unbounded} ≤ 1.5x the strongest baseline", "asyncio"].value == 3.75
    stretch = found[f"{wait} ≤ 1.0x the pool of 100 workers (stretch)", "asyncio"]
    assert (stretch.value, stretch.against) == (2.0, "pool")
    aiojobs = found[f"{wait} ≥ 1.4x faster than aiojobs' fastest pattern", "asyncio"]
    assert (aiojobs.value, aiojobs.against, aiojobs.met) == (3.0, "aiojobs fast", True)
    assert not found[f"{unbounded} ≥ 1.4x faster than aiojobs' fastest pattern", "asyncio"].met
    # trio's limit is 1.2x; a scenario with one activity row names no setting.
    trio = found["asynchronous_call ≤ 1.2x the strongest baseline", "trio"]
    assert (trio.value, trio.against, trio.met) == (1.25, "bare", False)
    assert not any(goal.endswith("(goal)") for goal, loop in found if loop == "trio")


def test_a_ratio_pairs_the_samples_of_each_repetition() -> None:
    """A ratio is the median of the repetitions' own ratios, not a ratio of medians."""
    base = Row("async_call", "asyncio", "spawn", "baseline", 10, "us", [2.0, 1.0, 6.0])
    # The machine was fast in the second repetition and slow in the third.
    row = Row("async_call", "asyncio", "activity", "activity", 10, "us", [1.6, 3.0, 12.0])
    assert row.median / base.median == pytest.approx(1.5)  # 3.0 of one, 2.0 of another
    assert paired_ratio(row, base) == pytest.approx(2.0)  # the median of 0.8, 3.0 and 2.0
    assert paired_ratio(base, base) == 1.0
    # A row that stopped early (a cap on its repetitions) is paired only where both ran.
    capped = Row("async_call", "asyncio", "activity", "activity", 10, "us", [4.0])
    assert paired_ratio(capped, base) == pytest.approx(2.0)
    assert paired_ratio(Row("async_call", "asyncio", "x", "activity", 1, "us", []), base) is None
