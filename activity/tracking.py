"""Statistics and events for every activity (COM+'s tracker service).

``Activity.statistics()`` returns an :class:`ActivityStatistics` record, with
the calls' wait and run percentiles as :class:`LatencyStatistics`. This
module also knows every live activity (:func:`live_activities`) and lets
monitoring code subscribe to what happens (:func:`add_listener`)::

    from activity import tracking

    remove = tracking.add_listener(lambda event: print(event.kind, event.activity.name))

Listeners are called synchronously on the activity's event-loop thread; one
that raises is removed and its exception is re-raised when the activity exits
(it is never only logged).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from . import _tracking
from ._errors import InvalidArgumentError
from ._tracking import ActivityStatistics, EventKind, LatencyStatistics, PartitionStatistics

if TYPE_CHECKING:
    from ._activity import Activity, Call

__all__ = [
    "ActivityStatistics",
    "EventKind",
    "LatencyStatistics",
    "PartitionStatistics",
    "TrackingEvent",
    "add_listener",
    "live_activities",
]


def __dir__() -> list[str]:
    """The module's public names only, for ``dir()`` and completion."""
    return sorted(__all__)


@dataclass(frozen=True, slots=True)
class TrackingEvent:
    """One thing that happened to an activity or one of its calls."""

    kind: EventKind
    activity: Activity
    #: The call, for ``CALL_FINISHED`` and ``CALL_REJECTED``; ``None`` otherwise.
    call: Call[Any] | None = None


Listener = Callable[[TrackingEvent], object]


def add_listener(listener: Listener) -> Callable[[], None]:
    """Call ``listener(event)`` for every :class:`TrackingEvent` of every activity.

    :param listener: a plain callable; it must not block
    :return: a function that removes the listener
    """
    if not callable(listener):
        raise InvalidArgumentError(
            f"listener must be callable, got {listener!r}", field="listener", value=listener
        )

    def tell(kind: EventKind, activity: Any, call: Any) -> None:
        listener(TrackingEvent(kind, activity, call))

    _tracking.listeners.append(tell)

    def remove() -> None:
        if tell in _tracking.listeners:
            _tracking.listeners.remove(tell)

    return remove


def live_activities() -> list[Activity]:
    """Return the activities that are open now (entered and not yet closed)."""
    return cast("list[Activity]", list(_tracking.live))
