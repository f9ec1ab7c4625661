"""OpenTelemetry metrics and spans for every activity of the process.

``pip install 'activity[otel]'`` brings ``opentelemetry-api`` only; the
application brings the SDK and its exporters, and sets them up as usual. Then::

    import activity.otel

    activity.otel.instrument()  # metrics for every activity; spans=True adds a span per call

Metrics (in seconds, attributes ``activity.name``, ``activity.call.kind`` and,
on a failure, ``error.type``):

- ``activity.call.duration`` (histogram): how long a call ran, from its start
  to its end (a blocking call's wait for a thread is part of it);
- ``activity.call.wait.duration`` (histogram): how long a call waited from its
  submission until it started;
- ``activity.calls.running``, ``activity.calls.pending``,
  ``activity.calls.waiting_for_thread`` (up-down counters, observed when the
  metrics are collected);
- ``activity.calls.completed``, ``activity.calls.failed``,
  ``activity.calls.cancelled`` (counters) and ``activity.calls.rejected``
  (counter, with ``reason``: ``full`` when there was no room, ``closing`` when
  the activity no longer took work).

``activity.call.kind`` is ``coroutine`` (a coroutine function), ``object`` (a
coroutine object) or ``blocking`` (a plain callable, run on a thread).

Spans (``spans=True``, or ``ActivityConfig.trace_calls`` for one activity):
one ``INTERNAL`` span per call, named after the activity and the call's
function, a child of the span current where the call was submitted, from its
submission to its end. It is the current span in the call's body, on the loop,
on a worker thread and on an STA thread alike, so the spans the body makes are
its children. A failed call's span has the status ``ERROR``, ``error.type`` and
``activity.hresult``.

Not instrumented, an activity pays one test of ``None`` per edge of a call
(submitted, started, ended). Instrumented, an activity opened afterwards runs
its synchronous calls through the path every call takes, which times them
(and traces them), instead of its inline shortcut, which does not: a
``synchronous_call`` costs a little more. An activity already open when
:func:`instrument` is called keeps its shortcut: its synchronous calls are
counted, but not timed and without spans. A synchronous call is timed from
its submission to its end (``activity.call.duration``); only the calls that
went through the activity's queue (``asynchronous_call``, and a synchronous
call that found no place) record a ``activity.call.wait.duration``.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode

from . import _tracking
from ._call import BLOCKING, CANCELLED, COMPLETED, COROUTINE, COROUTINE_FUNCTION, FAILED, Kind
from ._tracking import EventKind

if TYPE_CHECKING:
    from collections.abc import Iterable

    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import Span, TracerProvider

__all__ = ["DURATION_BUCKETS", "instrument", "instrumented", "uninstrument"]


def __dir__() -> list[str]:
    """The module's public names only, for ``dir()`` and completion."""
    return sorted(__all__)


#: The buckets (seconds) the duration histograms advise the SDK to use, from 100 µs to 5 min.
DURATION_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)

_KIND_NAMES: Final[dict[Kind, str]] = {
    COROUTINE_FUNCTION: "coroutine",
    COROUTINE: "object",
    BLOCKING: "blocking",
}
_SCOPE = "activity"


def _function_name(call: Any) -> str:
    """The call's name without its id: few distinct values, as a span name should have."""
    extras = call.extras
    if extras is not None and extras.name is not None:
        return str(extras.name)
    fn = call.fn
    if fn is None:
        return "call"
    return str(getattr(fn, "__qualname__", None) or type(fn).__qualname__)


class _Instrumentation:
    """The hook and the tracking listener that feed one meter and one tracer."""

    def __init__(
        self,
        meter_provider: MeterProvider | None,
        tracer_provider: TracerProvider | None,
        spans: bool,
    ) -> None:
        meter = metrics.get_meter(_SCOPE, meter_provider=meter_provider)
        self.tracer = trace.get_tracer(_SCOPE, tracer_provider=tracer_provider)
        self.spans = spans
        self.active = True
        #: The spans of the calls under way, by call.
        self.open_spans: dict[Any, Span] = {}
        #: Attribute sets, made once per (activity name, kind[, error type]).
        self.attributes: dict[tuple[str, ...], dict[str, str]] = {}
        self.lock = threading.Lock()
        self.duration = meter.create_histogram(
            "activity.call.duration",
            unit="s",
            description="How long calls ran, from their start to their end.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
        self.wait = meter.create_histogram(
            "activity.call.wait.duration",
            unit="s",
            description="How long calls waited from their submission until they started.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
        self.completed = meter.create_counter(
            "activity.calls.completed", unit="{call}", description="Calls that returned."
        )
        self.failed = meter.create_counter(
            "activity.calls.failed",
            unit="{call}",
            description="Calls that raised, timed out or returned a failing HRESULT.",
        )
        self.cancelled = meter.create_counter(
            "activity.calls.cancelled", unit="{call}", description="Calls cancelled on purpose."
        )
        self.rejections = meter.create_counter(
            "activity.calls.rejected",
            unit="{call}",
            description="Calls refused: no room (reason=full), or no more work taken (closing).",
        )
        meter.create_observable_up_down_counter(
            "activity.calls.running",
            callbacks=[self.observe_running],
            unit="{call}",
            description="Calls whose body is running.",
        )
        meter.create_observable_up_down_counter(
            "activity.calls.pending",
            callbacks=[self.observe_pending],
            unit="{call}",
            description="Accepted calls waiting in the queue for a place to run.",
        )
        meter.create_observable_up_down_counter(
            "activity.calls.waiting_for_thread",
            callbacks=[self.observe_waiting],
            unit="{call}",
            description="Blocking calls holding a place to run, waiting for a thread.",
        )

    # -- attribute sets ------------------------------------------------------------------

    def attrs(self, name: str, kind: Kind, error: str | None = None) -> dict[str, str]:
        key = (name, kind.value) if error is None else (name, kind.value, error)
        found = self.attributes.get(key)
        if found is None:
            found = {"activity.name": name, "activity.call.kind": _KIND_NAMES[kind]}
            if error is not None:
                found["error.type"] = error
            if len(self.attributes) < 10_000:  # names chosen by clients must not grow it forever
                self.attributes[key] = found
        return found

    # -- the hook (activity._tracking.CallHook) ------------------------------------------

    def traces(self, core: Any) -> bool:
        """Whether the calls of ``core``'s activity get spans."""
        traced = core.config.trace_calls
        return bool(self.spans if traced is None else traced)

    def opened(self, core: Any) -> None:
        # Its synchronous calls take the path that makes a call of each, timed (and
        # traced), rather than the inline shortcut, which records no time.
        core.fast_sync = False

    def accepted(self, core: Any, call: Any) -> None:
        if not self.traces(core):
            return
        span = self.tracer.start_span(
            f"{core.name} {_function_name(call)}",
            kind=SpanKind.INTERNAL,
            attributes={
                "activity.name": core.name,
                "activity.call.kind": _KIND_NAMES[call.kind],
                "activity.call.id": call.ident,
            },
        )
        self.open_spans[call] = span
        # The body runs in the call's own context: the span is current there, on
        # the loop and in whatever thread the context is entered.
        call.context.run(otel_context.attach, trace.set_span_in_context(span))

    def started(self, core: Any, call: Any, waited: int) -> None:
        self.wait.record(waited / 1e9, self.attrs(core.name, call.kind))
        span = self.open_spans.get(call)
        if span is not None:
            span.add_event("started", {"activity.call.wait": waited / 1e9})

    def finished(self, core: Any, call: Any, ran: int) -> None:
        status = call.state
        error = None if status is not FAILED else type(call.error).__qualname__
        if ran >= 0:
            self.duration.record(ran / 1e9, self.attrs(core.name, call.kind, error))
        span = self.open_spans.pop(call, None)
        if span is None:
            return
        span.set_attribute("activity.call.status", status.value)
        if status is FAILED:
            assert error is not None
            span.set_attribute("error.type", error)
            span.set_attribute("activity.hresult", f"0x{int(call.hresult) & 0xFFFFFFFF:08X}")
            span.set_status(Status(StatusCode.ERROR, str(call.error)))
        span.end()

    def rejected(self, core: Any, call: Any, reason: str) -> None:
        attributes = {"activity.name": core.name, "reason": reason}
        if call is not None:
            attributes["activity.call.kind"] = _KIND_NAMES[call.kind]
        self.rejections.add(1, attributes)
        span = None if call is None else self.open_spans.pop(call, None)
        if span is not None:
            span.set_attribute("activity.call.status", "rejected")
            span.set_attribute("error.type", "rejected")
            span.set_status(Status(StatusCode.ERROR, f"rejected: {reason}"))
            span.end()

    # -- the tracking listener: every call that ends, synchronous ones included -----------

    def on_event(self, kind: EventKind, activity: Any, call: Any) -> None:
        if kind is not EventKind.CALL_FINISHED or call is None:
            return
        status = call.state
        name = activity.name
        if status is COMPLETED:
            self.completed.add(1, self.attrs(name, call.kind))
        elif status is FAILED:
            self.failed.add(1, self.attrs(name, call.kind, type(call.error).__qualname__))
        elif status is CANCELLED:
            self.cancelled.add(1, self.attrs(name, call.kind))

    # -- observed gauges -------------------------------------------------------------------

    def totals(self, field: str) -> Iterable[Observation]:
        if not self.active:
            return []
        by_name: dict[str, int] = {}
        for activity in _live_activities():
            stats = activity.statistics()
            by_name[stats.name] = by_name.get(stats.name, 0) + getattr(stats, field)
        return [Observation(count, {"activity.name": name}) for name, count in by_name.items()]

    def observe_running(self, options: CallbackOptions) -> Iterable[Observation]:
        return self.totals("running")

    def observe_pending(self, options: CallbackOptions) -> Iterable[Observation]:
        return self.totals("pending")

    def observe_waiting(self, options: CallbackOptions) -> Iterable[Observation]:
        return self.totals("waiting_for_thread")

    def close(self) -> None:
        self.active = False
        spans = list(self.open_spans.values())
        self.open_spans.clear()
        for span in spans:
            span.set_attribute("activity.call.status", "unknown")
            span.end()


def _live_activities() -> list[Any]:
    """The open activities, read from another thread than theirs (a collector's)."""
    for _ in range(10):
        try:
            return list(_tracking.live)
        except RuntimeError:  # an activity opened or closed meanwhile: read again
            continue
    return []


_current: _Instrumentation | None = None
_guard = threading.Lock()


def instrument(
    meter_provider: MeterProvider | None = None,
    tracer_provider: TracerProvider | None = None,
    spans: bool = False,
) -> None:
    """Record metrics (and, with ``spans``, a span per call) for every activity of the process.

    Calling it again replaces the earlier instrumentation (and its providers).

    :param meter_provider: where the metrics go (default: the global provider)
    :param tracer_provider: where the spans go (default: the global provider)
    :param spans: whether every call gets a span; an activity's
        ``ActivityConfig.trace_calls`` decides for it alone when not ``None``

    .. versionadded:: 0.1
    """
    global _current
    with _guard:
        if _current is not None:
            _stop(_current)
        current = _current = _Instrumentation(meter_provider, tracer_provider, spans)
        _tracking.listeners.append(current.on_event)
        _tracking.hook = current


def uninstrument() -> None:
    """Stop recording; the spans of the calls still under way end now.

    Does nothing if :func:`instrument` was not called. The activities opened
    while instrumented keep running their synchronous calls through the common
    path (see the module's doc) until they close.

    .. versionadded:: 0.1
    """
    global _current
    with _guard:
        if _current is not None:
            _stop(_current)
            _current = None


def instrumented() -> bool:
    """Return whether :func:`instrument` is in effect.

    .. versionadded:: 0.1
    """
    return _current is not None


def _stop(current: _Instrumentation) -> None:
    if _tracking.hook is current:
        _tracking.hook = None
    if current.on_event in _tracking.listeners:
        _tracking.listeners.remove(current.on_event)
    current.close()
