"""``__all__`` and the real exports never drift apart."""

from __future__ import annotations

import subprocess
import sys
import types

import activity


def test_all_names_exist_and_are_public() -> None:
    assert isinstance(activity.__all__, tuple)
    assert sorted(activity.__all__) == list(activity.__all__)
    for name in activity.__all__:
        assert hasattr(activity, name), name
    public = {
        name
        for name, value in vars(activity).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(activity.__all__)


def test_exported_objects_say_they_come_from_activity() -> None:
    for name in activity.__all__:
        obj = getattr(activity, name)
        assert getattr(obj, "__module__", "activity") == "activity", name


def test_design_names_are_exported() -> None:
    required = {
        "Activity",
        "create_activity",
        "current_activity",
        "ActivityConfig",
        "ActivityStatistics",
        "ActivityLocal",
        "Call",
        "CallStatus",
        "Overflow",
        "HResult",
        "hresult_of",
        "error_from_hresult",
        "ActivityError",
        "InvalidArgumentError",
        "OutOfMemoryError",
        "ActivityFailedError",
        "AsyncWorkRejectedError",
        "CallCancelledError",
        "CallTimeoutError",
        "WrongThreadError",
        "ActivityClosedError",
    }
    assert required <= set(activity.__all__)


def test_importing_activity_imports_no_framework() -> None:
    code = (
        "import sys, activity; "
        "bad = [m for m in ('starlette', 'fastapi', 'aiohttp', 'litestar', 'rich', 'trio') "
        "if m in sys.modules]; print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
