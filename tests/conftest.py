from __future__ import annotations

from typing import Any

import pytest

pytest_plugins = ["pytester"]

NO_OPTIONS: dict[str, Any] = {}
BACKENDS = [
    pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    pytest.param(("trio", NO_OPTIONS), id="trio"),
]


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> object:
    """Every contract test runs on asyncio, uvloop and trio."""
    return request.param
