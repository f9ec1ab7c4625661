"""The scenarios, one module each; :data:`SCENARIOS` names them in the order they run.

Each module has a ``groups(loop, sizes)`` function that returns the scenario's
groups of rows on one loop (none where the scenario does not run on it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from benchmarks.scenarios import async_call, blocking, memory, scaling, sync_call

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from benchmarks.harness import Group, Loop, Sizes

__all__ = ["SCENARIOS", "groups_of"]

#: Each scenario's ``groups`` function, by the name ``--scenario`` takes.
SCENARIOS: Final[dict[str, Callable[[Loop, Sizes], list[Group]]]] = {
    "async_call": async_call.groups,
    "sync_call": sync_call.groups,
    "blocking": blocking.groups,
    "memory": memory.groups,
    "scaling": scaling.groups,
}


def groups_of(sizes: Sizes, loops: Sequence[Loop], scenarios: Sequence[str]) -> list[Group]:
    """The groups of ``scenarios`` on each of ``loops``, scenario by scenario.

    :raises KeyError: if a scenario has no module
    """
    return [group for name in scenarios for loop in loops for group in SCENARIOS[name](loop, sizes)]
