"""activity.otel against the real OpenTelemetry SDK, with its in-memory reader and exporter."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import activity.otel
from activity import (
    Activity,
    ActivityClosedError,
    AsyncWorkRejectedError,
    HResult,
    ThreadPool,
    _tracking,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from opentelemetry.sdk.trace import ReadableSpan

pytestmark = pytest.mark.anyio

WAIT = 20.0


class Telemetry:
    """The SDK's in-memory reader and exporter, with readers of what they hold."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.meters = MeterProvider(metric_readers=[self.reader])
        self.exporter = InMemorySpanExporter()
        self.tracers = TracerProvider()
        self.tracers.add_span_processor(SimpleSpanProcessor(self.exporter))

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        found: list[Any] = []
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found

    def value(self, name: str, **attributes: str) -> int | float:
        """The sum of a counter's (or the count of a histogram's) points with these attributes.

        A keyword's underscores stand for dots: ``activity_name`` is ``activity.name``.
        """
        total: int | float = 0
        for point in self.points(name):
            wanted = {k.replace("_", "."): v for k, v in attributes.items()}
            if all(point.attributes.get(k) == v for k, v in wanted.items()):
                total += point.count if isinstance(point, HistogramDataPoint) else point.value
        return total

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    made = Telemetry()
    activity.otel.instrument(made.meters, made.tracers)
    try:
        yield made
    finally:
        activity.otel.uninstrument()
        made.meters.shutdown()
        made.tracers.shutdown()


@pytest.fixture
def traced() -> Iterator[Telemetry]:
    made = Telemetry()
    activity.otel.instrument(made.meters, made.tracers, spans=True)
    try:
        yield made
    finally:
        activity.otel.uninstrument()
        made.meters.shutdown()
        made.tracers.shutdown()


async def _ok(x: int) -> int:
    return x


async def _boom() -> None:
    raise ValueError("boom")


def _blocking(x: int) -> int:
    return x


class TestMetrics:
    async def test_calls_are_counted_and_timed_by_activity_and_kind(
        self, telemetry: Telemetry
    ) -> None:
        async with Activity(name="jobs") as act:
            for i in range(3):
                await act.asynchronous_call(_ok, i)
            for i in range(2):
                await act.asynchronous_call(_blocking, i)
            await act.asynchronous_call(_ok(7))
            failing = await act.asynchronous_call(_boom)
            await act.wait_idle()
            assert isinstance(failing.exception(), ValueError)
        completed = "activity.calls.completed"
        assert telemetry.value(completed, activity_name="jobs") == 6
        assert telemetry.value(completed, activity_name="jobs", activity_call_kind="coroutine") == 3
        assert telemetry.value(completed, activity_call_kind="blocking") == 2
        assert telemetry.value(completed, activity_call_kind="object") == 1
        assert telemetry.value("activity.calls.failed", error_type="ValueError") == 1
        assert telemetry.value("activity.calls.cancelled") == 0
        durations = telemetry.points("activity.call.duration")
        assert sum(p.count for p in durations) == 7
        failed = [p for p in durations if p.attributes.get("error.type") == "ValueError"]
        assert [p.count for p in failed] == [1]
        assert all(p.attributes["activity.name"] == "jobs" for p in durations)
        assert all(p.min >= 0 for p in durations)
        waits = telemetry.points("activity.call.wait.duration")
        assert sum(p.count for p in waits) == 7

    async def test_queued_calls_wait_and_cancelled_ones_are_counted(
        self, telemetry: Telemetry
    ) -> None:
        gate = anyio.Event()

        async def held() -> None:
            await gate.wait()

        async with Activity(name="q", max_concurrency=1) as act:
            await act.asynchronous_call(held)
            queued = await act.asynchronous_call(held)
            dropped = await act.asynchronous_call(held)
            assert telemetry.value("activity.calls.pending", activity_name="q") == 2
            assert telemetry.value("activity.calls.running", activity_name="q") == 1
            dropped.cancel()
            await anyio.sleep(0.01)
            gate.set()
            await queued
        assert telemetry.value("activity.calls.completed", activity_name="q") == 2
        assert telemetry.value("activity.calls.cancelled", activity_name="q") == 1
        waits = telemetry.points("activity.call.wait.duration")
        assert sum(p.count for p in waits) == 2
        assert max(p.max for p in waits) >= 0.01

    async def test_calls_waiting_for_a_thread_are_observed(self, telemetry: Telemetry) -> None:
        release = threading.Event()

        def work() -> None:
            assert release.wait(WAIT)

        async with Activity(name="t", max_concurrency=4, thread_limit=1) as act:
            for _ in range(3):
                await act.asynchronous_call(work)
            with anyio.fail_after(WAIT):
                while True:
                    if act.statistics().running == 1:
                        break
                    await anyio.sleep(0.001)
            assert telemetry.value("activity.calls.running", activity_name="t") == 1
            assert telemetry.value("activity.calls.waiting_for_thread", activity_name="t") == 2
            release.set()
        assert telemetry.value("activity.calls.running", activity_name="t") == 0
        assert telemetry.value("activity.calls.completed", activity_name="t") == 3

    async def test_rejections_say_why(self, telemetry: Telemetry) -> None:
        gate = anyio.Event()

        async def held() -> None:
            await gate.wait()

        async with Activity(name="r", max_concurrency=1, max_pending=0) as act:
            await act.asynchronous_call(held)
            with pytest.raises(AsyncWorkRejectedError):
                act.asynchronous_call_nowait(held)
            act.cancel()
            with pytest.raises(ActivityClosedError):
                await act.asynchronous_call(held)
        assert telemetry.value("activity.calls.rejected", activity_name="r", reason="full") == 1
        assert telemetry.value("activity.calls.rejected", activity_name="r", reason="closing") == 1

    async def test_synchronous_calls_are_counted(self, telemetry: Telemetry) -> None:
        async with Activity(name="s") as act:
            assert await act.synchronous_call(_ok, 1) == 1
            assert await act.synchronous_call(_blocking, 2) == 2
            with pytest.raises(ValueError, match="boom"):
                await act.synchronous_call(_boom)
        assert telemetry.value("activity.calls.completed", activity_name="s") == 2
        assert telemetry.value("activity.calls.failed", activity_name="s") == 1

    async def test_uninstrumented_nothing_is_recorded(self) -> None:
        made = Telemetry()
        activity.otel.instrument(made.meters, made.tracers, spans=True)
        assert activity.otel.instrumented()
        activity.otel.uninstrument()
        assert not activity.otel.instrumented()
        assert _tracking.hook is None
        assert _tracking.listeners == []
        async with Activity(name="off") as act:
            await act.asynchronous_call(_ok, 1)
        assert made.value("activity.calls.completed") == 0
        assert made.value("activity.calls.running") == 0
        assert made.spans() == []
        activity.otel.uninstrument()  # twice is fine
        made.meters.shutdown()

    async def test_instrumenting_again_replaces_the_providers(self) -> None:
        first, second = Telemetry(), Telemetry()
        activity.otel.instrument(first.meters, first.tracers)
        activity.otel.instrument(second.meters, second.tracers)
        try:
            assert len(_tracking.listeners) == 1
            async with Activity(name="again") as act:
                await act.asynchronous_call(_ok, 1)
        finally:
            activity.otel.uninstrument()
        assert first.value("activity.calls.completed") == 0
        assert second.value("activity.calls.completed") == 1
        first.meters.shutdown()
        second.meters.shutdown()


class TestSpans:
    async def test_no_spans_unless_asked(self, telemetry: Telemetry) -> None:
        async with Activity() as act:
            await act.asynchronous_call(_ok, 1)
        assert telemetry.spans() == []

    async def test_one_activity_can_ask_for_spans(self, telemetry: Telemetry) -> None:
        async with Activity(name="quiet") as quiet, Activity(name="loud", trace_calls=True) as loud:
            await quiet.asynchronous_call(_ok, 1)
            await loud.asynchronous_call(_ok, 2)
        assert [s.name for s in telemetry.spans()] == ["loud _ok"]

    async def test_one_activity_can_refuse_spans(self, traced: Telemetry) -> None:
        async with Activity(name="hot", trace_calls=False) as act:
            await act.asynchronous_call(_ok, 1)
        assert traced.spans() == []

    @pytest.mark.parametrize("where", ["loop", "worker", "sta"])
    async def test_the_call_span_is_a_child_of_the_submitter_and_current_in_the_body(
        self, traced: Telemetry, where: str
    ) -> None:
        seen: list[trace.SpanContext] = []

        async def coroutine_body() -> None:
            seen.append(trace.get_current_span().get_span_context())

        def blocking_body() -> None:
            seen.append(trace.get_current_span().get_span_context())
            assert threading.current_thread() is not threading.main_thread()

        body: Any = coroutine_body if where == "loop" else blocking_body
        thread_pool = ThreadPool.STA if where == "sta" else ThreadPool.MTA
        tracer = traced.tracers.get_tracer("test")
        async with Activity(name="traced", thread_pool=thread_pool) as act:
            with tracer.start_as_current_span("request") as parent:
                call = await act.asynchronous_call(body)
            await call
        spans = {s.name: s for s in traced.spans()}
        name = f"traced {body.__qualname__}"
        span = spans[name]
        assert span.kind is SpanKind.INTERNAL
        assert span.parent is not None
        assert span.parent.span_id == parent.get_span_context().span_id
        assert span.context is not None
        assert seen == [span.context]
        assert span.attributes is not None
        assert span.attributes["activity.name"] == "traced"
        assert span.attributes["activity.call.status"] == "completed"
        assert [e.name for e in span.events] == ["started"]

    async def test_synchronous_calls_have_spans_too(self, traced: Telemetry) -> None:
        tracer = traced.tracers.get_tracer("test")
        async with Activity(name="sync") as act:
            with tracer.start_as_current_span("request") as parent:
                assert await act.synchronous_call(_ok, 1) == 1
                assert await act.synchronous_call(_blocking, 2) == 2
        spans = {s.name: s for s in traced.spans()}
        for name in ("sync _ok", "sync _blocking"):
            span = spans[name]
            assert span.parent is not None
            assert span.parent.span_id == parent.get_span_context().span_id
        assert traced.value("activity.calls.completed", activity_name="sync") == 2
        assert traced.value("activity.call.duration", activity_name="sync") == 2

    async def test_a_failed_call_span_has_the_error_and_the_hresult(
        self, traced: Telemetry
    ) -> None:
        def returns_failure() -> HResult:
            return HResult.E_ACCESSDENIED

        async with Activity(name="f") as act:
            first = await act.asynchronous_call(_boom)
            second = await act.asynchronous_call(returns_failure)
            await act.wait_idle()
            assert first.exception() is not None
            assert second.exception() is not None
        spans = {s.name: s for s in traced.spans()}
        boom = spans["f _boom"]
        assert boom.status.status_code is StatusCode.ERROR
        assert boom.attributes is not None
        assert boom.attributes["error.type"] == "ValueError"
        assert first.hresult == HResult.E_INVALIDARG  # what a ValueError maps to
        assert boom.attributes["activity.hresult"] == "0x80070057"
        denied = spans[f"f {returns_failure.__qualname__}"]
        assert denied.attributes is not None
        assert denied.attributes["activity.hresult"] == "0x80070005"

    async def test_a_rejected_call_span_ends(self, traced: Telemetry) -> None:
        gate = anyio.Event()

        async def held() -> None:
            await gate.wait()

        async with Activity(name="full", max_concurrency=1, max_pending=0) as act:
            await act.asynchronous_call(held)
            with pytest.raises(AsyncWorkRejectedError):
                act.asynchronous_call_nowait(held)
            gate.set()
        statuses = sorted(
            str((s.attributes or {}).get("activity.call.status")) for s in traced.spans()
        )
        assert statuses == ["completed", "rejected"]

    async def test_uninstrumenting_ends_the_open_spans(self) -> None:
        made = Telemetry()
        activity.otel.instrument(made.meters, made.tracers, spans=True)
        gate = anyio.Event()

        async def held() -> None:
            await gate.wait()

        try:
            async with Activity(name="open") as act:
                await act.asynchronous_call(held)
                activity.otel.uninstrument()
                assert [s.name for s in made.spans()] == [f"open {held.__qualname__}"]
                gate.set()
        finally:
            activity.otel.uninstrument()
        assert len(made.spans()) == 1
        made.meters.shutdown()


def test_the_api_reference_documents_every_public_name() -> None:
    from pathlib import Path

    page = Path(__file__).resolve().parent.parent / "docs" / "reference" / "otel.md"
    text = page.read_text(encoding="utf-8")
    assert "::: activity.otel" in text
    assert [name for name in activity.otel.__all__ if f"        - {name}\n" not in text] == []
