"""Importing activity imports no web framework; a missing one names its extra."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

FRAMEWORKS = ("starlette", "fastapi", "litestar", "aiohttp", "uvicorn", "hypercorn", "httpx")


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_activity_and_the_asgi_middleware_import_no_framework() -> None:
    result = run(
        f"""
        import sys
        import activity
        import activity.integrations
        import activity.integrations.asgi
        loaded = sorted(name for name in {FRAMEWORKS!r} if name in sys.modules)
        assert not loaded, loaded
        """
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("module", "framework"),
    [
        ("starlette", "Starlette"),
        ("fastapi", "FastAPI"),
        ("litestar", "Litestar"),
        ("aiohttp", "aiohttp"),
    ],
)
def test_a_missing_framework_names_its_extra(module: str, framework: str) -> None:
    missing = module  # each module is named after the package it needs
    result = run(
        f"""
        import sys
        sys.modules[{missing!r}] = None  # as if it were not installed
        try:
            import activity.integrations.{module}
        except ImportError as exc:
            assert exc.__cause__ is None and exc.__suppress_context__, "from None"
            print(exc)
        else:
            raise SystemExit("imported without {missing}")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"activity.integrations.{module} needs {framework}: pip install 'activity[{module}]'"
    )
