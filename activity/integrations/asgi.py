"""Activities for any ASGI application: one for the app, one per request.

:class:`ActivityMiddleware` wraps an ASGI application (no framework needed) and
gives it two kinds of activity:

* the *app activity*, opened at lifespan startup and drained at lifespan
  shutdown with its ``shutdown_timeout``, before the application's own
  shutdown code runs. Work that must outlive the response goes there, in one
  line, with :func:`run_in_background`: it is bounded by the app activity's
  admission, sees the request's values, is not cancelled when the client goes
  away, and is drained at shutdown. The application's startup code runs in the
  app activity too, so work it starts (a periodic refresh) is drained likewise;
* a *request activity* for every HTTP request and WebSocket connection, a child
  of the app activity (``request_activity.parent is app_activity``), for work
  that belongs to the request and is awaited before the response.

The request's intrinsics (:class:`RequestInfo`: method, path, client, headers
and a request id taken from a header or generated) are activity-local values:
every call the request makes sees them through :func:`current_request`, in a
task or a worker thread, and so does background work it hands to the app
activity, even after the response was sent. Two requests never see each
other's.

Each piece of background work has activity-local values of its own: it
starts with those the request (or the work that started it) saw when it handed
the work over, and a value it sets stays its own. Neither another request's
work nor a value set in the application's startup code can change what it
sees.

Without lifespan events (``uvicorn --lifespan off``, or a test client that
sends none) the app activity is opened by the first request, and background
work is tied to the request that started it: the request's ASGI call returns
once the response is sent *and* the work it handed over (and the work that
work handed over) has finished, as Starlette's ``BackgroundTasks`` do. The
client has its response at once; a server that waits for in-flight requests
when it stops (uvicorn does, up to its ``timeout_graceful_shutdown``)
thereby drains the background work. A request whose application
raised before it answered returns at once, so that the server can answer.
The app activity is closed when the asyncio event loop ends (or by
:meth:`ActivityMiddleware.aclose`, which drains what is left for its
``shutdown_timeout``); failures that nobody observed (no awaiting, no
``error_handler``) are then logged on the ``activity.integrations`` logger,
or raised by :meth:`~ActivityMiddleware.aclose`.

An :class:`~activity.ActivityError` that escapes the application before the
response started becomes an RFC 9457 problem-details response that carries the
HRESULT (:class:`ProblemDetails`); any other exception passes through
untouched::

    from activity.integrations.asgi import ActivityMiddleware, run_in_background

    async def app(scope, receive, send):
        ...
        await run_in_background(send_receipt, order_id)  # outlives the response
        ...

    app = ActivityMiddleware(app, app_options={"max_concurrency": 50})

.. versionadded:: 0.1
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import http
import inspect
import logging
import re
import traceback
import types
import uuid
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Mapping,
    MutableMapping,
)
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar, TypeVarTuple, Unpack, cast, final, overload

import anyio
from pydantic import BaseModel, ConfigDict

from .._activity import Activity
from .._backends._common import drive_in_context
from .._config import ActivityConfig
from .._context import ActivityLocal, _frame
from .._errors import ActivityClosedError, ActivityError, InvalidArgumentError
from .._hresult import HResult
from ..tracking import ActivityStatistics

if TYPE_CHECKING:
    from .._call import Call

__all__ = [
    "DEFAULT_STATUS_MAP",
    "ASGIApp",
    "ActivityMiddleware",
    "AppStatistics",
    "Message",
    "ProblemDetails",
    "Receive",
    "RequestInfo",
    "Scope",
    "Send",
    "app_activity_of_scope",
    "app_statistics",
    "current_app_activity",
    "current_request",
    "current_request_activity",
    "current_request_id",
    "http_status_of",
    "plain_detail",
    "problem_details",
    "request_activity_of_scope",
    "run_in_background",
]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

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

#: The HTTP status for an HRESULT; a code that is not here answers 500.
#: ``RPC_E_DISCONNECTED`` (:class:`~activity.ActivityClosedError`) is there
#: because a closing activity means the service is going away, which a client
#: may retry elsewhere.
DEFAULT_STATUS_MAP: Final[Mapping[HResult, int]] = types.MappingProxyType(
    {
        HResult.CO_E_ASYNC_WORK_REJECTED: 503,
        HResult.RPC_E_DISCONNECTED: 503,
        HResult.E_INVALIDARG: 400,
        HResult.E_ACCESSDENIED: 403,
        HResult.E_NOTIMPL: 501,
        HResult.E_TIMEOUT: 504,
    }
)

_logger = logging.getLogger("activity.integrations")

_PROBLEM_JSON: Final = "application/problem+json"
# A request id taken from a client is echoed back and logged: keep it short and printable.
_VALID_REQUEST_ID: Final = re.compile(r"[\x21-\x7e]{1,128}")
_MAX_NAME: Final = 200


# -- the request's intrinsics ------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What a request activity knows about its request (IIS called these *intrinsics*).

    Seen by every call of the request through :func:`current_request`, and by the
    background work it hands to the app activity.

    .. versionadded:: 0.1
    """

    #: ``"http"`` or ``"websocket"``.
    type: str
    #: The HTTP method (``"GET"`` for a WebSocket handshake).
    method: str
    #: ``"http"``, ``"https"``, ``"ws"`` or ``"wss"``.
    scheme: str
    #: The path, percent-decoded.
    path: str
    #: The query string, undecoded.
    query_string: str
    #: The client's ``(host, port)``, when the server knows it.
    client: tuple[str, int] | None
    #: The request headers as ``(lower-case name, value)`` pairs, in order.
    headers: tuple[tuple[str, str], ...]
    #: The request id: the client's, from the configured header, or a generated one.
    request_id: str

    def header(self, name: str, default: str | None = None) -> str | None:
        """Return the first value of a header, or ``default``.

        :param name: the header's name, in any case
        :param default: what to return when the request has no such header
        """
        wanted = name.lower()
        for key, value in self.headers:
            if key == wanted:
                return value
        return default

    @classmethod
    def from_scope(cls, scope: Scope, request_id: str) -> RequestInfo:
        """Build the intrinsics of an ASGI ``http`` or ``websocket`` scope.

        :param scope: the connection's scope
        :param request_id: the id to give the request
        """
        client = scope.get("client")
        raw_headers: list[tuple[bytes, bytes]] = scope.get("headers") or []
        query: bytes = scope.get("query_string") or b""
        kind: str = scope["type"]
        return cls(
            type=kind,
            method=scope.get("method", "GET"),
            scheme=scope.get("scheme") or ("ws" if kind == "websocket" else "http"),
            path=scope.get("path", ""),
            query_string=query.decode("latin-1"),
            client=None if not client else (str(client[0]), int(client[1])),
            headers=tuple(
                (name.decode("latin-1").lower(), value.decode("latin-1"))
                for name, value in raw_headers
            ),
            request_id=request_id,
        )


_REQUEST: Final = ActivityLocal[RequestInfo | None]("activity.integrations.request", default=None)
_REQUEST_ACTIVITY: Final = ActivityLocal[Activity | None](
    "activity.integrations.request_activity", default=None
)
_APP_ACTIVITY: Final = ActivityLocal[Activity | None](
    "activity.integrations.app_activity", default=None
)
#: The background work of a request that a server without lifespan waits for.
_JOBS: Final = ActivityLocal["_Jobs | None"]("activity.integrations.jobs", default=None)


def current_request() -> RequestInfo | None:
    """Return the intrinsics of the request the running code works for.

    That is the request being handled, in its handler and in every call of its
    request activity (tasks and worker threads alike), and the request that
    handed work to the app activity, in that work. Outside any request (for
    example in work started at lifespan startup) it is ``None``.

    .. versionadded:: 0.1
    """
    return _REQUEST.get()


def current_request_id() -> str | None:
    """Return the id of the request the running code works for, or ``None``.

    .. versionadded:: 0.1
    """
    info = _REQUEST.get()
    return None if info is None else info.request_id


def current_request_activity() -> Activity | None:
    """Return the activity of the request the running code works for, or ``None``.

    In background work that outlived its request this is the request's activity
    all the same, closed by then.

    .. versionadded:: 0.1
    """
    return _REQUEST_ACTIVITY.get()


def current_app_activity() -> Activity | None:
    """Return the app activity that the running code can hand work to, or ``None``.

    Known in a request (its handler and its calls), in background work and in the
    app activity's own calls.

    .. versionadded:: 0.1
    """
    return _APP_ACTIVITY.get()


@overload
async def run_in_background(
    fn: Callable[[Unpack[Ts]], Awaitable[T]],
    /,
    *args: *Ts,
    name: str | None = None,
    timeout: float | None = None,
) -> Call[T]: ...
@overload
async def run_in_background(
    fn: Awaitable[T], /, *, name: str | None = None, timeout: float | None = None
) -> Call[T]: ...
@overload
async def run_in_background(
    fn: Callable[[Unpack[Ts]], T],
    /,
    *args: *Ts,
    name: str | None = None,
    timeout: float | None = None,
) -> Call[T]: ...
async def run_in_background(  # type: ignore[misc]  # mypy and TypeVarTuple overloads
    fn: Any, /, *args: Any, name: str | None = None, timeout: float | None = None
) -> Call[Any]:
    """Hand work to the app activity, so that it outlives the response.

    The one line a handler needs for work that must not hold the response back
    (an email, a cache refresh, an audit record). The work is bounded by the
    app activity's admission, is not cancelled when the client disconnects, and
    is drained at shutdown: it ends completed, failed or cancelled, never
    silently lost. A failure nobody observes goes to the app activity's
    ``error_handler``, or is raised at shutdown (logged, without lifespan: see
    the module's documentation).

    The work is a call of the app activity with :class:`~activity.ActivityLocal`
    values of its own: it starts with those the caller saw when it handed the
    work over (:func:`current_request` and any value the request set), over the
    app's own (set by the startup code), and a value it sets is its own and that
    of the calls, tasks and threads it starts. No other request's work sees it,
    and a value set at startup never hides the request's.

    Work that must finish before the response belongs to the request activity
    instead: ``await current_request_activity().synchronous_call(fn)``.

    :param fn: the work, as for :meth:`Activity.asynchronous_call`
    :param args: positional arguments for ``fn``
    :param name: a name for the call
    :param timeout: seconds the call may run
    :return: the call's handle; returning means *accepted*, not finished
    :raises AsyncWorkRejectedError: if the app activity's queue is full (the
        middleware answers 503 with ``Retry-After``)
    :raises ActivityClosedError: if the app activity is shutting down
    :raises LookupError: if called outside a request and outside the app activity

    .. versionadded:: 0.1
    """
    app = _APP_ACTIVITY.get()
    if app is None:
        if inspect.iscoroutine(fn):
            fn.close()  # refused work: no "never awaited" warning
        raise LookupError(
            "run_in_background() found no app activity: call it while ActivityMiddleware "
            "(or a framework helper of activity.integrations) handles a request, or from "
            "a call of the app activity"
        )
    return await _hand_off(app, fn, args, name, timeout)


async def _hand_off(
    app: Activity, fn: Any, args: tuple[Any, ...], name: str | None, timeout: float | None
) -> Call[Any]:
    """Submit background work to ``app`` with ``ActivityLocal`` values of its own.

    Shared by the integrations: :func:`run_in_background` and aiohttp's ``spawn``.
    """
    values = _JOB_VALUES.set(_visible_locals(app))
    try:
        # The call runs in a copy of this context, taken as it is accepted: the
        # copy, and every task, thread and call it starts, carries the job's values.
        call: Call[Any] = await app.asynchronous_call(fn, *args, name=name, timeout=timeout)
    finally:
        _JOB_VALUES.reset(values)
    jobs = _JOBS.get()
    if jobs is not None:
        jobs.add(call)
    return call


#: The values of the background job whose context this is, if any (see _AppLocals).
_JOB_VALUES: Final[contextvars.ContextVar[dict[Any, Any] | None]] = contextvars.ContextVar(
    "activity.integrations.job_values", default=None
)


@final
class _AppLocals(dict[Any, Any]):
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
        own = _JOB_VALUES.get()
        return super().get(key, default) if own is None else own.get(key, default)

    def __getitem__(self, key: Any, /) -> Any:
        own = _JOB_VALUES.get()
        return super().__getitem__(key) if own is None else own[key]

    def __contains__(self, key: object, /) -> bool:
        own = _JOB_VALUES.get()
        return super().__contains__(key) if own is None else key in own

    def __setitem__(self, key: Any, value: Any, /) -> None:
        own = _JOB_VALUES.get()
        if own is None:
            super().__setitem__(key, value)
        else:
            own[key] = value

    def __delitem__(self, key: Any, /) -> None:
        own = _JOB_VALUES.get()
        if own is None:
            super().__delitem__(key)
        else:
            del own[key]

    def app_values(self) -> dict[Any, Any]:
        """A copy of the app's own table, whatever the context."""
        return dict(super().items())

    def current(self) -> dict[Any, Any]:
        """The table this context uses: its job's, else (a copy of) the app's."""
        own = _JOB_VALUES.get()
        return self.app_values() if own is None else own


def _visible_locals(app: Activity) -> dict[Any, Any]:
    """A job's values: those the submitting code sees, over the app's own.

    Taken in the order ``ActivityLocal.get`` looks (the current activity, then
    the ones the work came from), so that the nearest value wins; the app's own
    values come last, so that a value set at startup never hides the request's.
    A copy rather than a link to the request: a chain of jobs that start jobs
    holds no finished request or job alive.
    """
    layers: list[Mapping[Any, Any]] = []
    frame = _frame.get()
    if frame is not None:
        layers.append(frame._activity._locals)
        origin = frame._origin
        while origin is not None:
            layers.append(origin._locals)
            origin = origin._origin
    table = app._locals
    values = table.app_values() if isinstance(table, _AppLocals) else dict(table)
    for layer in reversed(layers):
        values.update(layer.current() if isinstance(layer, _AppLocals) else layer)
    return values


@final
class _Jobs:
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


# -- problem details -----------------------------------------------------------------------


@final
class ProblemDetails(BaseModel):
    """An RFC 9457 problem-details document for an :class:`~activity.ActivityError`.

    The standard members, plus the HRESULT (``hresult``, as ``0x8004E025``, and its
    name, ``hresult_name``) and the request id. A client error (4xx) carries the
    exception's message as ``detail``, since it says what the client sent wrong;
    a server error carries only a plain explanation of its code
    (:func:`plain_detail`), so that internals (activity names, queue sizes) do
    not leak.

    .. versionadded:: 0.1
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: A URI reference naming the problem type; ``about:blank`` means the status says it all.
    type: str = "about:blank"
    #: The HTTP status phrase.
    title: str
    #: The HTTP status code.
    status: int
    #: A human-readable explanation of this occurrence.
    detail: str | None = None
    #: The request path.
    instance: str | None = None
    #: The HRESULT, as eight hexadecimal digits.
    hresult: str
    #: The HRESULT's name in ``winerror.h`` (or ``HRESULT_0x...`` for a code of its own).
    hresult_name: str
    #: The request id, if known.
    request_id: str | None = None

    def headers(self, retry_after: int = 1) -> list[tuple[str, str]]:
        """Return the response headers: the content type, and ``Retry-After`` for a 503.

        :param retry_after: seconds a client should wait before retrying a 503
        """
        headers = [("content-type", _PROBLEM_JSON)]
        if self.status == 503:
            headers.append(("retry-after", str(retry_after)))
        return headers

    def body(self) -> bytes:
        """Return the JSON body, without the members that are not set."""
        return self.model_dump_json(exclude_none=True).encode()


def _normalize_status_map(status_map: Mapping[int, int] | None) -> dict[HResult, int]:
    merged = dict(DEFAULT_STATUS_MAP)
    if status_map is None:
        return merged
    if not isinstance(status_map, Mapping):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise InvalidArgumentError(
            f"status_map must be a mapping of HRESULT to HTTP status, got {status_map!r}",
            field="status_map",
            value=status_map,
        )
    for code, status in status_map.items():
        if (
            isinstance(status, bool)
            or not isinstance(status, int)  # pyright: ignore[reportUnnecessaryIsInstance]
            or not 100 <= status <= 599
        ):
            raise InvalidArgumentError(
                f"status_map[{code!r}] must be an HTTP status (100-599), got {status!r}",
                field="status_map",
                value=status_map,
            )
        try:
            merged[HResult(code)] = status
        except (TypeError, ValueError):
            raise InvalidArgumentError(
                f"status_map keys must be 32-bit HRESULTs, got {code!r}",
                field="status_map",
                value=status_map,
            ) from None
    return merged


def http_status_of(exc: ActivityError, status_map: Mapping[int, int] | None = None) -> int:
    """Return the HTTP status that answers an :class:`~activity.ActivityError`.

    :param exc: the error
    :param status_map: HRESULT to status pairs that override :data:`DEFAULT_STATUS_MAP`
    :return: the status; 500 for a code that no map names
    :raises InvalidArgumentError: if ``status_map`` is not a valid map

    .. versionadded:: 0.1
    """
    return _status_in(_normalize_status_map(status_map), exc)


def _status_in(status_map: Mapping[HResult, int], exc: ActivityError) -> int:
    return status_map.get(exc.hresult, 500)


def problem_details(
    exc: ActivityError,
    *,
    status_map: Mapping[int, int] | None = None,
    instance: str | None = None,
    request_id: str | None = None,
) -> ProblemDetails:
    """Describe an :class:`~activity.ActivityError` as an RFC 9457 problem.

    :param exc: the error
    :param status_map: HRESULT to status pairs that override :data:`DEFAULT_STATUS_MAP`
    :param instance: the request path
    :param request_id: the request id (default: the current request's)
    :return: the problem; ``.body()`` and ``.headers()`` give the response
    :raises InvalidArgumentError: if ``status_map`` is not a valid map

    .. versionadded:: 0.1
    """
    return _problem(_normalize_status_map(status_map), exc, instance, request_id)


#: What a server error says to a client, in plain words; other codes say their message.
PLAIN_DETAILS: Final[Mapping[HResult, str]] = {
    HResult.CO_E_ASYNC_WORK_REJECTED: (
        "The server has too much work queued to accept this request's work now; try again later."
    ),
    HResult.RPC_E_DISCONNECTED: (
        "The server is shutting down and accepts no new work; try again later."
    ),
    HResult.E_TIMEOUT: "The work for this request did not finish in time.",
    HResult.E_ABORT: "The work for this request was cancelled before it finished.",
    HResult.E_FAIL: "The server failed to do the work for this request.",
}


def plain_detail(code: HResult) -> str:
    """What a server error with ``code`` tells a client: plain words, no internals.

    .. versionadded:: 0.1
    """
    return PLAIN_DETAILS.get(code, code.message)


def _problem(
    status_map: Mapping[HResult, int],
    exc: ActivityError,
    instance: str | None,
    request_id: str | None,
) -> ProblemDetails:
    status = _status_in(status_map, exc)
    code = exc.hresult
    try:
        title = http.HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    return ProblemDetails(
        title=title,
        status=status,
        detail=str(exc) if status < 500 else plain_detail(code),
        instance=instance,
        hresult=f"0x{int(code):08X}",
        hresult_name=code.name or f"HRESULT_0x{int(code):08X}",
        request_id=request_id if request_id is not None else current_request_id(),
    )


# -- statistics ------------------------------------------------------------------------------


@final
class AppStatistics(BaseModel):
    """The app activity's statistics and those of its live children (the open requests).

    .. versionadded:: 0.1
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: The app activity's counters.
    app: ActivityStatistics
    #: The counters of each open child activity (normally one per open request), by id.
    children: tuple[ActivityStatistics, ...]


def app_statistics(app: Activity) -> AppStatistics:
    """Take a snapshot of an app activity and of its live children.

    :param app: the app activity (:func:`current_app_activity`)

    .. versionadded:: 0.1
    """
    children = sorted(app.children, key=lambda child: child.id)
    return AppStatistics(app=app.statistics(), children=tuple(c.statistics() for c in children))


# -- hosting the app activity ----------------------------------------------------------------


def _config_of(
    options: ActivityConfig | Mapping[str, Any] | None, default_name: str | None, field: str
) -> ActivityConfig:
    if options is None:
        return ActivityConfig(name=default_name)
    if isinstance(options, ActivityConfig):
        if options.name is None and default_name is not None:
            return options.with_options({"name": default_name})
        return options
    if isinstance(options, Mapping):  # pyright: ignore[reportUnnecessaryIsInstance]
        return ActivityConfig(**{"name": default_name, **options})
    raise InvalidArgumentError(
        f"{field} must be an ActivityConfig, a mapping of its fields or None, got {options!r}",
        field=field,
        value=options,
    )


@final
class _AppHost:
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
            act._locals = _AppLocals()
            # An empty context: the app activity is a root, and nothing of the task
            # that happens to open it (the first request's, say) sticks to it.
            context = contextvars.Context()
            await drive_in_context(act.__aenter__(), context)
            context.run(_APP_ACTIVITY.set, act)
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
class _Web:
    """What every integration shares: the settings, the app host, the request activities."""

    __slots__ = (
        "echo_request_id",
        "host",
        "problem_details",
        "request_config",
        "request_id_header",
        "retry_after",
        "statistics_path",
        "status_map",
    )

    def __init__(
        self,
        *,
        app_options: ActivityConfig | Mapping[str, Any] | None = None,
        request_options: ActivityConfig | Mapping[str, Any] | None = None,
        request_id_header: str | None = "x-request-id",
        echo_request_id: bool = True,
        problem_details: bool = True,
        status_map: Mapping[int, int] | None = None,
        retry_after: int = 1,
        statistics_path: str | None = None,
    ) -> None:
        self.host = _AppHost(_config_of(app_options, "app", "app_options"))
        self.request_config = _config_of(request_options, None, "request_options")
        if request_id_header is not None and (
            not isinstance(request_id_header, str)  # pyright: ignore[reportUnnecessaryIsInstance]
            or not request_id_header
        ):
            raise InvalidArgumentError(
                f"request_id_header must be a header name or None, got {request_id_header!r}",
                field="request_id_header",
                value=request_id_header,
            )
        self.request_id_header = None if request_id_header is None else request_id_header.lower()
        self.echo_request_id = bool(echo_request_id)
        self.problem_details = bool(problem_details)
        self.status_map = _normalize_status_map(status_map)
        if (
            isinstance(retry_after, bool)
            or not isinstance(retry_after, int)  # pyright: ignore[reportUnnecessaryIsInstance]
            or retry_after < 0
        ):
            raise InvalidArgumentError(
                f"retry_after must be a non-negative whole number of seconds, got {retry_after!r}",
                field="retry_after",
                value=retry_after,
            )
        self.retry_after = retry_after
        if statistics_path is not None and (
            not isinstance(statistics_path, str)  # pyright: ignore[reportUnnecessaryIsInstance]
            or not statistics_path.startswith("/")
        ):
            raise InvalidArgumentError(
                "statistics_path must be a path starting with '/' or None, "
                f"got {statistics_path!r}",
                field="statistics_path",
                value=statistics_path,
            )
        self.statistics_path = statistics_path

    def request_id(self, supplied: str | None) -> str:
        """The client's request id if it is a sane one, else a new one."""
        if supplied is not None and _VALID_REQUEST_ID.fullmatch(supplied):
            return supplied
        return uuid.uuid4().hex

    def request_id_of_scope(self, scope: Scope) -> str:
        wanted = self.request_id_header
        if wanted is not None:
            encoded = wanted.encode("latin-1")
            for name, value in scope.get("headers") or ():
                if name.lower() == encoded:
                    return self.request_id(value.decode("latin-1"))
        return uuid.uuid4().hex

    @contextlib.asynccontextmanager
    async def request_activity(
        self, info: RequestInfo, jobs: _Jobs | None = None
    ) -> AsyncGenerator[Activity]:
        """Enter a request activity, a child of the app activity, with the request's values.

        :param jobs: where the request's background work is to be counted, for a
            server without lifespan
        """
        app = await self.host.open(lazily=True)
        config = self.request_config
        if config.name is None:
            config = config.with_options({"name": f"{info.method} {info.path}"[:_MAX_NAME]})
        # The request activity's parent is the activity current where it is entered;
        # the app activity is current in no request's task (it lives in a context of
        # its own), so it is made current for the entering alone.
        token = _frame.set(app)
        try:
            async with Activity(config) as request:
                _REQUEST.set(info)
                _APP_ACTIVITY.set(app)
                _REQUEST_ACTIVITY.set(request)
                if jobs is not None:
                    _JOBS.set(jobs)
                yield request
        finally:
            _frame.reset(token)

    def problem(self, exc: ActivityError, info: RequestInfo | None) -> ProblemDetails:
        return _problem(
            self.status_map,
            exc,
            None if info is None else info.path,
            None if info is None else info.request_id,
        )

    async def statistics(self) -> bytes:
        app = await self.host.open(lazily=True)
        return app_statistics(app).model_dump_json().encode()


# -- the middleware ------------------------------------------------------------------------------


_SCOPE_REQUEST_ACTIVITY: Final = "activity.request_activity"
_SCOPE_APP_ACTIVITY: Final = "activity.app_activity"


@final
class ActivityMiddleware:
    """ASGI middleware: an app activity for the application, a request activity per connection.

    Works with any ASGI server and application; it imports no framework. See the
    module's documentation for what each activity is for. The request's activity
    and the app activity are also in the connection scope, under
    ``"activity.request_activity"`` and ``"activity.app_activity"``.

    :param app: the ASGI application to wrap
    :param app_options: the app activity's :class:`~activity.ActivityConfig` (or a
        mapping of its fields); its ``max_concurrency`` and ``max_pending`` bound the
        background work, its ``shutdown_timeout`` the drain at shutdown, and its
        ``error_handler`` observes background failures (default name ``"app"``)
    :param request_options: the config of every request activity (default name:
        the method and path)
    :param request_id_header: the header a client's request id is taken from (one is
        generated when it is absent or not 1-128 printable ASCII characters);
        ``None`` to always generate
    :param echo_request_id: whether the response carries the request id in that header
    :param problem_details: whether an :class:`~activity.ActivityError` that escapes
        the application before the response started is answered with a problem
        document (a WebSocket is closed with 1013 for a 503, else 1011)
    :param status_map: HRESULT to HTTP status pairs that override
        :data:`DEFAULT_STATUS_MAP`; a code no map names answers 500, and a 500 is
        re-raised after the answer so that the server reports it
    :param retry_after: the ``Retry-After`` seconds of a 503
    :param statistics_path: a path (such as ``"/_activity/stats"``) where ``GET`` returns
        :class:`AppStatistics` as JSON; ``None`` (the default) serves none
    :raises InvalidArgumentError: if an option has a bad value

    .. versionadded:: 0.1
    """

    __slots__ = ("_web", "app")

    def __init__(
        self,
        app: ASGIApp,
        *,
        app_options: ActivityConfig | Mapping[str, Any] | None = None,
        request_options: ActivityConfig | Mapping[str, Any] | None = None,
        request_id_header: str | None = "x-request-id",
        echo_request_id: bool = True,
        problem_details: bool = True,
        status_map: Mapping[int, int] | None = None,
        retry_after: int = 1,
        statistics_path: str | None = None,
    ) -> None:
        self.app = app
        self._web = _Web(
            app_options=app_options,
            request_options=request_options,
            request_id_header=request_id_header,
            echo_request_id=echo_request_id,
            problem_details=problem_details,
            status_map=status_map,
            retry_after=retry_after,
            statistics_path=statistics_path,
        )

    @property
    def app_activity(self) -> Activity | None:
        """The app activity while it is open, else ``None``."""
        return self._web.host.activity

    async def aclose(self) -> None:
        """Drain and close the app activity, as lifespan shutdown does.

        For servers that send no lifespan, when the event loop is not asyncio's or
        the application ends before its loop does. Closing an activity that is not
        open does nothing.

        :raises ExceptionGroup: the background failures that nobody observed
        """
        await self._web.host.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http" or kind == "websocket":
            await _handle_connection(self._web, self.app, scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        host = self._web.host
        received = False
        failure: Exception | None = None
        token: contextvars.Token[Any] | None = None

        async def lifespan_receive() -> Message:
            nonlocal received, failure, token
            message = await receive()
            received = True
            if message["type"] == "lifespan.startup":
                token = _make_current(await host.open())
            elif message["type"] == "lifespan.shutdown":
                if token is not None:
                    _restore(token)
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
            await self.app(scope, lifespan_receive, lifespan_send)
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
                _restore(token)
            if host.activity is not None and received:
                await host.close()


def _make_current(app: Activity) -> contextvars.Token[Any]:
    """Run the rest of the calling task in the app activity, as its ``async with`` body would.

    For the application's lifespan: its startup code (a lifespan context, startup
    hooks) can then reach the app activity and hand it work that outlives startup.
    """
    return _frame.set(app)


def _restore(token: contextvars.Token[Any]) -> None:
    # ValueError: the lifespan moved to another task, which never entered.
    with contextlib.suppress(ValueError):
        _frame.reset(token)


def _describe(failure: BaseException) -> str:
    return "".join(traceback.format_exception(failure))


async def _own_lifespan(host: _AppHost, receive: Receive, send: Send) -> None:
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


@final
class _Response:
    """What the application has sent so far on one connection."""

    __slots__ = ("closed", "started")

    def __init__(self) -> None:
        self.started = False
        self.closed = False


async def _handle_connection(
    web: _Web, app: ASGIApp, scope: Scope, receive: Receive, send: Send
) -> None:
    """Run one HTTP request or WebSocket connection in a request activity."""
    request_id = web.request_id_of_scope(scope)
    info = RequestInfo.from_scope(scope, request_id)
    response = _Response()
    echo: tuple[bytes, bytes] | None = None
    if web.echo_request_id and web.request_id_header is not None:
        echo = (web.request_id_header.encode("latin-1"), request_id.encode("latin-1"))

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

    if web.statistics_path is not None and info.type == "http" and info.path == web.statistics_path:
        try:
            await _send_statistics(web, info, send_wrapper)
        except ActivityError as exc:
            await _answer(web, exc, info, response, send_wrapper)
        return

    # Without lifespan the server waits for nothing but requests when it stops: a
    # request's background work is drained by making the request wait for it.
    jobs = None if web.host.managed else _Jobs()
    try:
        try:
            async with web.request_activity(info, jobs) as request:
                scope[_SCOPE_REQUEST_ACTIVITY] = request
                scope[_SCOPE_APP_ACTIVITY] = request.parent
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
    web: _Web, exc: ActivityError, info: RequestInfo, response: _Response, send: Send
) -> None:
    """Answer an ActivityError that escaped the application, or re-raise it."""
    if not web.problem_details:
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
            for name, value in problem.headers(web.retry_after)
        ]
        headers.append((b"content-length", str(len(body)).encode("latin-1")))
        await send({"type": "http.response.start", "status": problem.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    if problem.status == 500:
        raise exc


async def _send_statistics(web: _Web, info: RequestInfo, send: Send) -> None:
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


def request_activity_of_scope(scope: Mapping[str, Any]) -> Activity:
    """Return the request activity that :class:`ActivityMiddleware` put in a scope.

    :raises LookupError: if the connection is not handled by the middleware
    """
    return _activity_in_scope(scope, _SCOPE_REQUEST_ACTIVITY, "request")


def app_activity_of_scope(scope: Mapping[str, Any]) -> Activity:
    """Return the app activity that :class:`ActivityMiddleware` put in a scope.

    :raises LookupError: if the connection is not handled by the middleware
    """
    return _activity_in_scope(scope, _SCOPE_APP_ACTIVITY, "app")


def _activity_in_scope(scope: Mapping[str, Any], key: str, which: str) -> Activity:
    try:
        return cast("Activity", scope[key])
    except KeyError:
        raise LookupError(
            f"this connection has no {which} activity: is ActivityMiddleware installed?"
        ) from None
