"""What ``dir()`` shows of each public module: its public names, and nothing it imported.

A user exploring the package in a shell or an editor's completion should see
``activity.tracking.add_listener``, not ``activity.tracking.weakref``. Every
public module (no underscore in its dotted name) defines ``__all__`` and a
module ``__dir__`` that lists exactly it.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

import pytest

import activity


def public_modules() -> list[str]:
    names = ["activity"]
    for info in pkgutil.walk_packages(activity.__path__, "activity."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        names.append(info.name)
    return sorted(names)


def test_the_public_modules_are_found() -> None:
    found = public_modules()
    assert "activity.tracking" in found
    assert "activity.integrations.asgi" in found
    assert not [name for name in found if "._" in name]


@pytest.mark.parametrize("name", public_modules())
def test_dir_shows_the_public_names_only(name: str) -> None:
    module: ModuleType = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    # A package also shows the submodules that were imported (set on it by the import).
    submodules: set[str] = set()
    if hasattr(module, "__path__"):
        submodules = {attr for attr in dir(module) if isinstance(getattr(module, attr), ModuleType)}
    shown = {attr for attr in dir(module) if not attr.startswith("_")} - submodules
    assert shown == set(exported), f"{name}: dir() differs from __all__"
    missing = [attr for attr in exported if not hasattr(module, attr)]
    assert not missing, f"{name}.__all__ names what it does not define: {missing}"
