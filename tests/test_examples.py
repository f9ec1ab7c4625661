"""The examples run, and print what their docstrings promise, line for line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

EXPECTED = {
    "keyed.py": [
        "processed 120 events of 30 orders: 118 applied, 2 refused",
        "every order saw its events in arrival order: True",
        "at most one event per order at once: True",
        "orders side by side, never more than the parent's max_concurrency: True",
        "order-7: refused 'shipped' after 'created'",
        "order-19: refused 'delivered' after 'paid'",
        "hot order: 6 accepted, 4 rejected by its own queue; order-0 still accepted",
        "order-0's activity was reclaimed when idle and made again: True",
        "statistics: accepted=128 completed=126 failed=2 rejected=4",
    ],
    "quickstart.py": [
        "statuses: running, running, pending",
        "page 1 fetched for req-42",
        "page 2 fetched for req-42",
        "page 3 fetched for req-42",
        "word_count: 6, hresult of the last fetch: S_OK",
        "outside the activity, request_id is '-'",
        "statistics: accepted=4 completed=4 failed=0 cancelled=0 rejected=0",
    ],
    "blocking_work.py": [
        "chunk 0: ad7facb2586f for acme in hashing",
        "chunk 1: d4df50ce982e for acme in hashing",
        "chunk 2: 5131b6d905f8 for acme in hashing",
        "chunk 3: df6fadaed686 for acme in hashing",
        "chunk 4: 9573e6bd3320 for acme in hashing",
        "chunk 5: 829066cb06aa for acme in hashing",
        "ran on the event loop's thread: False",
        "6 calls on 2 worker threads, at most 2 at once",
    ],
    "error_handling.py": [
        "awaited: ValueError, hresult E_INVALIDARG",
        "rejected: CO_E_ASYNC_WORK_REJECTED",
        "error_handler: parse-x failed with E_INVALIDARG",
        "on_error: PermissionError: no write access to the bucket",
        "error_handler: upload failed with E_ACCESSDENIED",
        "error_handler: slow failed with E_TIMEOUT",
        "timed out: CallTimeoutError, hresult E_TIMEOUT",
        "raised at exit: ValueError: invalid literal for int() with base 10: 'oops'",
    ],
    "synchronization.py": [
        "balance after 100 concurrent deposits: 100",
        "ledger -> audit -> ledger: audited 100",
        "inside the block, the call is admitted (running) but waits",
        "after the block, it ran: completed, balance 110",
    ],
    "threads.py": [
        "connection opened on activity-orders-sta",
        "total ordered: 12",
        "bound to the loop thread: True",
        "from a plain thread: 6",
    ],
    "nesting_and_partitions.py": [
        "child 'job' of 'service' sees region 'eu-west'",
        "the child's own value: 'eu-north'",
        "the parent kept 'eu-west'",
        "acme burst: 3 accepted, 2 rejected (2 running + 1 pending)",
        "globex still admits: 1 running of 2",
    ],
    "observability.py": [
        "report 1: 2 pages",
        "report 2: 4 pages",
        "report 3: 6 pages",
        "span 'report request render' is a child of 'GET /report': True",
        "span 'report request render' was current in its worker thread: True",
        (
            "activity_call_duration_seconds_count"
            '{activity_call_kind="coroutine",activity_name="reports"} 3.0'
        ),
        (
            "activity_calls_completed_total"
            '{activity_call_kind="blocking",activity_name="report request"} 3.0'
        ),
        (
            "activity_calls_completed_total"
            '{activity_call_kind="coroutine",activity_name="reports"} 3.0'
        ),
        'activity_calls_running{activity_name="reports"} 0.0',
        "statistics: reports completed=3, run time p99 known: True",
    ],
    "cluster.py": [
        "8 chunks for acme, none computed in this process",
        "primes below 200000: 17984",
        "a failed chunk: ValueError: chunk -1 is negative",
        "a chunk cancelled while it ran: cancelled",
        "statistics: accepted=10 completed=8 failed=1 cancelled=1 rejected=0",
    ],
    "web_app.py": [
        "receipt order-1 for acme: 1 x book",
        "receipt order-2 for globex: 1 x lamp",
        "receipt order-3 for initech: 1 x stapler",
        "shipped book for acme (order-1)",
        "shipped lamp for globex (order-2)",
        "shipped stapler for initech (order-3)",
        "6 orders at once, no courier on duty: 4 accepted, 2 refused",
        "refused with 503 CO_E_ASYNC_WORK_REJECTED, Retry-After: 1",
        "shop: running=2 pending=2 rejected=2",
        "shut down with jobs waiting: accepted=7 completed=3 cancelled=4 failed=0, none lost",
    ],
}


def run_example(name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_every_example_is_tested() -> None:
    assert sorted(path.name for path in (ROOT / "examples").glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str) -> None:
    result = run_example(name)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no traceback, no "never awaited" warning
    assert result.stdout.splitlines() == EXPECTED[name]
