"""The web runtime that every integration shares.

One :class:`WebRuntime` per application: it holds the settings, the
:class:`AppHost` that opens, shares and closes the app activity, and enters a
request activity (a child of the app activity) with the request's values. The
ASGI middleware and the framework plugins are thin adapters over it: the ASGI
ones hand whole connections to :func:`handle_connection` and lifespans to
:func:`handle_lifespan`; the others (aiohttp) call
:meth:`WebRuntime.request_activity` themselves. :func:`hand_off` is how every
integration gives work to the app activity with values of its own.

A private module: names shared between the modules of
:mod:`activity.integrations` carry no leading underscore; users import the
public ones from :mod:`activity.integrations.asgi` or a framework's module.

Like every module of :mod:`activity.integrations`, it uses only the public API
of :mod:`activity`: the app activity is opened with ``Activity.open()`` as a
root (``parent=None``) whose calls each keep ``ActivityLocal`` values of
their own (``LocalScope.CALL``); a request activity names it as its parent;
the lifespan's startup code runs in it through ``Activity.as_current()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import traceback
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, Final, final

import anyio

from activity import (
    Activity,
    ActivityClosedError,
    ActivityError,
    ActivityLocal,
    KeyedActivity,
    LocalScope,
)

from ._request import APP_ACTIVITY, REQUEST, REQUEST_ACTIVITY, RequestInfo, app_statistics
from .problem import ProblemDetails, problem_details

if TYPE_CHECKING:
    from collections.abc import Hashable

    from activity import ActivityConfig, Call

    from ._options import WebOptions

#: An ASGI connection scope (the same shape as Starlette's, so the types agree).
Scope = MutableMapping[str, Any]
#: An ASGI event.
Message = MutableMapping[str, Any]
#: The ASGI ``receive`` callable.
Receive = Callable[[], Awaitable[Message]]
#: The ASGI ``send`` callable.
Send = Callable[[Message], Awaitable[None]]
#: An ASGI 3 application.
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Where :func:`handle_connection` puts the activities in the connection scope.
SCOPE_REQUEST_ACTIVITY: Final = "activity.request_activity"
SCOPE_APP_ACTIVITY: Final = "activity.app_activity"

_logger = logging.getLogger("activity.integrations")

# A request id taken from a client is echoed back and logged: keep it short and printable.
_VALID_REQUEST_ID: Final = re.compile(r"[\x21-\x7e]{1,128}")
_MAX_NAME: Final = 200

#: With ``session_key``: how many sessions may have an activity at once (a new one
#: evicts the session idle the longest; when all are busy it is answered 503) ...
SESSION_MAX_KEYS: Final = 10_000
#: ... and how many idle seconds a session's activity outlives its last request.
SESSION_IDLE_TIMEOUT: Final = 60.0


#: The background work of a request that a server without lifespan waits for.
JOBS: Final = ActivityLocal["Jobs | None"]("activity.integrations.jobs", default=None)


# -- background work with values of its own -----------------------------------------------------


async def hand_off(
    app: Activity, fn: Any, args: tuple[Any, ...], name: str | None, timeout: float | None
) -> Call[Any]:
    """Submit background work to ``app`` with ``ActivityLocal`` values of its own.

    Shared by the integrations: :func:`run_in_background` and aiohttp's ``spawn``.
    The app activity keeps each call's values apart (``LocalScope.CALL``): a job
    starts with what the submitting code sees, over the app's own values, and
    what it sets stays with it and the work it starts.
    """
    call: Call[Any] = await app.asynchronous_call(fn, *args, name=name, timeout=timeout)
    jobs = JOBS.get()
    if jobs is not None:
        jobs.add(call)
    return call


@final
class Jobs:
    """The unfinished background work of one request, for a server that sends no lifespan."""

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: set[Call[Any]] = set()

    def add(self, call: Call[Any]) -> None:
        self._calls.add(call)
        call.add_done_callback(self._calls.discard)

    async def wait(self) -> None:
        """Wait until every call, and those that they handed over meanwhile, has finished."""
        calls = self._calls
        while calls:
            await next(iter(calls)).wait()


# -- hosting the app activity ----------------------------------------------------------------


@final
class AppHost:
    """Opens, shares and closes the app activity, in a context of its own.

    It can be opened and closed again (a test client may run the lifespan more
    than once); each opening makes a new activity. While it closes, it takes no
    new request.
    """

    __slots__ = (
        "_closing",
        "_opening",
        "_watcher",
        "activity",
        "config",
        "managed",
        "sessions",
        "with_sessions",
    )

    def __init__(self, config: ActivityConfig, *, sessions: bool = False) -> None:
        self.config = config
        self.activity: Activity | None = None
        #: Whether the app has sessions (``session_key``), and their keyed
        #: activity, a child of the app activity, while it is open.
        self.with_sessions = sessions
        self.sessions: KeyedActivity | None = None
        #: Whether a lifespan (or the application's startup and cleanup) opened the
        #: activity and will close it; else requests wait for their background work.
        self.managed = False
        self._opening: anyio.Event | None = None
        self._closing: anyio.Event | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def open(self, *, lazily: bool = False) -> Activity:
        """Return the open app activity, opening it first if needed.

        :param lazily: opened on first use rather than at lifespan startup: then, on
            asyncio, it is closed when the event loop ends
        :raises ActivityClosedError: if it is closing
        """
        while True:
            if self._closing is not None:
                raise ActivityClosedError(
                    f"the app activity {self.config.name!r} is closing and takes no request"
                )
            if self.activity is not None:
                if not lazily:
                    self.managed = True
                return self.activity
            if self._opening is None:
                break
            await self._opening.wait()
        opening = self._opening = anyio.Event()
        try:
            # A root, whatever task happens to open it (the first request's, say),
            # opened without a block: it outlives the task that opens it.
            act = Activity(self.config.with_options({"local_scope": LocalScope.CALL}), parent=None)
            await act.open()
            with act.as_current():
                APP_ACTIVITY.set(act)
            if self.with_sessions:
                try:
                    self.sessions = await KeyedActivity(
                        max_keys=SESSION_MAX_KEYS,
                        idle_timeout=SESSION_IDLE_TIMEOUT,
                        name=f"{act.name}.sessions"[:_MAX_NAME],
                        parent=act,
                    ).open()
                except BaseException:
                    await act.aclose()
                    raise
            self.activity = act
            self.managed = not lazily
            if lazily:
                self._close_at_loop_end()
        finally:
            self._opening = None
            opening.set()
        return act

    async def close(self) -> None:
        """Drain and close the app activity (a no-op when it is not open).

        :raises ExceptionGroup: the failures nobody observed, as the activity raises them
        """
        if self._closing is not None:
            await self._closing.wait()
            return
        while self._opening is not None:
            await self._opening.wait()
        act = self.activity
        if act is None:
            return
        closing = self._closing = anyio.Event()
        try:
            await self._close_activities(act)
        finally:
            self.activity = None
            self.managed = False
            self._closing = None
            closing.set()
            watcher, self._watcher = self._watcher, None
            if watcher is not None and watcher is not asyncio.current_task():
                watcher.cancel()

    async def _close_activities(self, act: Activity) -> None:
        """Close the sessions (their requests' turns drain first), then the app activity."""
        sessions, self.sessions = self.sessions, None
        if sessions is None:
            await act.aclose()
            return
        failures: list[Exception] = []
        try:
            await sessions.aclose()
        except ExceptionGroup as group:
            failures.extend(group.exceptions)
        try:
            await act.aclose()
        except ExceptionGroup as group:
            failures.extend(group.exceptions)
        if failures:
            message = f"{len(failures)} unobserved failure(s) in activity {act.name!r}"
            raise ExceptionGroup(message, failures)

    @contextlib.asynccontextmanager
    async def session_turn(self, key: Hashable) -> AsyncGenerator[None]:
        """Hold the turn of session ``key`` while the block runs.

        The turn is a call of the session's activity that lasts as long as the
        block: it waits behind the session's earlier requests (and for a place
        among the sessions), and the session's later requests wait behind it.

        :raises AsyncWorkRejectedError: if the session's queue is full, or every
            session is busy
        """
        sessions = self.sessions
        if sessions is None:
            raise ActivityClosedError("the app activity has no sessions open")
        turn = anyio.Event()
        release = anyio.Event()

        async def request_turn() -> None:
            turn.set()
            await release.wait()

        call = await sessions.asynchronous_call(key, request_turn, name="request")
        call.add_done_callback(lambda _: turn.set())
        try:
            await turn.wait()
            if call.done():  # cancelled (shutdown) before its turn came
                await call
            yield
        finally:
            release.set()
            if not call.done() and not turn.is_set():
                call.cancel("the request ended before its session's turn came")

    def _close_at_loop_end(self) -> None:
        # Without a lifespan nobody says when the application ends; on asyncio the
        # end of the loop does (asyncio.run cancels the tasks that are left), so a
        # task that waits for that cancellation closes the activity. Elsewhere,
        # ActivityMiddleware.aclose() does. By then the server has waited for the
        # requests, and they for their background work: what is left is work
        # handed to the app activity by other means, or that outlived the server's
        # patience, and the loop has cancelled it already.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._watcher = loop.create_task(self._wait_for_loop_end(), name="activity app host")

    async def _wait_for_loop_end(self) -> None:
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            name = self.config.name
            try:
                await self.close()
            except Exception as failures:
                # Nobody is left to raise them to: asyncio would only log them as
                # "unhandled exception during asyncio.run() shutdown", unnamed.
                _logger.error(
                    "background work of the app activity %r failed and nobody observed it",
                    name,
                    exc_info=failures,
                )


# -- the shared request machinery --------------------------------------------------------------


@final
class WebRuntime:
    """What every integration shares: the settings, the app host, the request activities."""

    __slots__ = ("host", "options")

    def __init__(self, options: WebOptions) -> None:
        self.options = options
        self.host = AppHost(options.app_config, sessions=options.session_key is not None)

    def request_id(self, supplied: str | None) -> str:
        """The client's request id if it is a sane one, else a new one."""
        if supplied is not None and _VALID_REQUEST_ID.fullmatch(supplied):
            return supplied
        return uuid.uuid4().hex

    def request_id_of_scope(self, scope: Scope) -> str:
        wanted = self.options.request_id_header
        if wanted is not None:
            encoded = wanted.encode("latin-1")
            for name, value in scope.get("headers") or ():
                if name.lower() == encoded:
                    return self.request_id(value.decode("latin-1"))
        return uuid.uuid4().hex

    @contextlib.asynccontextmanager
    async def request_activity(
        self, info: RequestInfo, jobs: Jobs | None = None
    ) -> AsyncGenerator[Activity]:
        """Enter a request activity, a child of the app activity, with the request's values.

        :param jobs: where the request's background work is to be counted, for a
            server without lifespan
        """
        app = await self.host.open(lazily=True)
        config = self.options.request_config
        if config.name is None:
            config = config.with_options({"name": f"{info.method} {info.path}"[:_MAX_NAME]})
        session_key = self.options.session_key
        key = None if session_key is None else session_key(info)
        async with contextlib.AsyncExitStack() as stack:
            if key is not None:
                # The session's turn spans the request activity, its drain included.
                await stack.enter_async_context(self.host.session_turn(key))
            async with Activity(config, parent=app) as request:
                REQUEST.set(info)
                APP_ACTIVITY.set(app)
                REQUEST_ACTIVITY.set(request)
                if jobs is not None:
                    JOBS.set(jobs)
                yield request

    def problem(self, exc: ActivityError, info: RequestInfo | None) -> ProblemDetails:
        """The problem document that answers ``exc``, with this application's statuses."""
        return problem_details(
            exc,
            status_map=self.options.statuses,
            instance=None if info is None else info.path,
            request_id=None if info is None else info.request_id,
        )

    async def statistics(self) -> bytes:
        app = await self.host.open(lazily=True)
        return app_statistics(app).model_dump_json().encode()


# -- lifespan --------------------------------------------------------------------------------


def make_current(app: Activity) -> contextlib.ExitStack:
    """Run the rest of the calling task in the app activity, as its ``async with`` body would.

    For the application's lifespan: its startup code (a lifespan context, startup
    hooks) can then reach the app activity and hand it work that outlives startup.
    The lifespan's messages, not a block of code, say when that ends: the
    returned stack holds ``app.as_current()`` open until :func:`restore`.
    """
    stack = contextlib.ExitStack()
    stack.enter_context(app.as_current())
    return stack


def restore(entered: contextlib.ExitStack) -> None:
    """End what :func:`make_current` began (in another task, it undoes only its own)."""
    entered.close()


async def handle_lifespan(
    host: AppHost, app: ASGIApp, scope: Scope, receive: Receive, send: Send
) -> None:
    """Run an ASGI lifespan: open the app activity at startup, drain it at shutdown.

    The application's startup code runs in the app activity (:func:`make_current`),
    and the drain comes before the application's own shutdown code. An
    application that does not speak the lifespan protocol gets one spoken for
    the app activity alone.
    """
    received = False
    failure: Exception | None = None
    token: contextlib.ExitStack | None = None

    async def lifespan_receive() -> Message:
        nonlocal received, failure, token
        message = await receive()
        received = True
        if message["type"] == "lifespan.startup":
            token = make_current(await host.open())
        elif message["type"] == "lifespan.shutdown":
            if token is not None:
                restore(token)
                token = None
            # Drain before the application's own shutdown closes what the
            # background work may still use (database pools, clients).
            try:
                await host.close()
            except Exception as exc:
                failure = exc
        return message

    async def lifespan_send(message: Message) -> None:
        if message["type"] == "lifespan.shutdown.complete" and failure is not None:
            message = {"type": "lifespan.shutdown.failed", "message": _describe(failure)}
        await send(message)

    try:
        await app(scope, lifespan_receive, lifespan_send)
    except Exception:
        if received:
            raise
        # The application does not speak the lifespan protocol (it raised before
        # receiving anything): speak it for the app activity alone.
        await _own_lifespan(host, receive, send)
    else:
        if not received:
            await _own_lifespan(host, receive, send)
    finally:
        if token is not None:
            restore(token)
        if host.activity is not None and received:
            await host.close()


def _describe(failure: BaseException) -> str:
    return "".join(traceback.format_exception(failure))


async def _own_lifespan(host: AppHost, receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await host.open()
            except Exception as exc:
                await send({"type": "lifespan.startup.failed", "message": _describe(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            try:
                await host.close()
            except Exception as exc:
                await send({"type": "lifespan.shutdown.failed", "message": _describe(exc)})
                return
            await send({"type": "lifespan.shutdown.complete"})
            return


# -- connections -----------------------------------------------------------------------------


@final
class _Response:
    """What the application has sent so far on one connection."""

    __slots__ = ("closed", "started")

    def __init__(self) -> None:
        self.started = False
        self.closed = False


async def handle_connection(
    web: WebRuntime, app: ASGIApp, scope: Scope, receive: Receive, send: Send
) -> None:
    """Run one HTTP request or WebSocket connection in a request activity."""
    options = web.options
    request_id = web.request_id_of_scope(scope)
    info = RequestInfo.from_scope(scope, request_id)
    response = _Response()
    echo: tuple[bytes, bytes] | None = None
    if options.echo_request_id and options.request_id_header is not None:
        echo = (options.request_id_header.encode("latin-1"), request_id.encode("latin-1"))

    async def send_wrapper(message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start" or kind == "websocket.http.response.start":
            response.started = True
            if echo is not None:
                headers: list[tuple[bytes, bytes]] = list(message.get("headers") or ())
                if all(name.lower() != echo[0] for name, _ in headers):
                    headers.append(echo)
                    message = {**message, "headers": headers}
        elif kind == "websocket.accept":
            response.started = True
        elif kind == "websocket.close":
            response.closed = True
        await send(message)

    if info.type == "http" and info.path == options.statistics_path:
        try:
            await _send_statistics(web, info, send_wrapper)
        except ActivityError as exc:
            await _answer(web, exc, info, response, send_wrapper)
        return

    # Without lifespan the server waits for nothing but requests when it stops: a
    # request's background work is drained by making the request wait for it.
    jobs = None if web.host.managed else Jobs()
    try:
        try:
            async with web.request_activity(info, jobs) as request:
                scope[SCOPE_REQUEST_ACTIVITY] = request
                scope[SCOPE_APP_ACTIVITY] = request.parent
                await app(scope, receive, send_wrapper)
        except ActivityError as exc:
            await _answer(web, exc, info, response, send_wrapper)
    except Exception:
        # Not before an answer: the server answers once the application returns.
        if jobs is not None and response.started:
            await jobs.wait()
        raise
    if jobs is not None:
        await jobs.wait()


async def _answer(
    web: WebRuntime, exc: ActivityError, info: RequestInfo, response: _Response, send: Send
) -> None:
    """Answer an ActivityError that escaped the application, or re-raise it."""
    if not web.options.problem_details:
        raise exc
    problem = web.problem(exc, info)
    if info.type == "websocket":
        if response.closed:
            raise exc
        # 1013 is "try again later", 1011 "internal error" (RFC 6455 and the IANA registry).
        code = 1013 if problem.status == 503 else 1011
        await send({"type": "websocket.close", "code": code, "reason": problem.hresult_name})
    else:
        if response.started:
            raise exc
        body = problem.body()
        headers = [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in problem.headers(web.options.retry_after)
        ]
        headers.append((b"content-length", str(len(body)).encode("latin-1")))
        await send({"type": "http.response.start", "status": problem.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    if problem.status == 500:
        raise exc


async def _send_statistics(web: WebRuntime, info: RequestInfo, send: Send) -> None:
    if info.method not in ("GET", "HEAD"):
        await send(
            {
                "type": "http.response.start",
                "status": 405,
                "headers": [(b"allow", b"GET, HEAD"), (b"content-length", b"0")],
            }
        )
        await send({"type": "http.response.body", "body": b""})
        return
    body = await web.statistics()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("latin-1")),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if info.method == "HEAD" else body})
