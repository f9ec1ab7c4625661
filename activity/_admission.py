"""Running/pending accounting and the bounded FIFO queue of an activity.

Everything here is O(1) per call: a pending call is one entry in a deque (no
task, no future), and a call cancelled while pending is left in the deque as a
tombstone that ``pop_ready`` skips, instead of being searched for and removed.
The counters obey one invariant at every point where user code can look:

    accepted == pending + running + completed + failed + cancelled
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from ._call import COMPLETED, FAILED, PENDING, RUNNING, Call, CallStatus

if TYPE_CHECKING:
    from ._dispatch import Event

__all__ = ["Admission", "Waiter"]


class Waiter:
    """A submitter parked until the queue has room (``Overflow.WAIT``, ``synchronous_call``)."""

    __slots__ = ("call", "event", "refused")

    def __init__(self, call: Call[Any], event: Event) -> None:
        self.call = call
        self.event = event
        #: Set (to an exception) when admission closes while the waiter waits.
        self.refused: BaseException | None = None


class Admission:
    """The admission budget of one activity: slots to run, places to wait."""

    __slots__ = (
        "accepted",
        "cancelled",
        "completed",
        "failed",
        "max_concurrency",
        "max_pending",
        "pending",
        "queue",
        "rejected",
        "running",
        "slots",
        "waiters",
    )

    def __init__(self, max_concurrency: int, max_pending: int) -> None:
        self.max_concurrency = max_concurrency
        self.max_pending = max_pending
        #: Calls that hold one of the ``max_concurrency`` places.
        self.slots = 0
        self.queue: deque[Call[Any]] = deque()
        self.waiters: deque[Waiter] = deque()
        self.accepted = 0
        self.rejected = 0
        self.pending = 0
        self.running = 0
        self.completed = 0
        self.failed = 0
        self.cancelled = 0

    def can_run_now(self) -> bool:
        """Whether a new call may start at once without overtaking anyone."""
        return self.slots < self.max_concurrency and not self.pending and not self.waiters

    def can_queue(self) -> bool:
        """Whether a new call may wait in the queue without overtaking a waiter."""
        return self.pending < self.max_pending and not self.waiters

    def accept_running(self, call: Call[Any], *, hold_slot: bool = True) -> None:
        """Count ``call`` as accepted and running."""
        self.accepted += 1
        self.running += 1
        call._status = RUNNING
        if hold_slot:
            self.slots += 1
            call._holds_slot = True

    def accept_pending(self, call: Call[Any]) -> None:
        """Count ``call`` as accepted and put it at the end of the queue."""
        self.accepted += 1
        self.pending += 1
        self.queue.append(call)

    def pop_ready(self) -> Call[Any] | None:
        """Take the oldest pending call if a slot is free, counting it as running."""
        if self.slots >= self.max_concurrency:
            return None
        queue = self.queue
        while queue:
            call = queue.popleft()
            if call._status is PENDING:
                self.pending -= 1
                self.running += 1
                self.slots += 1
                call._holds_slot = True
                call._status = RUNNING
                return call
        return None

    def pop_waiter(self) -> Waiter | None:
        """Take the oldest waiter if the queue (or a slot) has room for it."""
        if not self.waiters:
            return None
        if self.pending < self.max_pending or (
            self.slots < self.max_concurrency and not self.pending
        ):
            return self.waiters.popleft()
        return None

    def finish(self, call: Call[Any], status: CallStatus) -> bool:
        """Count ``call`` as ended with ``status``; return whether it freed a slot."""
        previous = call._status
        freed = False
        if previous is RUNNING:
            self.running -= 1
            if call._holds_slot:
                call._holds_slot = False
                self.slots -= 1
                freed = True
        else:
            self.pending -= 1
            freed = True  # a place in the queue, which a waiter may want
        if status is COMPLETED:
            self.completed += 1
        elif status is FAILED:
            self.failed += 1
        else:
            self.cancelled += 1
        call._status = status
        return freed

    def drain_pending(self) -> list[Call[Any]]:
        """Take every live pending call out of the queue (for cancellation)."""
        calls = [call for call in self.queue if call._status is PENDING]
        self.queue.clear()
        return calls

    @property
    def in_flight(self) -> int:
        """Accepted calls that have not finished."""
        return self.pending + self.running
