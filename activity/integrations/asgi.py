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

The middleware's options, which every framework plugin takes too, are the
fields of :class:`WebOptions`, declared there once with their defaults and
documentation; the entry points take them as keywords typed
``**options: Unpack[WebKeywords]``, so that editors complete them.

.. versionadded:: 0.1
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple, Unpack, cast, final, overload

from ._options import WebKeywords, WebOptions
from ._request import (
    APP_ACTIVITY,
    AppStatistics,
    RequestInfo,
    app_statistics,
    current_app_activity,
    current_request,
    current_request_activity,
    current_request_id,
)
from ._web import (
    SCOPE_APP_ACTIVITY,
    SCOPE_REQUEST_ACTIVITY,
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    WebRuntime,
    hand_off,
    handle_connection,
    handle_lifespan,
)
from .problem import (
    DEFAULT_STATUS_MAP,
    PLAIN_DETAILS,
    ProblemDetails,
    http_status_of,
    plain_detail,
    problem_details,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from activity import Activity, Call

__all__ = [
    "DEFAULT_STATUS_MAP",
    "PLAIN_DETAILS",
    "ASGIApp",
    "ActivityMiddleware",
    "AppStatistics",
    "Message",
    "ProblemDetails",
    "Receive",
    "RequestInfo",
    "Scope",
    "Send",
    "WebKeywords",
    "WebOptions",
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


def __dir__() -> list[str]:
    """The module's public names only, for ``dir()`` and completion."""
    return sorted(__all__)


T = TypeVar("T")
Ts = TypeVarTuple("Ts")


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
    app = APP_ACTIVITY.get()
    if app is None:
        if inspect.iscoroutine(fn):
            fn.close()  # refused work: no "never awaited" warning
        raise LookupError(
            "run_in_background() found no app activity: call it while ActivityMiddleware "
            "(or a framework helper of activity.integrations) handles a request, or from "
            "a call of the app activity"
        )
    return await hand_off(app, fn, args, name, timeout)


# -- the middleware --------------------------------------------------------------------------------


@final
class ActivityMiddleware:
    """ASGI middleware: an app activity for the application, a request activity per connection.

    Works with any ASGI server and application; it imports no framework. See the
    module's documentation for what each activity is for. The request's activity
    and the app activity are also in the connection scope, under
    ``"activity.request_activity"`` and ``"activity.app_activity"``.

    :param app: the ASGI application to wrap
    :param options: the fields of :class:`WebOptions`: ``app_options`` and
        ``request_options`` (the activities' configs), ``request_id_header``,
        ``echo_request_id``, ``problem_details``, ``status_map``, ``retry_after``
        and ``statistics_path``
    :raises InvalidArgumentError: if an option has a bad value

    .. versionadded:: 0.1
    """

    __slots__ = ("_web", "app")

    def __init__(self, app: ASGIApp, **options: Unpack[WebKeywords]) -> None:
        self.app: ASGIApp = app
        self._web = WebRuntime(WebOptions(**options))

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
            await handle_connection(self._web, self.app, scope, receive, send)
        elif kind == "lifespan":
            await handle_lifespan(self._web.host, self.app, scope, receive, send)
        else:
            await self.app(scope, receive, send)


def request_activity_of_scope(scope: Mapping[str, Any]) -> Activity:
    """Return the request activity that :class:`ActivityMiddleware` put in a scope.

    :raises LookupError: if the connection is not handled by the middleware
    """
    return _activity_in_scope(scope, SCOPE_REQUEST_ACTIVITY, "request")


def app_activity_of_scope(scope: Mapping[str, Any]) -> Activity:
    """Return the app activity that :class:`ActivityMiddleware` put in a scope.

    :raises LookupError: if the connection is not handled by the middleware
    """
    return _activity_in_scope(scope, SCOPE_APP_ACTIVITY, "app")


def _activity_in_scope(scope: Mapping[str, Any], key: str, which: str) -> Activity:
    try:
        return cast("Activity", scope[key])
    except KeyError:
        raise LookupError(
            f"this connection has no {which} activity: is ActivityMiddleware installed?"
        ) from None
