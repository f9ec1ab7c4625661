"""The command line: ``python -m activity`` and its ``demo``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from activity import ActivityStatistics, CallStatus
from activity.__main__ import FLOOD_FACTOR, Kind, Report, main, plan_items

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["demo", "--size", "300", "--queue", "20", "--concurrency", "5", "--no-progress"]
OPTIONS = ["--size", "--concurrency", "--queue", "--threads", "--seed", "--no-progress", "--json"]


def run_json(capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    assert main([*SMALL, "--json", *extra]) == 0
    summary: dict[str, Any] = json.loads(capsys.readouterr().out)
    return summary


def python(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


COUNTERS = ("accepted", "rejected", "pending", "running", "completed", "failed", "cancelled")


def statistics(**counters: int) -> ActivityStatistics:
    fields: dict[str, object] = {name: counters.get(name, 0) for name in COUNTERS}
    return ActivityStatistics.model_validate(
        {"name": "demo", "id": 1, "max_concurrency": 5, "max_pending": 20, **fields}
    )


class TestDemo:
    def test_counters_add_up(self, capsys: pytest.CaptureFixture[str]) -> None:
        summary = run_json(capsys)
        assert summary["ok"] is True
        assert summary["problems"] == []
        assert summary["items"] == 300
        assert (
            summary["accepted"] == summary["completed"] + summary["failed"] + summary["cancelled"]
        )
        assert summary["accepted"] + summary["rejected"] == 300
        assert summary["rejected"] > 0  # a flood always overflows the small queue
        assert summary["failed"] > 0
        assert sum(summary["failures"].values()) == summary["failed"]
        assert set(summary["failures"]) <= {"E_FAIL", "E_INVALIDARG", "E_ACCESSDENIED", "E_TIMEOUT"}
        assert 0 < summary["p50_ms"] <= summary["p99_ms"]
        assert summary["wall_s"] > 0
        assert summary["calls_per_s"] > 0
        assert summary["options"] == {
            "size": 300,
            "concurrency": 5,
            "queue": 20,
            "threads": 4,
            "seed": 0,
        }

    def test_options_reach_the_activity(self, capsys: pytest.CaptureFixture[str]) -> None:
        summary = run_json(capsys, "--seed", "3", "--threads", "1", "--size", "120")
        assert summary["ok"] is True
        assert summary["options"]["seed"] == 3
        assert summary["options"]["threads"] == 1
        assert summary["accepted"] + summary["rejected"] == summary["items"] == 120

    def test_table(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(SMALL) == 0
        output = capsys.readouterr().out
        for row in ("accepted", "rejected", "completed", "failed", "cancelled"):
            assert row in output
        for row in ("p50 latency", "p99 latency", "wall time", "calls/s"):
            assert row in output

    def test_progress_goes_to_stderr(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main([*SMALL[:-1], "--json"]) == 0
        captured = capsys.readouterr()
        assert "300/300" in captured.err  # every item settled, of all the items
        assert "finished" in captured.err
        assert "/s eta" in captured.err
        json.loads(captured.out)  # the bar does not spoil the JSON

    def test_exit_code_1_when_counters_do_not_add_up(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def problems(self: Report) -> list[str]:
            return ["simulated loss"]

        monkeypatch.setattr(Report, "problems", problems)
        assert main([*SMALL, "--json"]) == 1
        captured = capsys.readouterr()
        assert json.loads(captured.out)["ok"] is False
        assert "activity demo: simulated loss" in captured.err

    def test_without_rich(self) -> None:
        shim = (
            "import sys; sys.modules['rich'] = None; "
            "from activity.__main__ import main; "
            "raise SystemExit(main(['demo', '--size', '10', '--no-progress']))"
        )
        result = python("-c", shim)
        assert result.returncode == 2
        assert "pip install 'activity[cli]'" in result.stderr
        assert result.stdout == ""

    def test_python_dash_m(self) -> None:
        result = python("-m", "activity", *SMALL, "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["ok"] is True


class TestReport:
    def test_nothing_lost(self) -> None:
        report = Report(size=10, options={})
        report.at_end_of_production = statistics(accepted=8, rejected=2, running=3, completed=5)
        report.final = statistics(accepted=8, rejected=2, completed=6, failed=1, cancelled=1)
        report.seen = Counter(
            {CallStatus.COMPLETED: 6, CallStatus.FAILED: 1, CallStatus.CANCELLED: 1}
        )
        report.failures = Counter({"E_FAIL": 1})
        assert report.problems() == []

    def test_lost_call(self) -> None:
        report = Report(size=10, options={})
        report.at_end_of_production = statistics(accepted=8, rejected=2, running=3, completed=5)
        report.final = statistics(accepted=8, rejected=2, completed=6, failed=1)
        report.seen = Counter({CallStatus.COMPLETED: 6, CallStatus.FAILED: 1})
        report.failures = Counter({"E_FAIL": 1})
        assert report.problems() == [
            "accepted (8) != completed (6) + failed (1) + cancelled (0)",
        ]

    def test_unobserved_failure_and_missing_item(self) -> None:
        report = Report(size=11, options={})
        report.at_end_of_production = statistics(accepted=8, rejected=2, running=3, completed=5)
        report.final = statistics(accepted=8, rejected=2, completed=7, failed=1)
        report.seen = Counter({CallStatus.COMPLETED: 7, CallStatus.FAILED: 1})
        problems = report.problems()
        assert "accepted (8) + rejected (2) != items submitted (11)" in problems
        assert "the error handler saw 0 failures, the activity counted 1" in problems

    def test_not_run(self) -> None:
        assert Report(size=1, options={}).problems() == ["the batch did not run to the end"]


class TestPlan:
    def test_same_seed_same_items(self) -> None:
        assert plan_items(500, 25, seed=1) == plan_items(500, 25, seed=1)
        assert plan_items(500, 25, seed=1) != plan_items(500, 25, seed=2)

    def test_mix(self) -> None:
        plan = plan_items(3000, 550, seed=0)
        assert len(plan) == 3000
        assert [item.index for item in plan] == list(range(3000))
        assert [item.at for item in plan] == sorted(item.at for item in plan)
        kinds = Counter(item.kind for item in plan)
        assert set(kinds) == set(Kind)
        assert kinds[Kind.IO] > len(plan) / 2
        for item in plan:
            if item.kind is Kind.TIMEOUT:
                assert item.timeout is not None
                assert item.timeout < item.seconds
            if item.kind is Kind.CANCEL:
                assert item.cancel_after is not None
                assert item.cancel_after < item.seconds

    def test_floods_overflow_the_activity(self) -> None:
        capacity = 25
        arrivals = Counter(item.at for item in plan_items(300, capacity, seed=0))
        floods = [count for count in arrivals.values() if count > 1]
        assert floods
        assert all(count >= capacity * FLOOD_FACTOR[0] for count in floods)


class TestCommandLine:
    def test_help(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["--help"]) == 0
        output = capsys.readouterr().out
        assert "demo" in output
        assert "--version" in output
        assert "bench" not in output

    @pytest.mark.parametrize("argv", [["bench"], ["bench", "--quick", "--json", "out.json"]])
    def test_bench_says_where_the_benchmark_went(
        self, argv: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(argv) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        lines = captured.err.splitlines()
        assert len(lines) == 1
        assert lines[0].startswith("activity bench: ")
        assert "python benchmarks/run.py" in lines[0]

    def test_bench_with_python_dash_m(self) -> None:
        result = python("-m", "activity", "bench", "--quick")
        assert result.returncode == 2
        assert "python benchmarks/run.py" in result.stderr
        assert result.stdout == ""

    def test_demo_help_explains_each_option(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["demo", "--help"]) == 0
        output = " ".join(capsys.readouterr().out.split())  # however the terminal wraps it
        for option in OPTIONS:
            assert option in output
        assert "(default: 3000)" in output
        assert "pip install 'activity[cli]'" in output

    def test_version(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["--version"]) == 0
        assert capsys.readouterr().out.startswith("activity ")

    @pytest.mark.parametrize(
        "argv",
        [
            [],
            ["nonsense"],
            ["demo", "--size", "0"],
            ["demo", "--concurrency", "0"],
            ["demo", "--queue", "-1"],
            ["demo", "--size", "many"],
        ],
    )
    def test_usage_errors(self, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
        assert main(argv) == 2
        assert "usage: activity" in capsys.readouterr().err
