"""Running/pending accounting, the bounded FIFO queue, and partitions.

Two records take part in every admission decision:

- :class:`Counters`, one per activity: what its ``statistics()`` report. At
  every point where user code can look,
  ``accepted == pending + running + completed + failed + cancelled``, where
  ``running`` still counts the calls waiting for a thread (``statistics()``
  reports those apart, as ``waiting_for_thread``).
- :class:`Admission`, the *budget*: the places to run (``max_concurrency``),
  the places to wait (``max_pending``), the FIFO queue and the parked
  submitters. An activity has its own, unless it names a partition: then all
  the activities of that partition (on one event loop) share one budget, so a
  burst in one partition cannot take the places of another.

Everything here is O(1) per call: a pending call is one entry in a deque (no
task, no future), and a call cancelled while pending stays in the deque as a
tombstone that the pump (``_submit``) skips, instead of being searched for.
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

from ._call import COMPLETED, FAILED, HOLDS_SLOT, PENDING, RUNNING, BaseCall, CallStatus
from ._errors import InvalidArgumentError

if TYPE_CHECKING:
    from ._call import Event

__all__ = ["Admission", "Waiter", "join_partition"]


class Waiter:
    """A submitter parked until the queue has room (``Overflow.WAIT``, ``synchronous_call``)."""

    __slots__ = ("call", "event", "refused")

    def __init__(self, call: BaseCall[Any], event: Event) -> None:
        self.call = call
        self.event = event
        #: Set (to an exception) when admission closes while the waiter waits.
        self.refused: BaseException | None = None


class Admission:
    """An admission budget: slots to run, places to wait, shared by a partition's activities."""

    __slots__ = (
        "__weakref__",
        "max_concurrency",
        "max_pending",
        "partition",
        "pending",
        "queue",
        "slots",
        "waiters",
    )

    def __init__(self, max_concurrency: int, max_pending: int, partition: str | None) -> None:
        self.max_concurrency = max_concurrency
        self.max_pending = max_pending
        #: The partition's name, or ``None`` for an activity's own budget.
        self.partition = partition
        #: Calls that hold one of the ``max_concurrency`` places.
        self.slots = 0
        #: Live (not cancelled) calls in the queue.
        self.pending = 0
        self.queue: deque[BaseCall[Any]] = deque()
        self.waiters: deque[Waiter] = deque()

    def can_run_now(self) -> bool:
        """Whether a new call may start at once without overtaking anyone."""
        return self.slots < self.max_concurrency and not self.pending and not self.waiters

    def can_queue(self) -> bool:
        """Whether a new call may wait in the queue without overtaking a waiter."""
        return self.pending < self.max_pending and not self.waiters

    def accept_running(self, call: BaseCall[Any], *, hold_slot: bool = True) -> None:
        """Count ``call`` as accepted and running."""
        counters = call.host.counters
        counters.accepted += 1
        counters.started += 1
        call.state = RUNNING
        if hold_slot:
            self.slots += 1
            call.flags |= HOLDS_SLOT

    def accept_pending(self, call: BaseCall[Any]) -> None:
        """Count ``call`` as accepted and put it at the end of the queue."""
        counters = call.host.counters
        counters.accepted += 1
        self.pending += 1
        self.queue.append(call)

    def pop_waiter(self) -> Waiter | None:
        """Take the oldest waiter if the queue (or a slot) has room for it."""
        if not self.waiters:
            return None
        if self.pending < self.max_pending or (
            self.slots < self.max_concurrency and not self.pending
        ):
            return self.waiters.popleft()
        return None

    def finish(self, call: BaseCall[Any], status: CallStatus) -> bool:
        """Count ``call`` as ended with ``status``; return whether it freed a place."""
        counters = call.host.counters
        freed = False
        if call.state is RUNNING:
            flags = call.flags
            if flags & HOLDS_SLOT:
                call.flags = flags ^ HOLDS_SLOT
                self.slots -= 1
                freed = True
        else:
            counters.unstarted += 1
            self.pending -= 1
            freed = True  # a place in the queue, which a waiter may want
        if status is COMPLETED:
            counters.completed += 1
        elif status is FAILED:
            counters.failed += 1
        else:
            counters.cancelled += 1
        call.state = status
        return freed

    def take_pending_of(self, activity: object) -> list[BaseCall[Any]]:
        """Take ``activity``'s live pending calls out of the queue (for cancellation).

        O(queue length), which only cancellation pays.
        """
        mine = [call for call in self.queue if call.host is activity]
        if len(mine) == len(self.queue):
            self.queue.clear()
        else:
            self.queue = deque(call for call in self.queue if call.host is not activity)
        return [call for call in mine if call.state is PENDING]

    def take_waiters_of(self, activity: object) -> list[Waiter]:
        """Take ``activity``'s parked submitters (for refusal)."""
        mine = [w for w in self.waiters if w.call.host is activity]
        if mine:
            self.waiters = deque(w for w in self.waiters if w.call.host is not activity)
        return mine


_partitions: weakref.WeakValueDictionary[tuple[int, str], Admission] = weakref.WeakValueDictionary()


def join_partition(name: str, max_concurrency: int, max_pending: int) -> Admission:
    """Return the budget of partition ``name`` on this thread's loop, creating it.

    The first activity to open a partition sets its limits; a later one must ask
    for the same limits.

    :raises InvalidArgumentError: if the limits differ from the partition's
    """
    key = (threading.get_ident(), name)
    budget = _partitions.get(key)
    if budget is None:
        budget = Admission(max_concurrency, max_pending, name)
        _partitions[key] = budget
        return budget
    for field, theirs, ours in (
        ("max_concurrency", budget.max_concurrency, max_concurrency),
        ("max_pending", budget.max_pending, max_pending),
    ):
        if theirs != ours:
            raise InvalidArgumentError(
                f"partition {name!r} has {field}={theirs}; an activity joining it asked "
                f"for {field}={ours} (activities of one partition share one budget)",
                field=field,
                value=ours,
            )
    return budget
