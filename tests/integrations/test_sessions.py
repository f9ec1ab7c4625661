"""Sessions (``session_key``): one session's requests one at a time, sessions side by side.

On a real uvicorn server, with concurrent httpx requests. Overlap and its absence
are proved with events and the session activities' counters, never with sleeps.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from aiohttp import web

from activity import Activity, InvalidArgumentError, current_activity
from activity.integrations.aiohttp import setup
from activity.integrations.asgi import (
    ActivityMiddleware,
    RequestInfo,
    WebOptions,
    current_request_activity,
)

from .scenarios import DEADLINE
from .servers import serve_aiohttp, serve_uvicorn

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aiohttp.typedefs import Handler

    from activity.integrations.asgi import Receive, Scope, Send


def session_of(info: RequestInfo) -> str | None:
    """The session is the ``x-session`` header; a request without one has none."""
    return info.header("x-session")


class Sessions:
    """What the endpoints share with the test: who is inside, and the gates they wait on."""

    def __init__(self) -> None:
        self.inside: dict[str, int] = {}
        self.most_inside: dict[str, int] = {}
        self.entered: dict[str, asyncio.Event] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.order: list[str] = []
        self.activities: dict[str, str] = {}

    def event(self, table: dict[str, asyncio.Event], name: str) -> asyncio.Event:
        return table.setdefault(name, asyncio.Event())

    def app(self) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                return
            headers = dict(scope["headers"])
            session = headers.get(b"x-session", b"-").decode()
            _, verb, name = scope["path"].split("/")
            self.inside[session] = inside = self.inside.get(session, 0) + 1
            self.most_inside[session] = max(self.most_inside.get(session, 0), inside)
            self.order.append(name)
            request = current_request_activity()
            parent = None if request is None else request.parent
            self.activities[name] = "-" if parent is None else parent.name
            try:
                self.event(self.entered, name).set()
                async with asyncio.timeout(DEADLINE):
                    if verb == "meet":  # returns only if `name`'s partner runs meanwhile
                        await self.event(self.entered, partner(name)).wait()
                    elif verb == "hold":
                        await self.event(self.gates, name).wait()
                body = f"{verb} {name}".encode()
                status = 200
            except TimeoutError:
                body, status = b"timed out", 504
            finally:
                self.inside[session] -= 1
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": body})

        return app


def partner(name: str) -> str:
    """``a1`` meets ``b1`` and the other way round."""
    return ("b" if name[0] == "a" else "a") + name[1:]


def session_activity(middleware: ActivityMiddleware, session: str) -> Activity | None:
    """The activity of one session, found through the app activity's children."""
    app = middleware.app_activity
    assert app is not None
    for sessions in app.children:
        if sessions.name == "app.sessions":
            for child in sessions.children:
                if child.name == f"app.sessions[{session!r}]":
                    return child
    return None


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(DEADLINE):
        while not condition():  # noqa: ASYNC110 - the condition is the server's state
            await asyncio.sleep(0.001)


async def get(client: httpx.AsyncClient, path: str, session: str | None) -> httpx.Response:
    headers = {} if session is None else {"x-session": session}
    return await client.get(path, headers=headers)


@pytest.mark.asyncio
async def test_two_sessions_run_side_by_side() -> None:
    state = Sessions()
    middleware = ActivityMiddleware(state.app(), session_key=session_of)
    async with serve_uvicorn(middleware) as url, httpx.AsyncClient(base_url=url) as client:
        a, b = await asyncio.gather(get(client, "/meet/a1", "a"), get(client, "/meet/b1", "b"))
    assert (a.status_code, a.text) == (200, "meet a1")
    assert (b.status_code, b.text) == (200, "meet b1")


@pytest.mark.asyncio
async def test_one_sessions_requests_never_overlap_while_another_session_goes_on() -> None:
    state = Sessions()
    middleware = ActivityMiddleware(state.app(), session_key=session_of)
    names = ["a1", "a2", "a3", "a4"]

    def entered_a() -> list[str]:
        return [name for name in state.order if name in names]

    async with serve_uvicorn(middleware) as url, httpx.AsyncClient(base_url=url) as client:
        held = [asyncio.create_task(get(client, f"/hold/{name}", "a")) for name in names]
        for released in range(len(names)):
            # One more of session a's requests has come in; the others wait for their turn.
            await until(lambda: len(entered_a()) == released + 1)  # noqa: B023
            session = session_activity(middleware, "a")
            assert session is not None
            counts = session.statistics
            waiting = len(names) - released - 1
            await until(lambda: counts().pending == waiting)  # noqa: B023
            assert len(entered_a()) == released + 1
            assert state.inside["a"] == 1
            if released == 0:
                # Session b is not held up by session a.
                other = await get(client, "/quick/b1", "b")
                assert (other.status_code, other.text) == (200, "quick b1")
            state.event(state.gates, entered_a()[-1]).set()
        responses = await asyncio.gather(*held)
    assert [r.status_code for r in responses] == [200] * len(names)
    assert state.most_inside["a"] == 1
    assert state.most_inside["b"] == 1
    assert sorted(state.order) == sorted([*names, "b1"])
    assert state.activities["a1"] == "app"  # the request activity is the app's child as ever


@pytest.mark.asyncio
async def test_requests_without_a_session_are_not_serialized() -> None:
    state = Sessions()
    middleware = ActivityMiddleware(state.app(), session_key=session_of)
    async with serve_uvicorn(middleware) as url, httpx.AsyncClient(base_url=url) as client:
        a, b = await asyncio.gather(get(client, "/meet/a1", None), get(client, "/meet/b1", None))
        assert (a.status_code, b.status_code) == (200, 200)
        app = middleware.app_activity
        assert app is not None
        sessions = [child for child in app.children if child.name == "app.sessions"]
        assert len(sessions) == 1
        assert sessions[0].children == []


@pytest.mark.asyncio
async def test_the_session_activity_is_closed_with_the_app() -> None:
    state = Sessions()
    middleware = ActivityMiddleware(state.app(), session_key=session_of)
    async with serve_uvicorn(middleware) as url, httpx.AsyncClient(base_url=url) as client:
        response = await get(client, "/quick/a1", "a")
        assert response.status_code == 200
        activity = session_activity(middleware, "a")
        assert activity is not None
        assert activity.statistics().completed == 1
    assert middleware.app_activity is None
    assert "closed" in repr(activity)


@pytest.mark.asyncio
async def test_the_handler_still_runs_in_its_request_activity() -> None:
    seen: list[str | None] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        current = current_activity()
        seen.append(None if current is None else current.name)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = ActivityMiddleware(app, session_key=session_of)
    async with serve_uvicorn(middleware) as url, httpx.AsyncClient(base_url=url) as client:
        response = await get(client, "/x/y", "a")
        assert response.status_code == 204
    assert seen == ["GET /x/y"]


def test_session_key_must_be_callable() -> None:
    bad: Any = "x-session"
    with pytest.raises(InvalidArgumentError) as refused:
        WebOptions(session_key=bad)
    assert refused.value.field == "session_key"
    assert WebOptions().session_key is None


@pytest.mark.asyncio
async def test_sessions_on_aiohttp() -> None:
    inside: dict[str, int] = {}
    most: dict[str, int] = {}
    entered: dict[str, asyncio.Event] = {}

    def event(name: str) -> asyncio.Event:
        return entered.setdefault(name, asyncio.Event())

    async def handler(request: web.Request) -> web.Response:
        session = request.headers.get("x-session", "-")
        name = request.match_info["name"]
        inside[session] = inside.get(session, 0) + 1
        most[session] = max(most.get(session, 0), inside[session])
        try:
            event(name).set()
            if name.startswith(("a", "b")) and name.endswith("1"):
                async with asyncio.timeout(DEADLINE):
                    await event(partner(name)).wait()  # the other session runs meanwhile
            else:
                # Every request of the session has come in (and waits, unless it overlaps).
                async with asyncio.timeout(DEADLINE):
                    await all_in.wait()
        finally:
            inside[session] -= 1
        return web.Response(text=name)

    arrived: list[str] = []
    all_in = asyncio.Event()

    @web.middleware
    async def count_arrivals(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.headers.get("x-session") == "c":
            arrived.append(request.path)
            if len(arrived) == 6:
                all_in.set()
        return await handler(request)

    application = web.Application()
    setup(application, session_key=session_of)
    application.middlewares.insert(0, count_arrivals)  # outside the sessions' turns
    application.router.add_get("/{name}", handler)
    async with serve_aiohttp(application) as url, httpx.AsyncClient(base_url=url) as client:
        met = await asyncio.gather(get(client, "/a1", "a"), get(client, "/b1", "b"))
        assert [r.text for r in met] == ["a1", "b1"]
        serial = await asyncio.gather(*(get(client, f"/c{i}", "c") for i in range(2, 8)))
        assert [r.status_code for r in serial] == [200] * 6
    assert most["c"] == 1
