"""A FastAPI app with OpenTelemetry metrics and spans, and a Prometheus ``/metrics`` endpoint.

Run it (from a clone, after ``pip install -e '.[dev]'``)::

    python examples/observability.py            # a scripted visit to a real server, printed
    python examples/observability.py --serve    # serve on http://127.0.0.1:8000 until Ctrl-C

then, while it serves::

    curl http://127.0.0.1:8000/report/3
    curl http://127.0.0.1:8000/metrics                # Prometheus' text format
    curl http://127.0.0.1:8000/_activity/stats        # the statistics, as JSON
    python -m activity top http://127.0.0.1:8000/_activity/stats

``activity.otel.instrument()`` records the metrics of every activity, and with
``spans=True`` a span per call: the span of the request's blocking call is a
child of the span the handler opened, and is current in the worker thread that
runs it. The metrics go to the SDK's ``PrometheusMetricReader``, which
``prometheus_client`` renders on ``/metrics``; with ``--serve`` the spans and
the metrics are also printed by the SDK's console exporters.

The scripted visit starts uvicorn on 127.0.0.1 (an ephemeral port), asks for
three reports, each rendered in a worker thread and indexed in the background,
scrapes ``/metrics`` with httpx, and prints::

    report 1: 2 pages
    report 2: 4 pages
    report 3: 6 pages
    span 'report request render' is a child of 'GET /report': True
    span 'report request render' was current in its worker thread: True
    activity_call_duration_seconds_count{activity_call_kind="coroutine",activity_name="reports"} 3.0
    activity_calls_completed_total{activity_call_kind="blocking",activity_name="report request"} 3.0
    activity_calls_completed_total{activity_call_kind="coroutine",activity_name="reports"} 3.0
    activity_calls_running{activity_name="reports"} 0.0
    statistics: reports completed=3, run time p99 known: True
"""

from __future__ import annotations

import argparse
import asyncio
import io
import re
import socket
import threading
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import httpx
import prometheus_client
import uvicorn
from fastapi import FastAPI, Response
from opentelemetry import trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from prometheus_client import CONTENT_TYPE_LATEST

import activity.otel
from activity import Activity
from activity.integrations.fastapi import (
    ActivityMiddleware,
    RequestActivity,
    current_app_activity,
    run_in_background,
)

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

tracer = trace.get_tracer("examples.observability")
#: What the worker threads saw as their current span, by report.
seen_in_thread: dict[int, trace.SpanContext] = {}
indexed: list[int] = []


def render(number: int) -> int:
    """Blocking work the response waits for: it runs in a worker thread of the request."""
    assert threading.current_thread() is not threading.main_thread()
    seen_in_thread[number] = trace.get_current_span().get_span_context()
    return 2 * number


async def index(number: int) -> None:
    """Background work: it runs in the app activity, after the response was sent."""
    await asyncio.sleep(0)
    indexed.append(number)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncGenerator[None]:
    app.state.reports = current_app_activity()
    yield


app = FastAPI(title="reports", lifespan=lifespan)
app.add_middleware(
    ActivityMiddleware,
    app_options={"name": "reports", "max_concurrency": 4},
    # One name for every request's activity: the metrics' activity.name stays a short list
    # (the default name, the method and the path, is one per URL).
    request_options={"name": "report request"},
    statistics_path="/_activity/stats",
)


@app.get("/metrics")
async def metrics() -> Response:
    """Prometheus' text format: what the SDK's PrometheusMetricReader collects now."""
    return Response(prometheus_client.generate_latest(), media_type=CONTENT_TYPE_LATEST)


@app.get("/report/{number}")
async def report(number: int, request_activity: RequestActivity) -> dict[str, int]:
    with tracer.start_as_current_span("GET /report"):
        pages = await request_activity.synchronous_call(render, number)
        await run_in_background(index, number)
    return {"pages": pages}


def set_up_telemetry(serve: bool, spans_out: io.StringIO) -> MeterProvider:
    """The application's SDK: Prometheus for the metrics, and console exporters."""
    readers: list[PrometheusMetricReader | PeriodicExportingMetricReader] = [
        PrometheusMetricReader()
    ]
    tracer_provider = TracerProvider()
    if serve:
        readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
        tracer_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    else:
        tracer_provider.add_span_processor(
            SimpleSpanProcessor(ConsoleSpanExporter(out=spans_out, formatter=describe))
        )
    meter_provider = MeterProvider(metric_readers=readers)
    trace.set_tracer_provider(tracer_provider)
    activity.otel.instrument(meter_provider=meter_provider, spans=True)
    return meter_provider


def describe(span: ReadableSpan) -> str:
    """One line per span: its name, its id and its parent's (the console exporter's format)."""
    parent = span.parent.span_id if span.parent is not None else 0
    assert span.context is not None
    return f"{span.name}|{span.context.span_id}|{parent}\n"


async def visit(spans_out: io.StringIO) -> None:
    """Start the app on a real server, ask for reports, and scrape /metrics."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, http="h11"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for number in (1, 2, 3):
            response = await client.get(f"/report/{number}")
            print(f"report {number}: {response.json()['pages']} pages")
        reports: Activity = app.state.reports
        await reports.wait_idle()  # every indexing job has ended

        spans = [line.split("|") for line in spans_out.getvalue().splitlines()]
        ids = {span_id: name for name, span_id, _ in spans}
        render_spans = [(span_id, parent) for name, span_id, parent in spans if "render" in name]
        children = [ids.get(parent) == "GET /report" for _, parent in render_spans]
        print(
            "span 'report request render' is a child of 'GET /report': "
            f"{children == [True, True, True]}"
        )
        in_thread = {str(context.span_id) for context in seen_in_thread.values()}
        print(
            "span 'report request render' was current in its worker thread: "
            f"{in_thread == {span_id for span_id, _ in render_spans}}"
        )

        text = (await client.get("/metrics")).text
        wanted = (
            "activity_calls_completed_total",
            "activity_call_duration_seconds_count",
            "activity_calls_running",
        )
        shown: list[str] = []
        for line in text.splitlines():
            name = line.split("{", 1)[0]
            if name in wanted and "activity_name=" in line:
                if name != "activity_calls_completed_total" and "reports" not in line:
                    continue
                # Without the labels every OpenTelemetry series carries (its scope's).
                shown.append(re.sub(r',?(otel_scope_\w+|error_type)="[^"]*"', "", line))
        for line in sorted(shown):
            print(line)
        stats = (await client.get("/_activity/stats")).json()["app"]
        print(
            f"statistics: {stats['name']} completed={stats['completed']}, "
            f"run time p99 known: {stats['run_time']['p99'] is not None}"
        )
    server.should_exit = True
    await serving


def main() -> None:
    parser = argparse.ArgumentParser(description="Metrics, spans and a Prometheus endpoint.")
    parser.add_argument("--serve", action="store_true", help="serve until Ctrl-C")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    spans_out = io.StringIO()
    meter_provider = set_up_telemetry(args.serve, spans_out)
    try:
        if args.serve:
            uvicorn.run(app, host="127.0.0.1", port=args.port)
        else:
            asyncio.run(visit(spans_out))
    finally:
        activity.otel.uninstrument()
        meter_provider.shutdown()


if __name__ == "__main__":
    main()
