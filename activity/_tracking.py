"""The low half of tracking: statistics records, the listeners, the live activities.

The activity's core reports here; :mod:`activity.tracking` is the public face
(it builds each :class:`~activity.tracking.TrackingEvent`, and knows the
public types this module never names).
"""

from __future__ import annotations

import enum
import weakref
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "ActivityStatistics",
    "EventKind",
    "PartitionStatistics",
    "Reporter",
    "emit",
    "listeners",
    "live",
]


class ActivityStatistics(BaseModel):
    """A frozen snapshot of an activity's counters.

    At every snapshot ``accepted == pending + running + completed + failed + cancelled``;
    ``rejected`` counts the calls that were never accepted.

    .. versionadded:: 0.1
    """

    model_config: ClassVar[ConfigDict] = ConfigDict(frozen=True, extra="forbid")

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

    model_config: ClassVar[ConfigDict] = ConfigDict(frozen=True, extra="forbid")

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


class Reporter(Protocol):
    """An activity's core, as tracking sees it."""

    @property
    def activity(self) -> Any:
        """The public :class:`~activity.Activity`."""
        ...

    def listener_failed(self, error: BaseException) -> None: ...


#: Each takes (kind, activity, call) and tells one user listener; set by ``activity.tracking``.
listeners: list[Callable[[EventKind, Any, Any], object]] = []
#: The public activities that are open now.
live: weakref.WeakSet[Any] = weakref.WeakSet()


def emit(kind: EventKind, reporter: Reporter, call: Any = None) -> None:
    """Tell the listeners; a listener that raises is removed and handed to the activity."""
    activity = reporter.activity
    for listener in list(listeners):
        try:
            listener(kind, activity, call)
        except Exception as exc:
            if listener in listeners:
                listeners.remove(listener)
            reporter.listener_failed(exc)


ActivityStatistics.__module__ = "activity"
PartitionStatistics.__module__ = "activity"
