"""The Starlette helpers, on uvicorn."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from activity import Call, CallStatus
from activity.integrations.starlette import (
    ActivityMiddleware,
    app_activity,
    current_app_activity,
    current_request,
    current_request_activity,
    request_activity,
    run_in_background,
)

from .scenarios import (
    Probe,
    fail_endpoint,
    hold_endpoint,
    job_endpoint,
    job_tenant_endpoint,
    job_tenant_scenario,
    problem_scenario,
    release_on_shutdown,
    saturation_scenario,
    shutdown_scenario,
    tenant_endpoint,
    tenant_scenario,
)
from .scenarios import tenant as tenant_local
from .servers import serve_uvicorn

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from starlette.requests import Request


def starlette_app(
    probe: Probe,
    options: dict[str, Any],
    *,
    startup_job: bool = False,
    startup_tenant: str | None = None,
) -> Starlette:
    async def tenant(request: Request) -> PlainTextResponse:
        assert request_activity(request) is current_request_activity()
        assert app_activity(request) is current_app_activity()
        return PlainTextResponse(await tenant_endpoint(probe, request.headers["x-tenant"]))

    async def job_tenant(request: Request) -> PlainTextResponse:
        tenant_name = request.headers.get("x-tenant")
        return PlainTextResponse(await job_tenant_endpoint(probe, tenant_name))

    async def hold(request: Request) -> PlainTextResponse:
        return PlainTextResponse(await hold_endpoint(probe))

    async def job(request: Request) -> PlainTextResponse:
        return PlainTextResponse(await job_endpoint(probe, request.path_params["kind"]))

    async def fail(request: Request) -> PlainTextResponse:
        fail_endpoint(request.path_params["name"])

    def in_a_thread(request: Request) -> PlainTextResponse:
        # A plain endpoint runs in Starlette's thread pool, still inside the request.
        info = current_request()
        assert info is not None
        return PlainTextResponse(f"{info.method} {info.path} {info.request_id}")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncGenerator[None]:
        if startup_tenant is not None:
            tenant_local.set(startup_tenant)  # in the app activity
            probe.app_tenant = startup_tenant
        if startup_job:
            # Startup code runs in the app activity: work it starts is the app's.
            app.state.startup_job = await run_in_background(probe.release.wait, name="refresh")
        yield

    return Starlette(
        routes=[
            Route("/tenant", tenant),
            Route("/job-tenant", job_tenant),
            Route("/hold", hold),
            Route("/job/{kind}", job),
            Route("/fail/{name}", fail),
            Route("/thread", in_a_thread),
        ],
        middleware=[Middleware(ActivityMiddleware, **options)],
        lifespan=lifespan,
    )


@asynccontextmanager
async def serve(probe: Probe, options: dict[str, Any]) -> AsyncGenerator[str]:
    app = starlette_app(probe, options)
    async with serve_uvicorn(release_on_shutdown(app, probe.release)) as url:
        yield url


@pytest.mark.asyncio
async def test_tenants_never_cross() -> None:
    await tenant_scenario(serve, "starlette/uvicorn")


@pytest.mark.asyncio
async def test_background_values_stay_with_their_job() -> None:
    @asynccontextmanager
    async def serve_with_startup_tenant(
        probe: Probe, options: dict[str, Any]
    ) -> AsyncGenerator[str]:
        app = starlette_app(probe, options, startup_tenant="set-at-startup")
        async with serve_uvicorn(app) as url:
            yield url

    await job_tenant_scenario(serve_with_startup_tenant, "starlette/uvicorn")


@pytest.mark.asyncio
async def test_saturation_answers_503_never_500() -> None:
    await saturation_scenario(serve, "starlette/uvicorn")


@pytest.mark.asyncio
async def test_shutdown_loses_no_call() -> None:
    await shutdown_scenario(serve, "starlette/uvicorn")


@pytest.mark.asyncio
async def test_problem_details() -> None:
    await problem_scenario(serve, "starlette/uvicorn")


@pytest.mark.asyncio
async def test_startup_work_runs_in_the_app_activity_and_is_drained() -> None:
    probe = Probe()
    app = starlette_app(probe, {}, startup_job=True)
    async with serve_uvicorn(release_on_shutdown(app, probe.release)) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            await client.get("/hold")
        job: Call[Any] = app.state.startup_job
        running = job.status
        assert probe.app_activity is not None
        assert probe.app_activity.statistics().accepted == 2  # the startup job, the held call
        probe.hold.set()
    assert (running, job.status) == (CallStatus.RUNNING, CallStatus.COMPLETED)
    assert current_app_activity() is None  # the test's own task never entered it


@pytest.mark.asyncio
async def test_a_plain_endpoint_sees_its_request_in_a_worker_thread() -> None:
    async with serve(Probe(), {}) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/thread", headers={"x-request-id": "t-1"})
    assert response.text == "GET /thread t-1"


def test_outside_the_middleware_there_is_no_activity() -> None:
    from starlette.requests import Request

    request = Request({"type": "http", "method": "GET", "path": "/", "headers": []})
    with pytest.raises(LookupError, match="ActivityMiddleware"):
        request_activity(request)
    with pytest.raises(LookupError, match="ActivityMiddleware"):
        app_activity(request)
