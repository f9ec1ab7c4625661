"""The FastAPI helpers, on uvicorn and hypercorn."""

# No ``from __future__ import annotations`` here: FastAPI reads the handlers'
# annotations at runtime, and they must resolve in this module.
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import pytest
from fastapi import FastAPI, Header
from fastapi.responses import PlainTextResponse

from activity.integrations.fastapi import (
    ActivityMiddleware,
    AppActivity,
    RequestActivity,
    current_app_activity,
    current_request_activity,
)

from .scenarios import (
    Probe,
    Serve,
    fail_endpoint,
    hold_endpoint,
    job_endpoint,
    problem_scenario,
    release_on_shutdown,
    saturation_scenario,
    shutdown_scenario,
    tenant_endpoint,
    tenant_scenario,
)
from .servers import serve_hypercorn, serve_uvicorn


def fastapi_app(probe: Probe, options: dict[str, Any]) -> FastAPI:
    app = FastAPI(openapi_url=None)
    app.add_middleware(ActivityMiddleware, **options)

    @app.get("/tenant", response_class=PlainTextResponse)
    async def tenant(
        x_tenant: Annotated[str, Header()],
        request_activity: RequestActivity,
        app_activity: AppActivity,
    ) -> str:
        assert request_activity is current_request_activity()
        assert app_activity is current_app_activity()
        return await tenant_endpoint(probe, x_tenant)

    @app.get("/hold", response_class=PlainTextResponse)
    async def hold() -> str:
        return await hold_endpoint(probe)

    @app.get("/job/{kind}", response_class=PlainTextResponse)
    async def job(kind: str) -> str:
        return await job_endpoint(probe, kind)

    @app.get("/fail/{name}")
    async def fail(name: str) -> None:
        fail_endpoint(name)

    return app


@asynccontextmanager
async def on_uvicorn(probe: Probe, options: dict[str, Any]) -> AsyncGenerator[str]:
    app = fastapi_app(probe, options)
    async with serve_uvicorn(release_on_shutdown(app, probe.release)) as url:
        yield url


@asynccontextmanager
async def on_hypercorn(probe: Probe, options: dict[str, Any]) -> AsyncGenerator[str]:
    app = fastapi_app(probe, options)
    async with serve_hypercorn(release_on_shutdown(app, probe.release)) as url:
        yield url


SERVERS = [pytest.param(on_uvicorn, id="uvicorn"), pytest.param(on_hypercorn, id="hypercorn")]


@pytest.mark.asyncio
@pytest.mark.parametrize("serve", SERVERS)
async def test_tenants_never_cross(serve: Serve, request: pytest.FixtureRequest) -> None:
    await tenant_scenario(serve, f"fastapi/{request.node.callspec.id}")


@pytest.mark.asyncio
@pytest.mark.parametrize("serve", SERVERS)
async def test_saturation_answers_503_never_500(
    serve: Serve, request: pytest.FixtureRequest
) -> None:
    await saturation_scenario(serve, f"fastapi/{request.node.callspec.id}")


@pytest.mark.asyncio
@pytest.mark.parametrize("serve", SERVERS)
async def test_shutdown_loses_no_call(serve: Serve, request: pytest.FixtureRequest) -> None:
    await shutdown_scenario(serve, f"fastapi/{request.node.callspec.id}")


@pytest.mark.asyncio
async def test_problem_details() -> None:
    await problem_scenario(on_uvicorn, "fastapi/uvicorn")
