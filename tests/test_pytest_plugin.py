from __future__ import annotations

import pytest

from activity import ActivityStatistics
from activity.pytest_plugin import assert_balanced


def _stats(**counts: int) -> ActivityStatistics:
    base: dict[str, object] = {"name": "t", "id": 1, "max_concurrency": 1, "max_pending": 1}
    for name in ("accepted", "rejected", "pending", "running", "completed", "failed", "cancelled"):
        base[name] = counts.get(name, 0)
    return ActivityStatistics.model_validate(base)


def test_assert_balanced() -> None:
    assert_balanced(_stats(accepted=3, completed=1, failed=1, cancelled=1))
    with pytest.raises(AssertionError, match="lost calls"):
        assert_balanced(_stats(accepted=3, completed=1))


def test_activity_factory_fixture(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("")
    pytester.makepyfile(
        """
        import anyio
        import pytest

        pytestmark = pytest.mark.anyio

        @pytest.fixture
        def anyio_backend():
            return "asyncio"

        async def test_good(activity_factory):
            async with activity_factory(name="fine") as act:
                await act.asynchronous_call(anyio.lowlevel.checkpoint)

        async def test_left_open(activity_factory):
            act = activity_factory(name="left-open")
            await act.__aenter__()
            await act.asynchronous_call(anyio.sleep_forever)
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "ignore")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*left-open*was never closed*"])
