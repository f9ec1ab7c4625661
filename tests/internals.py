"""A way in to an activity's core, for the tests that look inside it."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from activity._context import frame_var

if TYPE_CHECKING:
    from activity import Activity
    from activity._lifecycle import Core


def core_of(act: Activity) -> Core:
    """The core of ``act``; call it in ``act``'s own block, where the core is the frame."""
    frame = frame_var.get()
    assert frame is not None and frame.host.activity is act, "not in the activity's block"
    return cast("Core", frame.host)
