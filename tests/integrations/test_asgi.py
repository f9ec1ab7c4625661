"""The pure ASGI middleware, on uvicorn and hypercorn, and at the ASGI level."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, cast

import aiohttp
import httpx
import pytest

from activity import (
    Activity,
    ActivityConfig,
    ActivityError,
    AsyncWorkRejectedError,
    Call,
    CallStatus,
    HResult,
    InvalidArgumentError,
)
from activity.integrations.asgi import (
    DEFAULT_STATUS_MAP,
    ActivityMiddleware,
    ASGIApp,
    Message,
    ProblemDetails,
    Receive,
    RequestInfo,
    Scope,
    Send,
    WebKeywords,
    WebOptions,
    current_app_activity,
    current_request,
    current_request_activity,
    current_request_id,
    http_status_of,
    problem_details,
    run_in_background,
)
from activity.integrations.problem import resolve_status_map

from .scenarios import (
    DEADLINE,
    Probe,
    Serve,
    job_tenant_scenario,
    problem_scenario,
    raw_app,
    release_on_shutdown,
    saturation_scenario,
    setting_at_startup,
    shutdown_scenario,
    tenant_scenario,
)
from .servers import serve_hypercorn, serve_uvicorn

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator


@asynccontextmanager
async def raw_on_uvicorn(probe: Probe, options: dict[str, Any]) -> AsyncGenerator[str]:
    app = ActivityMiddleware(raw_app(probe), **options)
    async with serve_uvicorn(release_on_shutdown(app, probe.release)) as url:
        yield url


@asynccontextmanager
async def raw_on_hypercorn(probe: Probe, options: dict[str, Any]) -> AsyncGenerator[str]:
    app = ActivityMiddleware(raw_app(probe), **options)
    async with serve_hypercorn(release_on_shutdown(app, probe.release)) as url:
        yield url


SERVERS = [
    pytest.param(raw_on_uvicorn, id="uvicorn"),
    pytest.param(raw_on_hypercorn, id="hypercorn"),
]

#: What the application's startup code sets, in the app activity.
STARTUP_TENANT = "set-at-startup"


@asynccontextmanager
async def startup_tenant_on_uvicorn(probe: Probe, options: dict[str, Any]) -> AsyncGenerator[str]:
    app = ActivityMiddleware(setting_at_startup(raw_app(probe), probe, STARTUP_TENANT), **options)
    async with serve_uvicorn(app) as url:
        yield url


@asynccontextmanager
async def startup_tenant_on_hypercorn(probe: Probe, options: dict[str, Any]) -> AsyncGenerator[str]:
    app = ActivityMiddleware(setting_at_startup(raw_app(probe), probe, STARTUP_TENANT), **options)
    async with serve_hypercorn(app) as url:
        yield url


STARTUP_TENANT_SERVERS = [
    pytest.param(startup_tenant_on_uvicorn, id="uvicorn"),
    pytest.param(startup_tenant_on_hypercorn, id="hypercorn"),
]


class TestOnRealServers:
    @pytest.mark.asyncio
    @pytest.mark.parametrize("serve", SERVERS)
    async def test_tenants_never_cross(self, serve: Serve, request: pytest.FixtureRequest) -> None:
        await tenant_scenario(serve, f"asgi/{request.node.callspec.id}")

    @pytest.mark.asyncio
    @pytest.mark.parametrize("serve", SERVERS)
    async def test_saturation_answers_503_never_500(
        self, serve: Serve, request: pytest.FixtureRequest
    ) -> None:
        await saturation_scenario(serve, f"asgi/{request.node.callspec.id}")

    @pytest.mark.asyncio
    @pytest.mark.parametrize("serve", SERVERS)
    async def test_shutdown_loses_no_call(
        self, serve: Serve, request: pytest.FixtureRequest
    ) -> None:
        await shutdown_scenario(serve, f"asgi/{request.node.callspec.id}")

    @pytest.mark.asyncio
    @pytest.mark.parametrize("serve", STARTUP_TENANT_SERVERS)
    async def test_background_values_stay_with_their_job(
        self, serve: Serve, request: pytest.FixtureRequest
    ) -> None:
        await job_tenant_scenario(serve, f"asgi/{request.node.callspec.id}")

    @pytest.mark.asyncio
    async def test_problem_details(self) -> None:
        await problem_scenario(raw_on_uvicorn, "asgi/uvicorn")


class TestWithoutLifespan:
    @pytest.mark.asyncio
    async def test_the_server_drains_background_work_as_it_stops(self) -> None:
        stopping = asyncio.Event()
        calls: list[Call[None]] = []
        reported: list[tuple[str, BaseException]] = []

        async def finishing() -> None:
            await stopping.wait()
            # Still at work once uvicorn has nothing else to wait for.
            await asyncio.sleep(0.5)

        async def failing() -> None:
            await finishing()
            raise ValueError("the receipt printer is out of paper")

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            assert scope["type"] == "http", "no lifespan: uvicorn sends none"
            work = failing if scope["path"] == "/fail" else finishing
            calls.append(await run_in_background(work, name=scope["path"]))
            await respond(scope, receive, send)

        def error_handler(call: Call[Any], exc: BaseException) -> None:
            reported.append((call.name, exc))

        paths = ["/ok"] * 10 + ["/fail"] * 2
        middleware = ActivityMiddleware(app, app_options={"error_handler": error_handler})
        assert middleware.app_activity is None
        async with (
            serve_uvicorn(middleware, lifespan="off", stopping=stopping) as url,
            httpx.AsyncClient(base_url=url, timeout=DEADLINE) as client,
        ):
            responses = await asyncio.gather(*(client.get(path) for path in paths))
            assert [response.status_code for response in responses] == [200] * len(paths)
            # Every response is in, and the work waits for the server to stop.
            assert [call.status for call in calls] == [CallStatus.RUNNING] * len(paths)
            app_activity = middleware.app_activity
            assert app_activity is not None  # opened by the first request
        # uvicorn waited for its requests, and they for their background work.
        assert sorted((call.name, call.status) for call in calls) == sorted(
            [("/ok", CallStatus.COMPLETED)] * 10 + [("/fail", CallStatus.FAILED)] * 2
        )
        assert [(name, str(exc)) for name, exc in reported] == [
            ("/fail", "the receipt printer is out of paper")
        ] * 2
        stats = app_activity.statistics()
        assert (stats.accepted, stats.completed, stats.failed) == (12, 10, 2)
        assert middleware.app_activity is app_activity
        await middleware.aclose()  # the failures were observed: nothing to raise
        assert middleware.app_activity is None

    def test_unobserved_failures_are_logged_when_the_loop_ends(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        calls: list[Call[None]] = []

        async def main() -> Activity | None:
            stopping = asyncio.Event()

            async def failing() -> None:
                await stopping.wait()
                raise ValueError("the receipt printer is out of paper")

            async def app(scope: Scope, receive: Receive, send: Send) -> None:
                calls.append(await run_in_background(failing))
                await respond(scope, receive, send)

            middleware = ActivityMiddleware(app, app_options={"name": "shop"})
            async with (
                serve_uvicorn(middleware, lifespan="off", stopping=stopping) as url,
                httpx.AsyncClient(base_url=url, timeout=DEADLINE) as client,
            ):
                assert (await client.get("/order")).status_code == 200
                assert [call.status for call in calls] == [CallStatus.RUNNING]
            # Drained as the server stopped, not cancelled at the end of the loop.
            assert [call.status for call in calls] == [CallStatus.FAILED]
            return middleware.app_activity

        with caplog.at_level(logging.ERROR):
            app_activity = asyncio.run(main())
        assert app_activity is not None
        assert app_activity.statistics().failed == 1
        records = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert [(r.name, r.getMessage()) for r in records] == [
            (
                "activity.integrations",
                "background work of the app activity 'shop' failed and nobody observed it",
            )
        ]
        assert records[0].exc_info is not None
        group = records[0].exc_info[1]
        assert isinstance(group, ExceptionGroup)
        failures = cast("ExceptionGroup[Exception]", group).exceptions
        assert [str(exc) for exc in failures] == ["the receipt printer is out of paper"]

    def test_work_left_when_the_loop_ends_is_cancelled_and_counted(self) -> None:
        # asyncio.run cancels the tasks left at its end: a request still waiting for
        # its background work, and that work. The app activity opened on first use
        # is closed then, and the work is reported cancelled.
        started: list[Call[None]] = []

        async def forever() -> None:
            await asyncio.Event().wait()

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            started.append(await run_in_background(forever))
            await respond(scope, receive, send)

        middleware = ActivityMiddleware(app, app_options={"shutdown_timeout": 0})

        async def main() -> Activity | None:
            exchange = Exchange()
            answered = asyncio.Event()

            async def send(message: Message) -> None:
                await exchange.send(message)
                if message["type"] == "http.response.body":
                    answered.set()

            request = asyncio.create_task(middleware(http_scope(), exchange.receive, send))
            async with asyncio.timeout(DEADLINE):
                await answered.wait()
            # Answered, and waiting for its background work.
            assert exchange.status == 200
            assert not request.done()
            return middleware.app_activity

        app_activity = asyncio.run(main())
        assert app_activity is not None
        assert middleware.app_activity is None
        assert [call.status for call in started] == [CallStatus.CANCELLED]
        stats = app_activity.statistics()
        assert (stats.accepted, stats.cancelled) == (1, 1)

    @pytest.mark.asyncio
    async def test_a_request_that_raised_before_answering_returns_at_once(self) -> None:
        started: list[Call[None]] = []

        async def forever() -> None:
            await asyncio.Event().wait()

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            started.append(await run_in_background(forever))
            raise RuntimeError("the server answers this one")

        middleware = ActivityMiddleware(app, app_options={"shutdown_timeout": 0})
        exchange = Exchange()
        with pytest.raises(RuntimeError, match="the server answers this one"):
            async with asyncio.timeout(DEADLINE):
                await middleware(http_scope(), exchange.receive, exchange.send)
        assert exchange.sent == []
        assert [call.status for call in started] == [CallStatus.RUNNING]
        await middleware.aclose()
        assert [call.status for call in started] == [CallStatus.CANCELLED]

    @pytest.mark.asyncio
    async def test_statistics_list_the_open_requests(self) -> None:
        entered = asyncio.Event()
        leave = asyncio.Event()

        async def slow(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                return
            entered.set()
            await leave.wait()
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        app = ActivityMiddleware(
            slow, app_options={"name": "shop"}, statistics_path="/_activity/stats"
        )
        async with serve_uvicorn(app) as url, aiohttp.ClientSession() as session:
            pending = asyncio.create_task(session.get(f"{url}/slow?x=1"))
            async with asyncio.timeout(DEADLINE):
                await entered.wait()
            async with session.get(f"{url}/_activity/stats") as response:
                assert response.status == 200
                assert response.headers["cache-control"] == "no-store"
                document = await response.json()
            async with session.post(f"{url}/_activity/stats") as response:
                assert response.status == 405
            leave.set()
            (await pending).release()
        assert document["app"]["name"] == "shop"
        assert [child["name"] for child in document["children"]] == ["GET /slow"]
        assert set(document["app"]) == set(document["children"][0])

    @pytest.mark.asyncio
    async def test_websocket_gets_a_request_activity_and_a_close_code(self) -> None:
        async def chat(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "websocket":
                raise AssertionError("a WebSocket application only")
            await receive()  # websocket.connect
            await send({"type": "websocket.accept"})
            info = current_request()
            assert info is not None
            assert info.type == "websocket"
            assert current_request_activity() is scope["activity.request_activity"]
            await send({"type": "websocket.send", "text": f"{info.request_id} {info.path}"})
            message = await receive()
            if message.get("text") == "overload":
                raise AsyncWorkRejectedError("too many chats")
            raise ActivityError("something else")

        async with (
            serve_uvicorn(ActivityMiddleware(chat)) as url,
            aiohttp.ClientSession() as session,
        ):
            closes: list[tuple[int | None, str]] = []
            for text in ("overload", "other"):
                async with session.ws_connect(
                    f"{url.replace('http', 'ws')}/chat", headers={"x-request-id": "ws-1"}
                ) as ws:
                    assert await ws.receive_str() == "ws-1 /chat"
                    await ws.send_str(text)
                    message = await ws.receive()
                    assert message.type is aiohttp.WSMsgType.CLOSE
                    closes.append((ws.close_code, str(message.extra)))
        assert closes == [(1013, "CO_E_ASYNC_WORK_REJECTED"), (1011, "E_FAIL")]


# -- at the ASGI level, without a server --------------------------------------------------


class Exchange:
    """Drive one ASGI HTTP request through an application by hand."""

    def __init__(self) -> None:
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def headers(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.sent[0]["headers"]}

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent[1:])


def http_scope(path: str = "/", headers: list[tuple[bytes, bytes]] | None = None) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"a=1",
        "root_path": "",
        "headers": headers or [],
        "client": ["127.0.0.1", 50000],
        "server": ["127.0.0.1", 8000],
    }


async def respond(scope: Scope, receive: Receive, send: Send, text: str = "ok") -> None:
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"x-request-id", b"mine")]}
    )
    await send({"type": "http.response.body", "body": text.encode()})


def raising(exc: BaseException, *, after_start: bool = False) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if after_start:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        raise exc

    return app


class TestAtTheASGILevel:
    @pytest.mark.asyncio
    async def test_request_info_and_locals(self) -> None:
        seen: list[Any] = []

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            info = current_request()
            request = current_request_activity()
            app_activity = current_app_activity()
            assert request is not None
            assert app_activity is not None
            assert app_activity.parent is None  # a root, whoever opened it
            seen.extend([info, request.name, request.parent is app_activity])
            seen.append(await request.synchronous_call(current_request_id))
            await respond(scope, receive, send)

        middleware = ActivityMiddleware(app, request_id_header="X-Correlation-Id")
        exchange = Exchange()
        headers = [(b"x-correlation-id", b"abc-1"), (b"x-tenant", b"Acme")]
        await middleware(http_scope("/orders", headers), exchange.receive, exchange.send)
        await middleware.aclose()
        info, name, is_child, thread_id = seen
        assert info == RequestInfo(
            type="http",
            method="GET",
            scheme="http",
            path="/orders",
            query_string="a=1",
            client=("127.0.0.1", 50000),
            headers=(("x-correlation-id", "abc-1"), ("x-tenant", "Acme")),
            request_id="abc-1",
        )
        assert info.header("X-Tenant") == "Acme"
        assert info.header("missing", "none") == "none"
        assert (name, is_child, thread_id) == ("GET /orders", True, "abc-1")
        # The application's own request-id header is not doubled.
        assert exchange.headers == {"x-correlation-id": "abc-1", "x-request-id": "mine"}

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        "supplied",
        [b"", b"has space", b"\xe9t\xe9", b"x" * 129],
        ids=["empty", "space", "latin", "long"],
    )
    async def test_an_unfit_request_id_is_replaced(self, supplied: bytes) -> None:
        exchange = Exchange()
        middleware = ActivityMiddleware(respond, echo_request_id=True)
        await middleware(
            http_scope("/", [(b"x-request-id", supplied)]), exchange.receive, exchange.send
        )
        await middleware.aclose()
        assert exchange.status == 200

    @pytest.mark.asyncio
    async def test_a_500_is_answered_then_reraised(self) -> None:
        exchange = Exchange()
        middleware = ActivityMiddleware(raising(ActivityError("boom")))
        with pytest.raises(ActivityError, match="boom"):
            await middleware(http_scope("/x"), exchange.receive, exchange.send)
        await middleware.aclose()
        assert exchange.status == 500
        problem = json.loads(exchange.body)
        assert problem["hresult_name"] == "E_FAIL"
        assert problem["detail"] == "The server failed to do the work for this request."

    @pytest.mark.asyncio
    async def test_after_the_response_started_nothing_is_masked(self) -> None:
        exchange = Exchange()
        middleware = ActivityMiddleware(raising(AsyncWorkRejectedError("late"), after_start=True))
        with pytest.raises(AsyncWorkRejectedError):
            await middleware(http_scope(), exchange.receive, exchange.send)
        await middleware.aclose()
        assert [m["type"] for m in exchange.sent] == ["http.response.start"]

    @pytest.mark.asyncio
    async def test_problem_details_can_be_turned_off(self) -> None:
        middleware = ActivityMiddleware(
            raising(AsyncWorkRejectedError("full")), problem_details=False
        )
        exchange = Exchange()
        with pytest.raises(AsyncWorkRejectedError):
            await middleware(http_scope(), exchange.receive, exchange.send)
        await middleware.aclose()
        assert exchange.sent == []

    @pytest.mark.asyncio
    async def test_status_map_and_retry_after_are_configurable(self) -> None:
        middleware = ActivityMiddleware(
            raising(AsyncWorkRejectedError("full")),
            status_map={HResult.CO_E_ASYNC_WORK_REJECTED: 429, 0x80040001: 409},
            retry_after=30,
        )
        exchange = Exchange()
        await middleware(http_scope(), exchange.receive, exchange.send)
        await middleware.aclose()
        assert exchange.status == 429
        assert "retry-after" not in exchange.headers
        assert http_status_of(ActivityError(hresult=0x80040001), {0x80040001: 409}) == 409
        assert http_status_of(ActivityError(hresult=0x80040001)) == 500
        problem = problem_details(AsyncWorkRejectedError(), request_id="r")
        assert dict(problem.headers(30))["retry-after"] == "30"

    @pytest.mark.asyncio
    async def test_a_non_library_exception_passes_through(self) -> None:
        middleware = ActivityMiddleware(raising(KeyError("nope")))
        exchange = Exchange()
        with pytest.raises(KeyError):
            await middleware(http_scope(), exchange.receive, exchange.send)
        await middleware.aclose()
        assert exchange.sent == []

    @pytest.mark.asyncio
    async def test_unobserved_background_failure_fails_lifespan_shutdown(self) -> None:
        async def broken() -> None:
            raise ValueError("the receipt printer is out of paper")

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "lifespan":
                while (await receive())["type"] != "lifespan.shutdown":
                    await send({"type": "lifespan.startup.complete"})
                await send({"type": "lifespan.shutdown.complete"})
                return
            call = await run_in_background(broken)
            await respond(scope, receive, send)
            await call.wait()  # finished, not observed

        middleware = ActivityMiddleware(app)
        inbox: asyncio.Queue[Message] = asyncio.Queue()
        outbox: list[Message] = []
        started = asyncio.Event()

        async def lifespan_send(message: Message) -> None:
            outbox.append(message)
            started.set()

        lifespan = asyncio.create_task(
            middleware({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, lifespan_send)
        )
        await inbox.put({"type": "lifespan.startup"})
        exchange = Exchange()
        async with asyncio.timeout(DEADLINE):
            await started.wait()
        await middleware(http_scope(), exchange.receive, exchange.send)
        await inbox.put({"type": "lifespan.shutdown"})
        async with asyncio.timeout(DEADLINE):
            await lifespan
        assert [m["type"] for m in outbox] == [
            "lifespan.startup.complete",
            "lifespan.shutdown.failed",
        ]
        assert "the receipt printer is out of paper" in outbox[1]["message"]

    @pytest.mark.asyncio
    async def test_run_in_background_needs_an_app_activity(self) -> None:
        async def work() -> None:
            pass

        coroutine = work()
        with pytest.raises(LookupError, match="no app activity"):
            await run_in_background(coroutine)
        # Closed: no "never awaited" warning.
        assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED
        assert current_request() is None
        assert current_request_id() is None

    @pytest.mark.parametrize(
        ("options", "field"),
        [
            ({"retry_after": -1}, "retry_after"),
            ({"retry_after": 1.5}, "retry_after"),
            ({"status_map": {HResult.E_FAIL: 700}}, "status_map"),
            ({"status_map": {"E_FAIL": 500}}, "status_map"),
            ({"statistics_path": "stats"}, "statistics_path"),
            ({"request_id_header": ""}, "request_id_header"),
            ({"app_options": {"max_concurrency": 0}}, "max_concurrency"),
            ({"request_options": "fast"}, "request_options"),
        ],
    )
    def test_bad_options_are_refused(self, options: dict[str, Any], field: str) -> None:
        with pytest.raises(InvalidArgumentError) as refused:
            ActivityMiddleware(respond, **options)
        assert refused.value.field == field
        with pytest.raises(InvalidArgumentError) as refused_again:
            WebOptions(**options)
        assert str(refused_again.value) == str(refused.value)

    def test_the_options_are_declared_once(self) -> None:
        # The keywords the entry points are typed with are WebOptions' fields.
        declared = {f.name: f.type for f in dataclasses.fields(WebOptions) if f.init}
        keywords = {
            name: getattr(hint, "__forward_arg__", hint)
            for name, hint in WebKeywords.__annotations__.items()
        }
        assert keywords == declared
        assert WebKeywords.__required_keys__ == frozenset()
        defaults = WebOptions()
        assert {name: getattr(defaults, name) for name in declared} == {
            "app_options": None,
            "request_options": None,
            "request_id_header": "x-request-id",
            "echo_request_id": True,
            "problem_details": True,
            "status_map": None,
            "retry_after": 1,
            "statistics_path": None,
            "session_key": None,
        }
        assert defaults.request_config == ActivityConfig()
        assert defaults.statuses == DEFAULT_STATUS_MAP
        assert defaults.app_config == ActivityConfig(name="app")

    def test_a_resolved_status_map_answers_as_its_overrides(self) -> None:
        overrides = {0xA0040001: 409, HResult.E_INVALIDARG: 422}
        resolved = resolve_status_map(overrides)
        expected = {**DEFAULT_STATUS_MAP, HResult(0xA0040001): 409, HResult.E_INVALIDARG: 422}
        assert resolved == expected
        assert resolve_status_map(resolved) == resolved
        refused = InvalidArgumentError("bad page")
        assert http_status_of(refused, resolved) == http_status_of(refused, overrides) == 422
        assert problem_details(refused, status_map=resolved) == problem_details(
            refused, status_map=overrides
        )
        with pytest.raises(InvalidArgumentError, match="HTTP status"):
            resolve_status_map({HResult.E_FAIL: 99})

    def test_the_options_are_frozen_and_normalised(self) -> None:
        app_options: dict[str, Any] = {"max_concurrency": 3}
        status_map = {0xA0040001: 409}
        options = WebOptions(
            app_options=app_options,
            request_id_header="X-Trace-Id",
            echo_request_id=0,  # type: ignore[arg-type]  # any truth value, as before
            status_map=status_map,
        )
        app_options["max_concurrency"] = 4
        status_map[0xA0040001] = 410
        assert options.app_options == {"max_concurrency": 3}
        assert options.app_config == ActivityConfig(name="app", max_concurrency=3)
        assert options.status_map == {0xA0040001: 409}
        assert options.statuses[HResult(0xA0040001)] == 409
        assert options.statuses[HResult.E_INVALIDARG] == 400
        assert options.request_id_header == "x-trace-id"
        assert options.echo_request_id is False
        with pytest.raises(dataclasses.FrozenInstanceError):
            options.retry_after = 2  # type: ignore[misc]

    def test_defaults(self) -> None:
        assert DEFAULT_STATUS_MAP == {
            HResult.CO_E_ASYNC_WORK_REJECTED: 503,
            HResult.RPC_E_DISCONNECTED: 503,
            HResult.E_INVALIDARG: 400,
            HResult.E_ACCESSDENIED: 403,
            HResult.E_NOTIMPL: 501,
            HResult.E_TIMEOUT: 504,
            HResult.CONTEXT_E_SYNCH_TIMEOUT: 504,
        }
        middleware = ActivityMiddleware(respond, app_options=ActivityConfig(max_pending=5))
        assert middleware.app_activity is None
        problem = problem_details(InvalidArgumentError("bad page"), instance="/p")
        assert isinstance(problem, ProblemDetails)
        assert json.loads(problem.body()) == {
            "type": "about:blank",
            "title": "Bad Request",
            "status": 400,
            "detail": "bad page",
            "instance": "/p",
            "hresult": "0x80070057",
            "hresult_name": "E_INVALIDARG",
        }
