"""The Litestar plugin, on uvicorn and hypercorn."""

# No ``from __future__ import annotations`` here: Litestar reads the handlers'
# annotations at runtime. Litestar types ASGI messages as TypedDicts, the
# helpers as plain mappings: hence the casts.
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, cast

import httpx
import pytest
from litestar import Litestar, MediaType, Request, get
from litestar.di import NamedDependency

from activity import Activity, CallStatus
from activity.integrations.litestar import (
    ActivityPlugin,
    current_app_activity,
    current_request_activity,
    run_in_background,
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

if TYPE_CHECKING:
    from activity.integrations.asgi import ASGIApp


def litestar_app(
    probe: Probe, options: dict[str, Any], *, startup_job: bool = False
) -> tuple[Litestar, ActivityPlugin]:
    @get("/tenant", media_type=MediaType.TEXT)
    async def tenant(
        request: Request[Any, Any, Any],
        request_activity: NamedDependency[Activity],
        app_activity: NamedDependency[Activity],
    ) -> str:
        assert request_activity is current_request_activity()
        assert app_activity is current_app_activity()
        return await tenant_endpoint(probe, request.headers["x-tenant"])

    @get("/hold", media_type=MediaType.TEXT)
    async def hold() -> str:
        return await hold_endpoint(probe)

    # Path parameters are read from the request: how handlers declare them changes
    # between Litestar versions, and is not what these tests are about.
    @get("/job/{kind:str}", media_type=MediaType.TEXT)
    async def job(request: Request[Any, Any, Any]) -> str:
        return await job_endpoint(probe, request.path_params["kind"])

    @get("/fail/{name:str}", media_type=MediaType.TEXT)
    async def fail(request: Request[Any, Any, Any]) -> str:
        fail_endpoint(request.path_params["name"])

    async def start_refreshing(app: Litestar) -> None:
        # on_startup hooks run in the app activity: work they start is the app's.
        app.state.startup_job = await run_in_background(probe.release.wait, name="refresh")

    plugin = ActivityPlugin(**options)
    app = Litestar(
        [tenant, hold, job, fail],
        plugins=[plugin],
        on_startup=[start_refreshing] if startup_job else [],
        logging_config=None,
    )
    return app, plugin


@asynccontextmanager
async def on_uvicorn(probe: Probe, options: dict[str, Any]) -> AsyncGenerator[str]:
    app, _ = litestar_app(probe, options)
    async with serve_uvicorn(release_on_shutdown(cast("ASGIApp", app), probe.release)) as url:
        yield url


@asynccontextmanager
async def on_hypercorn(probe: Probe, options: dict[str, Any]) -> AsyncGenerator[str]:
    app, _ = litestar_app(probe, options)
    async with serve_hypercorn(release_on_shutdown(cast("ASGIApp", app), probe.release)) as url:
        yield url


SERVERS = [pytest.param(on_uvicorn, id="uvicorn"), pytest.param(on_hypercorn, id="hypercorn")]


@pytest.mark.asyncio
@pytest.mark.parametrize("serve", SERVERS)
async def test_tenants_never_cross(serve: Serve, request: pytest.FixtureRequest) -> None:
    await tenant_scenario(serve, f"litestar/{request.node.callspec.id}")


@pytest.mark.asyncio
@pytest.mark.parametrize("serve", SERVERS)
async def test_saturation_answers_503_never_500(
    serve: Serve, request: pytest.FixtureRequest
) -> None:
    await saturation_scenario(serve, f"litestar/{request.node.callspec.id}")


@pytest.mark.asyncio
@pytest.mark.parametrize("serve", SERVERS)
async def test_shutdown_loses_no_call(serve: Serve, request: pytest.FixtureRequest) -> None:
    await shutdown_scenario(serve, f"litestar/{request.node.callspec.id}")


@pytest.mark.asyncio
async def test_problem_details() -> None:
    await problem_scenario(on_uvicorn, "litestar/uvicorn")


@pytest.mark.asyncio
async def test_the_plugin_opens_and_drains_with_the_lifespan() -> None:
    probe = Probe()
    app, plugin = litestar_app(probe, {"statistics_path": "/_activity/stats"}, startup_job=True)
    assert plugin.app_activity is None
    served = release_on_shutdown(cast("ASGIApp", app), probe.release)
    async with serve_uvicorn(served) as url, httpx.AsyncClient(base_url=url) as client:
        opened = plugin.app_activity
        assert opened is not None
        document = (await client.get("/_activity/stats")).json()
        assert document["app"]["name"] == "app"
        assert document["app"]["running"] == 1  # the job started at startup
        assert app.state.startup_job.status is CallStatus.RUNNING
    assert plugin.app_activity is None
    assert app.state.startup_job.status is CallStatus.COMPLETED
    assert opened.statistics().in_flight == 0
