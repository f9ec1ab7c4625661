"""Fixtures for testing code that uses :mod:`activity`.

Registered automatically (``pytest11`` entry point) when ``activity`` is
installed. It imports nothing but pytest, so it costs nothing where unused.

``activity_factory`` makes activities with test-friendly defaults (a short
``shutdown_timeout``) and, when the test ends, checks that each one was closed,
has no work left, and that its counters add up: no call was lost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from ._activity import Activity
from .tracking import live_activities

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from .tracking import ActivityStatistics

__all__ = ["activity_factory", "assert_balanced"]


def __dir__() -> list[str]:
    """The module's public names only, for ``dir()`` and completion."""
    return sorted(__all__)


def assert_balanced(statistics: ActivityStatistics) -> None:
    """Assert that every accepted call is accounted for.

    :raises AssertionError: if ``accepted != pending + waiting_for_thread + running +
        completed + failed + cancelled``, or if a count is negative
    """
    counts = {
        "pending": statistics.pending,
        "waiting_for_thread": statistics.waiting_for_thread,
        "running": statistics.running,
        "completed": statistics.completed,
        "failed": statistics.failed,
        "cancelled": statistics.cancelled,
    }
    negative = [name for name, count in counts.items() if count < 0]
    assert not negative, (
        f"activity {statistics.name!r} has negative counts {negative} ({statistics!r})"
    )
    total = sum(counts.values())
    assert statistics.accepted == total, (
        f"activity {statistics.name!r} lost calls: accepted={statistics.accepted} but "
        f"pending+waiting_for_thread+running+completed+failed+cancelled={total} ({statistics!r})"
    )


@pytest.fixture
def activity_factory() -> Iterator[Callable[..., Activity]]:
    """Return ``make(**options) -> Activity``; at teardown, check each one closed and balanced."""
    made: list[Activity] = []

    def make(*args: Any, **options: Any) -> Activity:
        options.setdefault("shutdown_timeout", 5.0)
        act = Activity(*args, **options)
        made.append(act)
        return act

    yield make
    live = live_activities()
    for act in made:
        stats = act.statistics()
        assert_balanced(stats)
        assert act not in live, f"activity {act.name!r} was never closed: {stats!r}"
        assert stats.in_flight == 0, f"activity {act.name!r} still has work: {stats!r}"
