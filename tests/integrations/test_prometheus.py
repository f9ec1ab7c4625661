"""The metrics scraped by Prometheus from a real server: uvicorn, the FastAPI middleware, httpx."""

# No ``from __future__ import annotations`` here: FastAPI reads the handlers'
# annotations at runtime, and they must resolve in this module.
import asyncio
import re
import threading
from collections.abc import Iterator

import httpx
import prometheus_client
import pytest
from fastapi import FastAPI, Response
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CONTENT_TYPE_LATEST

import activity.otel
from activity.integrations.fastapi import ActivityMiddleware, RequestActivity, run_in_background

from .servers import DEADLINE, serve_uvicorn

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # uvicorn's loop


@pytest.fixture
def meter_provider() -> Iterator[MeterProvider]:
    """The SDK with a PrometheusMetricReader, in prometheus_client's registry until shut down."""
    provider = MeterProvider(metric_readers=[PrometheusMetricReader()])
    activity.otel.instrument(meter_provider=provider)
    try:
        yield provider
    finally:
        activity.otel.uninstrument()
        provider.shutdown()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the one series ``name`` whose labels include ``labels``."""
    found: list[float] = []
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+)\{(.*)\} (\S+)", line)
        if match is None or match[1] != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match[2]))
        if all(have.get(key) == value for key, value in labels.items()):
            found.append(float(match[3]))
    assert len(found) == 1, f"{name} {labels}: {found} in\n{text}"
    return found[0]


def metrics_app(
    release: threading.Event, started: asyncio.Event, failures: list[object]
) -> FastAPI:
    def observe(call: object, exc: BaseException) -> None:
        failures.append(exc)

    app = FastAPI(openapi_url=None)
    app.add_middleware(
        ActivityMiddleware,
        app_options={
            "name": "jobs",
            "max_concurrency": 1,
            "max_pending": 1,
            "error_handler": observe,
        },
        request_options={"name": "request"},
        statistics_path="/_activity/stats",
    )

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(prometheus_client.generate_latest(), media_type=CONTENT_TYPE_LATEST)

    def render(n: int) -> int:
        return n * 2

    async def job() -> None:
        started.set()
        await asyncio.to_thread(release.wait, DEADLINE)

    async def failing() -> None:
        raise LookupError("no such report")

    @app.get("/render/{n}")
    async def render_route(n: int, request_activity: RequestActivity) -> dict[str, int]:
        return {"value": await request_activity.synchronous_call(render, n)}

    @app.post("/job")
    async def job_route() -> dict[str, str]:
        await run_in_background(job)
        return {"status": "accepted"}

    @app.post("/fail")
    async def fail_route() -> dict[str, str]:
        await run_in_background(failing)
        return {"status": "accepted"}

    return app


async def test_prometheus_scrapes_what_the_activities_did(meter_provider: MeterProvider) -> None:
    release = threading.Event()
    started = asyncio.Event()
    failures: list[object] = []
    app = metrics_app(release, started, failures)
    try:
        async with serve_uvicorn(app) as url, httpx.AsyncClient(base_url=url) as client:
            for n in range(3):
                assert (await client.get(f"/render/{n}")).json() == {"value": 2 * n}
            assert (await client.post("/fail")).status_code == 200
            # One job runs (held), one waits in the queue, the third finds it full.
            statuses: list[int] = []
            for _ in range(3):
                statuses.append((await client.post("/job")).status_code)
                if len(statuses) == 1:
                    await asyncio.wait_for(started.wait(), DEADLINE)
            assert statuses == [200, 200, 503]

            scraped = await client.get("/metrics")
            assert scraped.status_code == 200
            assert scraped.headers["content-type"].startswith("text/plain")
            text = scraped.text
            assert sample(text, "activity_calls_running", activity_name="jobs") == 1
            assert sample(text, "activity_calls_pending", activity_name="jobs") == 1
            assert sample(text, "activity_calls_waiting_for_thread", activity_name="jobs") == 0
            assert (
                sample(
                    text,
                    "activity_calls_completed_total",
                    activity_name="request",
                    activity_call_kind="blocking",
                )
                == 3
            )
            assert (
                sample(
                    text,
                    "activity_calls_failed_total",
                    activity_name="jobs",
                    error_type="LookupError",
                )
                == 1
            )
            assert (
                sample(text, "activity_calls_rejected_total", activity_name="jobs", reason="full")
                == 1
            )
            assert (
                sample(
                    text,
                    "activity_call_duration_seconds_count",
                    activity_name="request",
                    activity_call_kind="blocking",
                    error_type="",
                )
                == 3
            )
            assert (
                sample(
                    text,
                    "activity_call_duration_seconds_bucket",
                    activity_name="request",
                    activity_call_kind="blocking",
                    error_type="",
                    le="+Inf",
                )
                == 3
            )
            # The statistics endpoint on the same server tells the same story.
            stats = (await client.get("/_activity/stats")).json()["app"]
            assert (stats["running"], stats["pending"], stats["rejected"]) == (1, 1, 1)
            assert stats["wait_time"]["count"] == 2  # the failing call and the held job

            release.set()
    finally:
        release.set()
    assert [type(failure) for failure in failures] == [LookupError]
    text = prometheus_client.generate_latest().decode()
    assert sample(text, "activity_calls_completed_total", activity_name="jobs") == 2
    # A closed activity is no longer observed: its gauges have no series.
    running = [line for line in text.splitlines() if line.startswith("activity_calls_running{")]
    assert not [line for line in running if 'activity_name="jobs"' in line]
