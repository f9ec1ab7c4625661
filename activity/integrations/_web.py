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

It is also the one module of the package that uses the core's private names;
the others import only from :mod:`activity`. They are:

* ``drive_in_context`` (``activity._backends._common``): :class:`AppHost` opens
  and closes the app activity in a context of its own, so that it is a root
  and nothing of the task that opened it sticks to it;
* ``frame_var`` (``activity._context``): :func:`make_current` and
  :func:`restore` run the lifespan's startup code in the app activity, and
  :meth:`WebRuntime.request_activity` makes the app activity current while it
  enters a request activity, so that it is the request's parent;
  :func:`visible_locals` walks the frame's chain of ``ActivityLocal`` tables;
* :func:`core_of` (``Activity._core``, typed ``activity._core.CoreState``):
  :class:`AppHost` gives the app activity a table of values per job
  (:class:`AppLocals`), and :func:`visible_locals` reads the tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import re
import traceback
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, Final, final

import anyio

from activity import Activity, ActivityClosedError, ActivityError, ActivityLocal

from .._backends._common import drive_in_context  # private: see the module's documentation
from .._context import frame_var  # private: see the module's documentation
from ._request import APP_ACTIVITY, REQUEST, REQUEST_ACTIVITY, RequestInfo, app_statistics
from .problem import ProblemDetails, problem_details

if TYPE_CHECKING:
    from activity import ActivityConfig, Call

    from .._core import CoreState
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


def core_of(app: Activity) -> CoreState:
    """The core behind an activity's public face: what frames and ``ActivityLocal`` use."""
    return app._core  # pyright: ignore[reportPrivateUsage]


#: The background work of a request that a server without lifespan waits for.
JOBS: Final = ActivityLocal["Jobs | None"]("activity.integrations.jobs", default=None)


# -- background work with values of its own -----------------------------------------------------


async def hand_off(
    app: Activity, fn: Any, args: tuple[Any, ...], name: str | None, timeout: float | None
) -> Call[Any]:
    """Submit background work to ``app`` with ``ActivityLocal`` values of its own.

    Shared by the integrations: :func:`run_in_background` and aiohttp's ``spawn``.
    """
    values = JOB_VALUES.set(visible_locals(app))
    try:
        # The call runs in a copy of this context, taken as it is accepted: the
        # copy, and every task, thread and call it starts, carries the job's values.
        call: Call[Any] = await app.asynchronous_call(fn, *args, name=name, timeout=timeout)
    finally:
        JOB_VALUES.reset(values)
    jobs = JOBS.get()
    if jobs is not None:
        jobs.add(call)
    return call


#: The values of the background job whose context this is, if any (see AppLocals).
JOB_VALUES: Final[contextvars.ContextVar[dict[Any, Any] | None]] = contextvars.ContextVar(
    "activity.integrations.job_values", default=None
)


@final
class AppLocals(dict[Any, Any]):
    """The app activity's ``ActivityLocal`` values: one table for the app, one per job.

    A call of an activity looks up ``ActivityLocal`` values in that activity
    first, and stores them there. The app activity is shared by every request,
    so its background work would read, and write, one table for all: a value one
    job set would be what every later job of every request sees, and a value the
    startup code set would hide the request's own. Each job's context carries a
    table of its own instead, and the app activity reads and writes that one in
    the job's calls (and in the calls, tasks and threads they start); code that
    belongs to no job (the startup code, the app activity's own calls) uses the
    app's.
    """

    __slots__ = ()

    def get(self, key: Any, default: Any = None, /) -> Any:
        own = JOB_VALUES.get()
        return super().get(key, default) if own is None else own.get(key, default)

    def __getitem__(self, key: Any, /) -> Any:
        own = JOB_VALUES.get()
        return super().__getitem__(key) if own is None else own[key]

    def __contains__(self, key: object, /) -> bool:
        own = JOB_VALUES.get()
        return super().__contains__(key) if own is None else key in own

    def __setitem__(self, key: Any, value: Any, /) -> None:
        own = JOB_VALUES.get()
        if own is None:
            super().__setitem__(key, value)
        else:
            own[key] = value

    def __delitem__(self, key: Any, /) -> None:
        own = JOB_VALUES.get()
        if own is None:
            super().__delitem__(key)
        else:
            del own[key]

    def app_values(self) -> dict[Any, Any]:
        """A copy of the app's own table, whatever the context."""
        return dict(super().items())

    def current(self) -> dict[Any, Any]:
        """The table this context uses: its job's, else (a copy of) the app's."""
        own = JOB_VALUES.get()
        return self.app_values() if own is None else own


def visible_locals(app: Activity) -> dict[Any, Any]:
    """A job's values: those the submitting code sees, over the app's own.

    Taken in the order ``ActivityLocal.get`` looks (the current activity, then
    the ones the work came from), so that the nearest value wins; the app's own
    values come last, so that a value set at startup never hides the request's.
    A copy rather than a link to the request: a chain of jobs that start jobs
    holds no finished request or job alive.
    """
    layers: list[Mapping[Any, Any]] = []
    frame = frame_var.get()
    if frame is not None:
        layers.append(frame.host.locals)
        origin = frame.origin
        while origin is not None:
            layers.append(origin.locals)
            origin = origin.origin
    table = core_of(app).locals
    values = table.app_values() if isinstance(table, AppLocals) else dict(table)
    for layer in reversed(layers):
        values.update(layer.current() if isinstance(layer, AppLocals) else layer)
    return values


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

    __slots__ = ("_closing", "_context", "_opening", "_watcher", "activity", "config", "managed")

    def __init__(self, config: ActivityConfig) -> None:
        self.config = config
        self.activity: Activity | None = None
        #: Whether a lifespan (or the application's startup and cleanup) opened the
        #: activity and will close it; else requests wait for their background work.
        self.managed = False
        self._context: contextvars.Context | None = None
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
            act = Activity(self.config)
            core_of(act).locals = AppLocals()
            # An empty context: the app activity is a root, and nothing of the task
            # that happens to open it (the first request's, say) sticks to it.
            context = contextvars.Context()
            await drive_in_context(act.__aenter__(), context)
            context.run(APP_ACTIVITY.set, act)
            self.activity, self._context = act, context
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
        act, context = self.activity, self._context
        if act is None or context is None:
            return
        closing = self._closing = anyio.Event()
        try:
            await drive_in_context(act.__aexit__(None, None, None), context)
        finally:
            self.activity = self._context = None
            self.managed = False
            self._closing = None
            closing.set()
            watcher, self._watcher = self._watcher, None
            if watcher is not None and watcher is not asyncio.current_task():
                watcher.cancel()

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
        self.host = AppHost(options.app_config)

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
        # The request activity's parent is the activity current where it is entered;
        # the app activity is current in no request's task (it lives in a context of
        # its own), so it is made current for the entering alone.
        token = frame_var.set(core_of(app))
        try:
            async with Activity(config) as request:
                REQUEST.set(info)
                APP_ACTIVITY.set(app)
                REQUEST_ACTIVITY.set(request)
                if jobs is not None:
                    JOBS.set(jobs)
                yield request
        finally:
            frame_var.reset(token)

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


def make_current(app: Activity) -> contextvars.Token[Any]:
    """Run the rest of the calling task in the app activity, as its ``async with`` body would.

    For the application's lifespan: its startup code (a lifespan context, startup
    hooks) can then reach the app activity and hand it work that outlives startup.
    """
    return frame_var.set(core_of(app))


def restore(token: contextvars.Token[Any]) -> None:
    # ValueError: the lifespan moved to another task, which never entered.
    with contextlib.suppress(ValueError):
        frame_var.reset(token)


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
    token: contextvars.Token[Any] | None = None

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
