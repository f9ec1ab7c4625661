"""The low half of tracking: statistics records, the listeners, the live activities.

The activity's core reports here; :mod:`activity.tracking` is the public face
(it builds each :class:`~activity.tracking.TrackingEvent`, and knows the
public types this module never names).

The core also times its calls here: a :class:`Histogram` per activity for the
time a call waits before it starts and one for the time it runs, each a fixed
list of log-spaced buckets that a call adds one to (no list grows per call, no
sort). :data:`hook` is where :mod:`activity.otel` listens to a call's edges
while it is instrumented; the core pays one test of ``None`` per edge otherwise.
"""

from __future__ import annotations

import enum
import weakref
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "BUCKETS",
    "LONG",
    "LONG_BUCKETS",
    "SHORT",
    "SHORT_BUCKETS",
    "ActivityStatistics",
    "CallHook",
    "EventKind",
    "Histogram",
    "LatencyStatistics",
    "PartitionStatistics",
    "Reporter",
    "bucket_of",
    "emit",
    "hook",
    "listeners",
    "live",
]

#: Durations are kept in nanoseconds. Bucket 0 holds those under 2**_FIRST_OCTAVE ns
#: (about 1 µs); past that, each power of two is split in four buckets (each about 19 %
#: wider than the one before), up to 2**_LAST_OCTAVE ns (about 78 hours), and the last
#: bucket takes anything longer.
_FIRST_OCTAVE = 10
_LAST_OCTAVE = 48
#: How many buckets a :class:`Histogram` has.
BUCKETS = (_LAST_OCTAVE - _FIRST_OCTAVE) * 4 + 2


def bucket_of(nanoseconds: int) -> int:
    """The bucket of a duration (the core inlines this on its hot paths)."""
    if nanoseconds < 1 << _FIRST_OCTAVE:
        return 0
    bits = nanoseconds.bit_length()
    index = ((bits - _FIRST_OCTAVE - 1) << 2) + ((nanoseconds >> (bits - 3)) & 3) + 1
    return index if index < BUCKETS else BUCKETS - 1


def upper_bound(index: int) -> int:
    """The largest duration (ns, exclusive) that bucket ``index`` holds."""
    if index == 0:
        return 1 << _FIRST_OCTAVE
    bits = ((index - 1) >> 2) + _FIRST_OCTAVE + 1
    return (5 + ((index - 1) & 3)) << (bits - 3)


def _buckets_by_step(shift: int) -> bytes:
    """``bucket_of(i << shift)`` for every ``i`` below ``1 << 16``, one byte each."""
    parts: list[bytes] = []
    start = index = 0
    while start < 1 << 16:
        # The steps whose start falls in bucket ``index``: up to its bound, rounded up.
        end = min((upper_bound(index) + (1 << shift) - 1) >> shift, 1 << 16)
        parts.append(bytes((index,)) * (end - start))
        start = end
        index += 1
    return b"".join(parts)


#: Durations below this many nanoseconds (about 16.8 ms) take their bucket from
#: SHORT_BUCKETS, by ``nanoseconds >> 8``: below it every bucket bound is a
#: multiple of 256 ns, so one lookup replaces ``bit_length()`` and the shifts
#: on the hot paths.
SHORT: Final = 1 << 24
SHORT_BUCKETS: Final = _buckets_by_step(8)
#: Durations from SHORT up to this many (about 4.3 s) take theirs from
#: LONG_BUCKETS, by ``nanoseconds >> 16`` (every bound there is a multiple of
#: 2 ** 21 ns); longer ones from bucket_of().
LONG: Final = 1 << 32
LONG_BUCKETS: Final = _buckets_by_step(16)


class Histogram:
    """Counts of durations in fixed log-spaced buckets, and the longest one seen.

    Adding a duration is one integer increment (and a comparison for the
    maximum); a percentile is read by walking the buckets, and is the upper
    bound of the bucket it falls in (at most about 19 % high), never above
    the maximum.
    """

    __slots__ = ("counts", "max")

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS
        #: The longest duration added, in nanoseconds.
        self.max = 0

    def add(self, nanoseconds: int) -> None:
        """Count one duration (the core inlines this on its hot paths)."""
        if nanoseconds < SHORT:
            self.counts[SHORT_BUCKETS[nanoseconds >> 8]] += 1
        elif nanoseconds < LONG:
            self.counts[LONG_BUCKETS[nanoseconds >> 16]] += 1
        else:
            self.counts[bucket_of(nanoseconds)] += 1
        if nanoseconds > self.max:  # noqa: PLR1730  # max() is a call
            self.max = nanoseconds

    def snapshot(self) -> LatencyStatistics:
        """The count, percentiles and maximum, in seconds."""
        counts = list(self.counts)  # a copy: the loop may add while another thread reads
        total = sum(counts)
        if not total:
            return LatencyStatistics()
        longest = self.max
        ranks = [(0.5, "p50"), (0.9, "p90"), (0.99, "p99")]
        found: dict[str, float] = {}
        seen = 0
        for index, count in enumerate(counts):
            if not count:
                continue
            seen += count
            while ranks and seen >= ranks[0][0] * total:
                _, field = ranks.pop(0)
                found[field] = min(upper_bound(index), longest) / 1e9
            if not ranks:
                break
        for _, field in ranks:  # the maximum was added after the counts were copied
            found[field] = longest / 1e9
        return LatencyStatistics(count=total, max=longest / 1e9, **found)


class LatencyStatistics(BaseModel):
    """Percentiles of one kind of duration of an activity's calls, in seconds.

    Read from fixed log-spaced buckets: a percentile is the upper bound of its
    bucket (at most about 19 % above the true value) and never above ``max``.
    All are ``None`` until a call has been timed.

    .. versionadded:: 0.1
    """

    model_config: ClassVar[ConfigDict] = ConfigDict(frozen=True, extra="forbid")

    #: How many durations were counted.
    count: int = 0
    #: The median.
    p50: float | None = None
    #: The 90th percentile.
    p90: float | None = None
    #: The 99th percentile.
    p99: float | None = None
    #: The longest.
    max: float | None = None


class ActivityStatistics(BaseModel):
    """A frozen snapshot of an activity's counters and call durations.

    At every snapshot
    ``accepted == pending + waiting_for_thread + running + completed + failed + cancelled``;
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
    #: Calls whose body is running (a blocking call: on a thread).
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
    #: Blocking calls that hold a place to run but wait for a thread: a worker
    #: thread (past ``thread_limit``) or the STA thread, busy with another call.
    waiting_for_thread: int = 0
    #: How long calls waited from their submission until they started (a place to
    #: run; the wait for a thread is part of ``run_time``).
    wait_time: LatencyStatistics = LatencyStatistics()
    #: How long calls ran, from their start until they ended.
    run_time: LatencyStatistics = LatencyStatistics()

    @property
    def finished(self) -> int:
        """Calls that ended: completed + failed + cancelled."""
        return self.completed + self.failed + self.cancelled

    @property
    def in_flight(self) -> int:
        """Accepted calls that have not ended: pending + waiting_for_thread + running."""
        return self.pending + self.waiting_for_thread + self.running


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


class CallHook(Protocol):
    """What listens to the edges of every call while :data:`hook` is set (``activity.otel``).

    Each method runs on the activity's loop, in the middle of the core's own
    bookkeeping: it must be quick and must not raise.
    """

    def opened(self, core: Any) -> None:
        """An activity opened (told through :func:`emit`: the hook's owner adds a listener)."""
        ...

    def accepted(self, core: Any, call: Any) -> None:
        """``call`` was made and is about to be admitted (its context is ready)."""
        ...

    def started(self, core: Any, call: Any, waited: int) -> None:
        """``call`` got a place to run after waiting ``waited`` ns."""
        ...

    def finished(self, core: Any, call: Any, ran: int) -> None:
        """``call`` ended (its status is set); it ran ``ran`` ns, or -1 if it never started."""
        ...

    def rejected(self, core: Any, call: Any, reason: str) -> None:
        """A call was refused: ``"full"`` (no room) or ``"closing"``; ``call`` may be None."""
        ...


#: The instrumentation that listens to every call's edges, if any.
hook: CallHook | None = None

#: Each takes (kind, activity, call) and tells one user listener; set by ``activity.tracking``.
listeners: list[Callable[[EventKind, Any, Any], object]] = []
#: The public activities that are open now.
live: weakref.WeakSet[Any] = weakref.WeakSet()


def emit(kind: EventKind, reporter: Reporter, call: Any = None) -> None:
    """Tell the listeners; a listener that raises is removed and handed to the activity."""
    if kind is EventKind.ACTIVITY_OPENED and hook is not None:
        hook.opened(reporter)
    activity = reporter.activity
    for listener in list(listeners):
        try:
            listener(kind, activity, call)
        except Exception as exc:
            if listener in listeners:
                listeners.remove(listener)
            reporter.listener_failed(exc)


ActivityStatistics.__module__ = "activity"
LatencyStatistics.__module__ = "activity.tracking"
PartitionStatistics.__module__ = "activity"
