from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, settings

pytest_plugins = ["pytester"]

NO_OPTIONS: dict[str, Any] = {}
BACKENDS = [
    pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    pytest.param(("trio", NO_OPTIONS), id="trio"),
]

# Hypothesis profiles. ``ci`` (loaded by default) keeps Hypothesis' usual number of
# examples for the ordinary @given tests, sizes the stateful fuzzer
# (tests/test_fuzz.py) to about ten seconds per event loop on two cores, and is
# derandomized so that a red run always means a change in the code. ``long`` is
# random and runs thousands of programs:
#     python -m pytest -m fuzz --hypothesis-profile=long tests/test_fuzz.py
_SLOW_IS_FINE = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    database=None,
    stateful_step_count=16,
    suppress_health_check=_SLOW_IS_FINE,
)
settings.register_profile(
    "long",
    deadline=None,
    max_examples=2000,
    stateful_step_count=60,
    suppress_health_check=_SLOW_IS_FINE,
)
settings.load_profile("ci")


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> object:
    """Every contract test runs on asyncio, uvloop and trio."""
    return request.param
