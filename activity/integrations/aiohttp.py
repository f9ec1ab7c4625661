"""Activities for aiohttp applications, in the style of ``aiojobs.aiohttp``.

:func:`setup` gives the application an app activity (opened at startup,
drained at cleanup before the application's own cleanups run) and every
request an activity of its own, a child of the app activity::

    from aiohttp import web
    from activity.integrations.aiohttp import get_activity, setup, spawn

    async def order(request: web.Request) -> web.Response:
        receipt = await get_activity(request).synchronous_call(render, request)  # before
        await spawn(request, send_email, receipt)                                # after
        return web.Response(text=receipt)

    app = web.Application()
    app.router.add_post("/orders", order)
    setup(app, app_options={"max_concurrency": 20})

Unlike ``aiojobs``, background work carries the values of the request that
spawned it and of no other (a job queued by one request never sees another
request's context), and every accepted call ends completed, failed or
cancelled, counted in the app activity's statistics.

.. versionadded:: 0.1
"""

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar, TypeVarTuple, Unpack, overload

try:
    from aiohttp import web
except ImportError:
    raise ImportError(
        "activity.integrations.aiohttp needs aiohttp: pip install 'activity[aiohttp]'"
    ) from None

from activity import Activity, ActivityError, Call

from ._options import WebKeywords, WebOptions
from ._web import WebRuntime, hand_off
from .asgi import (
    DEFAULT_STATUS_MAP,
    AppStatistics,
    ProblemDetails,
    RequestInfo,
    current_app_activity,
    current_request,
    current_request_activity,
    current_request_id,
    run_in_background,
)

__all__ = [
    "DEFAULT_STATUS_MAP",
    "AppStatistics",
    "ProblemDetails",
    "RequestInfo",
    "current_app_activity",
    "current_request",
    "current_request_activity",
    "current_request_id",
    "get_activity",
    "get_app_activity",
    "run_in_background",
    "setup",
    "spawn",
]


def __dir__() -> list[str]:
    """The module's public names only, for ``dir()`` and completion."""
    return sorted(__all__)


T = TypeVar("T")
Ts = TypeVarTuple("Ts")

_logger = logging.getLogger("activity.integrations")

_WEB_KEY: Final = web.AppKey("activity.web", WebRuntime)
# web.RequestKey arrived in aiohttp 3.14; earlier versions take (and do not warn
# about) a string key.
_REQUEST_KEY: Final[Any] = (
    web.RequestKey("activity.request_activity", Activity)
    if hasattr(web, "RequestKey")
    else "activity.request_activity"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def setup(app: web.Application, **options: Unpack[WebKeywords]) -> None:
    """Give an aiohttp application an app activity and a request activity per request.

    It adds the outermost middleware, opens the app activity first thing at
    startup and drains it first thing at cleanup (with its
    ``shutdown_timeout``), after in-flight requests finished but before the
    application's cleanup contexts close what background work uses.

    The options are the fields of :class:`activity.integrations.asgi.WebOptions`,
    as for :class:`activity.integrations.asgi.ActivityMiddleware`.

    :param app: the application, before it starts
    :raises InvalidArgumentError: if an option has a bad value
    :raises RuntimeError: if the application was already set up, or is frozen

    .. versionadded:: 0.1
    """
    if _WEB_KEY in app:
        raise RuntimeError("activity.integrations.aiohttp.setup() was already called for this app")
    plugin = WebRuntime(WebOptions(**options))
    app[_WEB_KEY] = plugin
    app.middlewares.insert(0, _activity_middleware)

    async def open_app_activity(app: web.Application) -> None:
        await plugin.host.open()

    async def close_app_activity(app: web.Application) -> None:
        await plugin.host.close()

    app.on_startup.insert(0, open_app_activity)
    app.on_cleanup.insert(0, close_app_activity)
    statistics_path = plugin.options.statistics_path
    if statistics_path is not None:

        async def activity_statistics(request: web.Request) -> web.Response:
            return web.Response(
                body=await plugin.statistics(),
                content_type="application/json",
                headers={"cache-control": "no-store"},
            )

        app.router.add_get(statistics_path, activity_statistics)


def get_activity(request: web.Request) -> Activity:
    """Return the activity of a request, for work the response waits for.

    :raises LookupError: if the application was not :func:`setup`

    .. versionadded:: 0.1
    """
    try:
        activity: Activity = request[_REQUEST_KEY]
    except KeyError:
        raise LookupError(
            "this request has no activity: call activity.integrations.aiohttp.setup(app)"
        ) from None
    return activity


def get_app_activity(source: web.Request | web.Application) -> Activity:
    """Return the app activity of an application, or of the one handling a request.

    :raises LookupError: if the application was not :func:`setup`, or it is not running

    .. versionadded:: 0.1
    """
    config = source.config_dict if isinstance(source, web.Request) else source
    try:
        plugin = config[_WEB_KEY]
    except KeyError:
        raise LookupError(
            "this application has no app activity: call activity.integrations.aiohttp.setup(app)"
        ) from None
    activity = plugin.host.activity
    if activity is None:
        raise LookupError("the app activity is not open: the application is not running")
    return activity


@overload
async def spawn(
    request: web.Request,
    fn: Callable[[*Ts], Awaitable[T]],
    /,
    *args: *Ts,
    name: str | None = None,
    timeout: float | None = None,
) -> Call[T]: ...
@overload
async def spawn(
    request: web.Request,
    fn: Awaitable[T],
    /,
    *,
    name: str | None = None,
    timeout: float | None = None,
) -> Call[T]: ...
@overload
async def spawn(
    request: web.Request,
    fn: Callable[[*Ts], T],
    /,
    *args: *Ts,
    name: str | None = None,
    timeout: float | None = None,
) -> Call[T]: ...
async def spawn(  # type: ignore[misc]  # mypy and TypeVarTuple overloads
    request: web.Request,
    fn: Any,
    /,
    *args: Any,
    name: str | None = None,
    timeout: float | None = None,
) -> Call[Any]:
    """Hand work to the app activity, so that it outlives the response.

    ``aiojobs.aiohttp.spawn(request, coro)``, with the guarantees of
    :func:`~activity.integrations.asgi.run_in_background`: bounded by the app
    activity's admission, carrying the request's values (when called while the
    request is handled), not cancelled when the client goes away, drained at
    cleanup. It runs in an activity of its own, a child of the app activity, so
    a value it sets is its own and never reaches another request's work.

    :param request: the request, to find its application
    :param fn: the work, as for :meth:`Activity.asynchronous_call`
    :param args: positional arguments for ``fn``
    :param name: a name for the call
    :param timeout: seconds the call may run
    :return: the call's handle; returning means *accepted*, not finished
    :raises AsyncWorkRejectedError: if the app activity's queue is full (answered 503)
    :raises LookupError: if the application was not :func:`setup`

    .. versionadded:: 0.1
    """
    try:
        app = get_app_activity(request)
    except LookupError:
        if inspect.iscoroutine(fn):
            fn.close()  # refused work: no "never awaited" warning
        raise
    return await hand_off(app, fn, args, name, timeout)


def _request_info(request: web.Request, request_id: str) -> RequestInfo:
    transport = request.transport
    peer: Any = None if transport is None else transport.get_extra_info("peername")
    try:
        client: tuple[str, int] | None = (str(peer[0]), int(peer[1]))
    except (TypeError, IndexError, ValueError):  # no peer, or a Unix socket's
        client = None
    websocket = request.headers.get("upgrade", "").lower() == "websocket"
    return RequestInfo(
        type="websocket" if websocket else "http",
        method=request.method,
        scheme=request.scheme,
        path=request.path,
        query_string=request.query_string,
        client=client,
        headers=tuple((name.lower(), value) for name, value in request.headers.items()),
        request_id=request_id,
    )


@web.middleware
async def _activity_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    plugin = request.config_dict[_WEB_KEY]
    options = plugin.options
    if request.path == options.statistics_path:
        return await handler(request)  # looking at the requests is not one of them
    header = options.request_id_header
    request_id = plugin.request_id(None if header is None else request.headers.get(header))
    info = _request_info(request, request_id)
    try:
        async with plugin.request_activity(info) as activity:
            request[_REQUEST_KEY] = activity
            response = await handler(request)
    except ActivityError as exc:
        if not options.problem_details:
            raise
        problem = plugin.problem(exc, info)
        if problem.status == 500:
            # Answered, and reported as a server error is: with its traceback.
            _logger.error("%s %s failed", request.method, request.path, exc_info=exc)
        response = web.Response(
            status=problem.status, body=problem.body(), headers=problem.headers(options.retry_after)
        )
    if options.echo_request_id and header is not None and not response.prepared:
        response.headers.setdefault(header, request_id)
    return response
