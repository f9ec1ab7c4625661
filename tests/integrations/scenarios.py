"""The scenarios every integration must pass, written once and driven through each one.

Each framework's test module turns the endpoints below into routes and gives a
``serve(probe, options)`` context manager that serves them on a real server
and yields its base URL; the drivers talk to it with httpx and check what the
background work saw and how it ended. The drivers print their figures on lines
that start with ``FIGURES`` (``pytest -s`` shows them).
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, NoReturn

import httpx

from activity import (
    AccessDeniedError,
    Activity,
    ActivityError,
    ActivityFailedError,
    ActivityLocal,
    AsyncWorkRejectedError,
    Call,
    CallStatus,
    CallTimeoutError,
    HResult,
    InvalidArgumentError,
    NotImplementedHResultError,
)
from activity.integrations.asgi import (
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    current_app_activity,
    current_request,
    current_request_activity,
    current_request_id,
    plain_detail,
    run_in_background,
)

#: Seconds any wait of a test may take before it fails (never a timing assertion).
DEADLINE = 20.0

tenant = ActivityLocal[str]("tests.tenant", default="-")


@dataclass(frozen=True)
class Sighting:
    """What one piece of work saw of the request it works for."""

    expected: str
    local: str
    header: str | None
    request_id: str | None
    where: str


class Probe:
    """The state the endpoints of one served application share with the test."""

    def __init__(self) -> None:
        self.sightings: list[Sighting] = []
        self.expected_background = 0
        self.background_finished = 0
        self.background_done = asyncio.Event()
        #: Opened once every response is in, so background work overlaps and outlives them.
        self.gate = asyncio.Event()
        #: What held calls wait for (saturation).
        self.hold = asyncio.Event()
        #: Set when the app activity starts to drain (shutdown).
        self.release = asyncio.Event()
        self.never = asyncio.Event()
        self.calls: list[Call[None]] = []
        self.app_activity: Activity | None = None
        self.parents_checked = 0
        #: The tenant the application's startup code set in the app activity, if any.
        self.app_tenant = "-"
        self.jobs_expected = 0
        self.jobs_set = 0
        #: Set once every job has set a tenant of its own, so each read follows every write.
        self.all_set = asyncio.Event()
        self.job_sightings: list[JobSighting] = []
        self.jobs_done = asyncio.Event()


@dataclass(frozen=True)
class JobSighting:
    """What one job saw of the tenant: handed over, after setting its own, and around a child."""

    request_id: str
    expected: str
    handed_over: str
    own: str
    in_app_thread: str
    child_handed_over: str
    after_child: str


Serve = Callable[[Probe, dict[str, Any]], AbstractAsyncContextManager[str]]


# -- the endpoints ------------------------------------------------------------------------


def _sight(expected: str, where: str) -> Sighting:
    info = current_request()
    return Sighting(
        expected=expected,
        local=tenant.get(),
        header=None if info is None else info.header("x-tenant"),
        request_id=current_request_id(),
        where=where,
    )


def _check_family(probe: Probe) -> Activity:
    request = current_request_activity()
    app = current_app_activity()
    assert request is not None
    assert app is not None
    assert request.parent is app
    probe.app_activity = app
    probe.parents_checked += 1
    return request


async def _background(probe: Probe, expected: str) -> None:
    await probe.gate.wait()
    probe.sightings.append(_sight(expected, "background"))
    app = current_app_activity()
    assert app is not None
    probe.sightings.append(await app.synchronous_call(_sight, expected, "background thread"))
    probe.background_finished += 1
    if probe.background_finished == probe.expected_background:
        probe.background_done.set()


HandOff = Callable[..., Awaitable[Call[Any]]]


async def tenant_endpoint(
    probe: Probe, tenant_name: str, hand_off: HandOff = run_in_background
) -> str:
    """Set the tenant, look at it from a thread, hand work to the app; return the request id."""
    tenant.set(tenant_name)
    request = _check_family(probe)
    probe.sightings.append(await request.synchronous_call(_sight, tenant_name, "request thread"))
    await hand_off(_background, probe, tenant_name)
    request_id = current_request_id()
    assert request_id is not None
    return request_id


async def _held(probe: Probe) -> None:
    await probe.hold.wait()


async def hold_endpoint(probe: Probe) -> str:
    """Hand the app activity work that waits until the test lets it go."""
    _check_family(probe)
    await run_in_background(_held, probe)
    return "held"


async def _job(probe: Probe, kind: str) -> None:
    await (probe.release if kind == "finishing" else probe.never).wait()


async def job_endpoint(probe: Probe, kind: str) -> str:
    """Hand the app activity work that finishes once it drains, or never."""
    _check_family(probe)
    probe.calls.append(await run_in_background(_job, probe, kind, name=kind))
    return "queued"


async def _child_job(request_id: str) -> str:
    handed_over = tenant.get()
    tenant.set(f"{request_id}/child")
    await asyncio.sleep(0)
    return handed_over


async def _tenant_job(probe: Probe, expected: str, request_id: str) -> None:
    handed_over = tenant.get()
    own = f"{request_id}/job"
    tenant.set(own)
    probe.jobs_set += 1
    if probe.jobs_set == probe.jobs_expected:
        probe.all_set.set()
    await probe.all_set.wait()
    app = current_app_activity()
    assert app is not None
    in_app_thread = await app.synchronous_call(tenant.get)
    child = await run_in_background(_child_job, request_id)
    child_handed_over = await child
    probe.job_sightings.append(
        JobSighting(
            request_id=request_id,
            expected=expected,
            handed_over=handed_over,
            own=tenant.get(),
            in_app_thread=in_app_thread,
            child_handed_over=child_handed_over,
            after_child=tenant.get(),
        )
    )
    if len(probe.job_sightings) == probe.jobs_expected:
        probe.jobs_done.set()


async def job_tenant_endpoint(
    probe: Probe, tenant_name: str | None, hand_off: HandOff = run_in_background
) -> str:
    """Set the tenant (or not), hand over a job that sets one of its own; return the request id."""
    if tenant_name is not None:
        tenant.set(tenant_name)
    _check_family(probe)
    request_id = current_request_id()
    assert request_id is not None
    expected = probe.app_tenant if tenant_name is None else tenant_name
    await hand_off(_tenant_job, probe, expected, request_id)
    return request_id


FAILURES: dict[str, tuple[Exception, int]] = {
    "rejected": (AsyncWorkRejectedError("queue full"), 503),
    "invalid": (InvalidArgumentError("page must be positive"), 400),
    "denied": (AccessDeniedError("not your order"), 403),
    "not-implemented": (NotImplementedHResultError("no refunds yet"), 501),
    "timeout": (CallTimeoutError("the warehouse did not answer"), 504),
    "failed": (ActivityFailedError("the warehouse is on fire"), 500),
    "plain": (RuntimeError("not the library's"), 500),
}


def fail_endpoint(name: str) -> NoReturn:
    """Raise the failure named ``name``."""
    raise FAILURES[name][0]


# -- a pure ASGI application ----------------------------------------------------------------


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return ""


def raw_app(probe: Probe) -> ASGIApp:
    """The endpoints as a bare ASGI application that does not speak the lifespan protocol."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http", "this application speaks no lifespan"
        path: str = scope["path"]
        if path == "/tenant":
            body = await tenant_endpoint(probe, _header(scope, b"x-tenant"))
        elif path == "/job-tenant":
            body = await job_tenant_endpoint(probe, _header(scope, b"x-tenant") or None)
        elif path == "/hold":
            body = await hold_endpoint(probe)
        elif path.startswith("/job/"):
            body = await job_endpoint(probe, path.removeprefix("/job/"))
        elif path.startswith("/fail/"):
            fail_endpoint(path.removeprefix("/fail/"))
        else:
            body = "not found"
        headers = [(b"content-type", b"text/plain; charset=utf-8")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body.encode()})

    return app


def release_on_shutdown(app: ASGIApp, event: asyncio.Event) -> ASGIApp:
    """Wrap ``app`` so that ``event`` is set when the server asks for lifespan shutdown.

    The middleware inside starts to drain right after, so work waiting for the
    event is still running when the drain begins, and finishes during it.
    """

    async def wrapper(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return

        async def spy() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                event.set()
            return message

        await app(scope, spy, send)

    return wrapper


def setting_at_startup(app: ASGIApp, probe: Probe, value: str) -> ASGIApp:
    """Wrap ``app`` with startup code that sets the tenant (in the app activity)."""

    async def wrapper(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                tenant.set(value)
                probe.app_tenant = value
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    return wrapper


# -- the drivers ------------------------------------------------------------------------------


def _client(url: str, connections: int = 100) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url, timeout=DEADLINE, limits=httpx.Limits(max_connections=connections)
    )


async def tenant_scenario(serve: Serve, label: str, requests: int = 200) -> None:
    """Concurrent requests, each with its own tenant: no work ever sees another's."""
    probe = Probe()
    probe.expected_background = requests

    async def one(client: httpx.AsyncClient, i: int) -> tuple[str, httpx.Response]:
        headers = {"x-tenant": f"tenant-{i}"}
        if i % 2 == 0:
            headers["x-request-id"] = f"req-{i}"
        return f"tenant-{i}", await client.get("/tenant", headers=headers)

    async with serve(probe, {}) as url, _client(url, requests) as client:
        results = await asyncio.gather(*(one(client, i) for i in range(requests)))
        ids: dict[str, str] = {}
        for name, response in results:
            assert response.status_code == 200, response.text
            request_id = response.headers["x-request-id"]
            assert response.text == request_id
            i = int(name.removeprefix("tenant-"))
            if i % 2 == 0:
                assert request_id == f"req-{i}"
            else:
                assert re.fullmatch(r"[0-9a-f]{32}", request_id), request_id
            ids[name] = request_id
        assert len(set(ids.values())) == requests
        # Every response is in; the background work has not even started looking.
        assert probe.background_finished == 0
        probe.gate.set()
        async with asyncio.timeout(DEADLINE):
            await probe.background_done.wait()
    crossings = [
        s
        for s in probe.sightings
        if (s.local, s.header, s.request_id) != (s.expected, s.expected, ids[s.expected])
    ]
    where = Counter(s.where for s in probe.sightings)
    app = probe.app_activity
    assert app is not None
    stats = app.statistics()
    print(
        f"FIGURES tenants [{label}]: {requests} concurrent requests, "
        f"{len(probe.sightings)} sightings ({dict(where)}), {len(crossings)} crossings; "
        f"app activity accepted={stats.accepted} completed={stats.completed} "
        f"failed={stats.failed} cancelled={stats.cancelled}"
    )
    assert crossings == []
    assert where == {
        "request thread": requests,
        "background": requests,
        "background thread": requests,
    }
    assert probe.parents_checked == requests
    assert stats.failed == stats.cancelled == stats.in_flight == 0
    assert stats.accepted == stats.completed == 2 * requests


async def job_tenant_scenario(serve: Serve, label: str, requests: int = 100) -> None:
    """Concurrent requests hand over jobs that set a tenant of their own: each sees only its own.

    Every tenth request sets no tenant: its job sees what the startup code set.
    Every job sets its value before any job reads again, reads it in a worker
    thread of the app activity, and hands a child job over, which sees the
    parent's value and whose own value stays the child's.
    """
    probe = Probe()
    probe.jobs_expected = requests
    # Every job runs at once (they wait for each other), and so do their children.
    options: dict[str, Any] = {"app_options": {"max_concurrency": 2 * requests + 10}}

    async def one(client: httpx.AsyncClient, i: int) -> httpx.Response:
        headers = {"x-request-id": f"req-{i}"}
        if i % 10:
            headers["x-tenant"] = f"tenant-{i}"
        return await client.get("/job-tenant", headers=headers)

    async with serve(probe, options) as url, _client(url, requests) as client:
        responses = await asyncio.gather(*(one(client, i) for i in range(requests)))
        assert [(r.status_code, r.text) for r in responses] == [
            (200, f"req-{i}") for i in range(requests)
        ]
        async with asyncio.timeout(DEADLINE):
            await probe.jobs_done.wait()
        app = probe.app_activity
        assert app is not None
        # Outside any job, the app activity's calls see the app's own values: no job
        # wrote there.
        app_tenant = await app.synchronous_call(tenant.get)
    crossings = [
        s
        for s in probe.job_sightings
        if s.handed_over != s.expected
        or s.child_handed_over != f"{s.request_id}/job"
        or {s.own, s.in_app_thread, s.after_child} != {f"{s.request_id}/job"}
    ]
    stats = app.statistics()
    print(
        f"FIGURES job values [{label}]: {requests} concurrent requests, each job and its "
        f"child setting a tenant of their own: {len(crossings)} crossings; app activity "
        f"accepted={stats.accepted} completed={stats.completed}"
    )
    assert crossings == []
    assert sorted(s.request_id for s in probe.job_sightings) == sorted(
        f"req-{i}" for i in range(requests)
    )
    assert [s.expected for s in probe.job_sightings if s.expected == probe.app_tenant] == [
        probe.app_tenant
    ] * (requests // 10)
    assert app_tenant == probe.app_tenant
    # A job, its call in a thread and its child for each request, and the look above.
    assert stats.accepted == stats.completed == 3 * requests + 1


async def saturation_scenario(serve: Serve, label: str, requests: int = 30) -> None:
    """More background work than the app activity admits: 503 with Retry-After, never 500."""
    probe = Probe()
    running, pending = 2, 3
    options: dict[str, Any] = {
        "app_options": {"max_concurrency": running, "max_pending": pending},
        "statistics_path": "/_activity/stats",
    }
    async with serve(probe, options) as url, _client(url, requests) as client:
        responses = await asyncio.gather(*(client.get("/hold") for _ in range(requests)))
        statuses = Counter(r.status_code for r in responses)
        during = (await client.get("/_activity/stats")).json()
        for response in responses:
            if response.status_code != 503:
                continue
            assert response.headers["retry-after"] == "1"
            assert response.headers["content-type"] == "application/problem+json"
            problem = response.json()
            assert problem["status"] == 503
            assert problem["title"] == "Service Unavailable"
            assert problem["hresult"] == f"0x{int(HResult.CO_E_ASYNC_WORK_REJECTED):08X}"
            assert problem["hresult_name"] == "CO_E_ASYNC_WORK_REJECTED"
            assert problem["request_id"] == response.headers["x-request-id"]
            assert problem["instance"] == "/hold"
        probe.hold.set()
        app = probe.app_activity
        assert app is not None
        async with asyncio.timeout(DEADLINE):
            await app.wait_idle()
    stats = app.statistics()
    print(
        f"FIGURES saturation [{label}]: {requests} concurrent requests against "
        f"max_concurrency={running} max_pending={pending}: "
        f"{statuses[200]} x 200, {statuses[503]} x 503 (all with Retry-After), "
        f"{statuses[500]} x 500; app activity accepted={stats.accepted} "
        f"completed={stats.completed} rejected={stats.rejected}"
    )
    assert statuses == {200: running + pending, 503: requests - running - pending}
    assert during["app"]["running"] == running
    assert during["app"]["pending"] == pending
    assert during["app"]["rejected"] == requests - running - pending
    assert "GET /_activity/stats" not in [child["name"] for child in during["children"]]
    assert stats.accepted == stats.completed == running + pending
    assert stats.rejected == requests - running - pending


async def shutdown_scenario(serve: Serve, label: str, finishing: int = 10, stuck: int = 10) -> None:
    """Stop the server while background work runs: each call completes or is reported cancelled."""
    probe = Probe()
    options: dict[str, Any] = {"app_options": {"shutdown_timeout": 0.5}}
    kinds = ["finishing"] * finishing + ["stuck"] * stuck
    async with serve(probe, options) as url, _client(url) as client:
        responses = await asyncio.gather(*(client.get(f"/job/{kind}") for kind in kinds))
        assert [r.status_code for r in responses] == [200] * len(kinds)
        assert [call.status for call in probe.calls] == [CallStatus.RUNNING] * len(kinds)
    # The server has stopped: its lifespan shutdown drained the app activity.
    app = probe.app_activity
    assert app is not None
    stats = app.statistics()
    ends = Counter((call.name, call.status) for call in probe.calls)
    print(
        f"FIGURES shutdown [{label}]: {len(probe.calls)} background calls running at "
        f"shutdown ({finishing} able to finish, {stuck} stuck), shutdown_timeout=0.5 s: "
        f"accepted={stats.accepted} completed={stats.completed} "
        f"cancelled={stats.cancelled} failed={stats.failed} "
        f"pending={stats.pending} running={stats.running}, none vanished"
    )
    assert ends == {
        ("finishing", CallStatus.COMPLETED): finishing,
        ("stuck", CallStatus.CANCELLED): stuck,
    }
    for call in probe.calls:
        if call.status is CallStatus.CANCELLED:
            assert "shutdown_timeout" in str(call.exception())
    assert stats.accepted == len(kinds)
    assert stats.completed == finishing
    assert stats.cancelled == stuck
    assert stats.failed == stats.pending == stats.running == 0


async def problem_scenario(serve: Serve, label: str) -> None:
    """Each ActivityError escaping a handler gets its status and a problem body; others pass."""
    probe = Probe()
    async with serve(probe, {}) as url, _client(url) as client:
        for name, (exc, status) in FAILURES.items():
            response = await client.get(f"/fail/{name}", headers={"x-request-id": f"id-{name}"})
            assert response.status_code == status, (name, response.text)
            content_type = response.headers.get("content-type", "")
            if name == "plain":
                # Not the library's: the framework's (or server's) own answer.
                assert content_type != "application/problem+json"
                continue
            assert content_type == "application/problem+json", name
            problem = response.json()
            assert problem["status"] == status
            assert problem["type"] == "about:blank"
            assert problem["request_id"] == f"id-{name}"
            assert problem["instance"] == f"/fail/{name}"
            assert isinstance(exc, ActivityError)
            code = exc.hresult
            assert problem["hresult"] == f"0x{int(code):08X}"
            assert problem["hresult_name"] == code.name
            if status < 500:
                assert problem["detail"] == str(exc)
            else:  # a server error tells no internals, in plain words
                assert problem["detail"] == plain_detail(code)
                assert "thread-pool" not in problem["detail"]
            assert ("retry-after" in response.headers) is (status == 503)
    print(f"FIGURES problems [{label}]: {len(FAILURES)} failures mapped as documented")
