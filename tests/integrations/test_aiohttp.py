"""The aiohttp helpers, on aiohttp's own test server."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from aiohttp import web

from activity import Call, CallStatus
from activity.integrations.aiohttp import (
    current_app_activity,
    current_request_activity,
    get_activity,
    get_app_activity,
    setup,
    spawn,
)

from .scenarios import (
    DEADLINE,
    Probe,
    fail_endpoint,
    hold_endpoint,
    job_endpoint,
    job_tenant_endpoint,
    job_tenant_scenario,
    problem_scenario,
    saturation_scenario,
    shutdown_scenario,
    tenant_endpoint,
    tenant_scenario,
)
from .servers import serve_aiohttp

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator


def aiohttp_app(probe: Probe, options: dict[str, Any]) -> web.Application:
    async def tenant(request: web.Request) -> web.Response:
        assert get_activity(request) is current_request_activity()
        assert get_app_activity(request) is current_app_activity()
        assert get_app_activity(request.app) is current_app_activity()
        hand_off = functools.partial(spawn, request)  # aiojobs.aiohttp style
        return web.Response(
            text=await tenant_endpoint(probe, request.headers["x-tenant"], hand_off)
        )

    async def job_tenant(request: web.Request) -> web.Response:
        hand_off = functools.partial(spawn, request)
        tenant_name = request.headers.get("x-tenant")
        return web.Response(text=await job_tenant_endpoint(probe, tenant_name, hand_off))

    async def hold(request: web.Request) -> web.Response:
        return web.Response(text=await hold_endpoint(probe))

    async def job(request: web.Request) -> web.Response:
        return web.Response(text=await job_endpoint(probe, request.match_info["kind"]))

    async def fail(request: web.Request) -> web.Response:
        fail_endpoint(request.match_info["name"])

    app = web.Application()
    app.router.add_get("/tenant", tenant)
    app.router.add_get("/job-tenant", job_tenant)
    app.router.add_get("/hold", hold)
    app.router.add_get("/job/{kind}", job)
    app.router.add_get("/fail/{name}", fail)
    setup(app, **options)

    async def release(app: web.Application) -> None:
        probe.release.set()

    # Cleanup drains the app activity first thing; let the finishing work go just before.
    app.on_cleanup.insert(0, release)
    return app


@asynccontextmanager
async def serve(probe: Probe, options: dict[str, Any]) -> AsyncGenerator[str]:
    async with serve_aiohttp(aiohttp_app(probe, options)) as url:
        yield url


@pytest.mark.asyncio
async def test_tenants_never_cross() -> None:
    await tenant_scenario(serve, "aiohttp/TestServer")


@pytest.mark.asyncio
async def test_spawned_values_stay_with_their_job() -> None:
    await job_tenant_scenario(serve, "aiohttp/TestServer")


@pytest.mark.asyncio
async def test_saturation_answers_503_never_500() -> None:
    await saturation_scenario(serve, "aiohttp/TestServer")


@pytest.mark.asyncio
async def test_shutdown_loses_no_call() -> None:
    await shutdown_scenario(serve, "aiohttp/TestServer")


@pytest.mark.asyncio
async def test_problem_details() -> None:
    await problem_scenario(serve, "aiohttp/TestServer")


@pytest.mark.asyncio
async def test_request_id_is_echoed_and_setup_is_once() -> None:
    app = aiohttp_app(Probe(), {"request_id_header": "X-Trace"})
    with pytest.raises(RuntimeError, match="already"):
        setup(app)
    with pytest.raises(LookupError, match="not open"):
        get_app_activity(app)
    async with serve_aiohttp(app) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/fail/invalid", headers={"x-trace": "trace-7"})
        assert response.status_code == 400
        assert response.headers["x-trace"] == "trace-7"
        assert response.json()["request_id"] == "trace-7"
        assert "x-request-id" not in response.headers


@pytest.mark.asyncio
async def test_background_work_outlives_a_client_that_goes_away() -> None:
    # aiohttp's test server cancels a handler whose client disconnected.
    entered, cancelled, release = asyncio.Event(), asyncio.Event(), asyncio.Event()
    calls: list[Call[Any]] = []

    async def wait_forever(request: web.Request) -> web.Response:
        calls.append(await spawn(request, release.wait))
        calls.append(await get_activity(request).asynchronous_call(asyncio.Event().wait))
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        raise AssertionError("unreachable")

    app = web.Application()
    app.router.add_get("/wait", wait_forever)
    setup(app)
    async with serve_aiohttp(app) as url, httpx.AsyncClient(base_url=url) as client:
        request = asyncio.create_task(client.get("/wait"))
        async with asyncio.timeout(DEADLINE):
            await entered.wait()
        request.cancel()  # the client goes away
        with contextlib.suppress(asyncio.CancelledError):
            await request
        background, own = calls
        async with asyncio.timeout(DEADLINE):
            await cancelled.wait()
            await own.wait()
        # The request's own work went with it; the work handed to the app did not.
        assert own.status is CallStatus.CANCELLED
        assert background.status is CallStatus.RUNNING
        release.set()
        assert await background is True


def test_without_setup_there_is_no_activity() -> None:
    from aiohttp.test_utils import make_mocked_request

    request = make_mocked_request("GET", "/")
    with pytest.raises(LookupError, match="setup"):
        get_activity(request)
    with pytest.raises(LookupError, match="setup"):
        get_app_activity(request)
