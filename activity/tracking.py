"""Statistics and events for every activity (COM+'s tracker service).

``Activity.statistics()`` returns an :class:`ActivityStatistics` record. This
module also knows every live activity (:func:`live_activities`) and lets
monitoring code subscribe to what happens (:func:`add_listener`)::

    from activity import tracking

    remove = tracking.add_listener(lambda event: print(event.kind, event.activity.name))

Listeners are called synchronously on the activity's event-loop thread; one
that raises is removed and its exception is re-raised when the activity exits
(it is never only logged).
"""

from __future__ import annotations

import enum
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from ._activity import Activity
    from ._call import Call

__all__ = [
    "ActivityStatistics",
    "EventKind",
    "PartitionStatistics",
    "TrackingEvent",
    "add_listener",
    "live_activities",
]


class ActivityStatistics(BaseModel):
    """A frozen snapshot of an activity's counters.

    At every snapshot ``accepted == pending + running + completed + failed + cancelled``;
    ``rejected`` counts the calls that were never accepted.

    .. versionadded:: 0.1
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: The activity's name.
    name: str
    #: The activity's id.
    id: int
    #: Calls accepted (``asynchronous_call`` returned, or ``synchronous_call`` began).
    accepted: int
    #: Calls refused because the queue was full (never run).
    rejected: int
    #: Accepted calls waiting for a place to run.
    pending: int
    #: Calls whose body is running.
    running: int
    #: Calls that returned.
    completed: int
    #: Calls that raised, timed out or returned a failing HResult.
    failed: int
    #: Calls cancelled on purpose.
    cancelled: int
    #: The limits the counters run against (the partition's, in a partition).
    max_concurrency: int
    max_pending: int
    #: The partition whose budget the activity shares, if any.
    partition: str | None = None

    @property
    def finished(self) -> int:
        """Calls that ended: completed + failed + cancelled."""
        return self.completed + self.failed + self.cancelled

    @property
    def in_flight(self) -> int:
        """Accepted calls that have not ended: pending + running."""
        return self.pending + self.running


class PartitionStatistics(BaseModel):
    """A frozen snapshot of a partition's shared admission budget.

    .. versionadded:: 0.1
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: The partition's name.
    name: str
    #: Calls of the partition's activities that hold a place to run.
    running: int
    #: Accepted calls of the partition's activities waiting for a place.
    pending: int
    #: Submitters parked until the queue has room (``Overflow.WAIT``).
    waiting: int
    max_concurrency: int
    max_pending: int


class EventKind(enum.Enum):
    """What a :class:`TrackingEvent` reports."""

    ACTIVITY_OPENED = "activity_opened"
    ACTIVITY_CLOSED = "activity_closed"
    CALL_REJECTED = "call_rejected"
    CALL_FINISHED = "call_finished"


@dataclass(frozen=True, slots=True)
class TrackingEvent:
    """One thing that happened to an activity or one of its calls."""

    kind: EventKind
    activity: Activity
    #: The call, for ``CALL_FINISHED``; ``None`` otherwise.
    call: Call[Any] | None = None


Listener = Callable[[TrackingEvent], object]

_listeners: list[Listener] = []
_live: weakref.WeakSet[Activity] = weakref.WeakSet()


def add_listener(listener: Listener) -> Callable[[], None]:
    """Call ``listener(event)`` for every :class:`TrackingEvent` of every activity.

    :param listener: a plain callable; it must not block
    :return: a function that removes the listener
    """
    if not callable(listener):
        from ._errors import InvalidArgumentError

        raise InvalidArgumentError(
            f"listener must be callable, got {listener!r}", field="listener", value=listener
        )
    _listeners.append(listener)

    def remove() -> None:
        if listener in _listeners:
            _listeners.remove(listener)

    return remove


def live_activities() -> list[Activity]:
    """Return the activities that are open now (entered and not yet closed)."""
    return list(_live)


def emit(kind: EventKind, activity: Activity, call: Call[Any] | None = None) -> None:
    """Tell the listeners; a listener that raises is removed and handed to the activity."""
    event = TrackingEvent(kind, activity, call)
    for listener in list(_listeners):
        try:
            listener(event)
        except Exception as exc:
            if listener in _listeners:
                _listeners.remove(listener)
            activity._listener_failed(exc)


ActivityStatistics.__module__ = "activity"
PartitionStatistics.__module__ = "activity"
