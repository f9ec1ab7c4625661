"""Activities for Litestar applications: one plugin.

:class:`ActivityPlugin` gives the application an app activity (opened and
drained by the lifespan, before the application's own shutdown hooks run) and
every request an activity of its own, a child of the app activity. Handlers
ask for them by name, as the dependencies ``request_activity`` and
``app_activity`` (Litestar 2.23 and later want them marked with
``NamedDependency``, and a request body with ``JSONBody``; earlier versions
take plain annotations)::

    from litestar import Litestar, post
    from litestar.di import NamedDependency
    from litestar.params import JSONBody
    from activity import Activity
    from activity.integrations.litestar import ActivityPlugin, run_in_background

    @post("/orders")
    async def order(data: JSONBody[Order], request_activity: NamedDependency[Activity]) -> Receipt:
        receipt = await request_activity.synchronous_call(render, data)  # before the response
        await run_in_background(send_email, receipt)                     # after it
        return receipt

    app = Litestar([order], plugins=[ActivityPlugin(app_options={"max_concurrency": 20})])

An :class:`~activity.ActivityError` raised by a handler is answered by an
exception handler that the plugin registers for that class alone: an RFC 9457
problem document carrying the HRESULT. Every other exception keeps Litestar's
own handling.

.. versionadded:: 0.1
"""

import logging
from collections.abc import AsyncGenerator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Unpack, cast, final

try:
    from litestar import Litestar, Request, Response, get
    from litestar.config.app import AppConfig
    from litestar.di import Provide
    from litestar.plugins import InitPluginProtocol
    from litestar.types import ASGIApp, Receive, Scope, Send
except ImportError:
    raise ImportError(
        "activity.integrations.litestar needs Litestar: pip install 'activity[litestar]'"
    ) from None

from activity import Activity, ActivityError

from ._options import WebKeywords, WebOptions
from ._web import WebRuntime, handle_connection, make_current, restore
from .asgi import (
    DEFAULT_STATUS_MAP,
    AppStatistics,
    ProblemDetails,
    RequestInfo,
    app_activity_of_scope,
    current_app_activity,
    current_request,
    current_request_activity,
    current_request_id,
    request_activity_of_scope,
    run_in_background,
)

if TYPE_CHECKING:
    from . import _web

__all__ = [
    "DEFAULT_STATUS_MAP",
    "ActivityPlugin",
    "AppStatistics",
    "ProblemDetails",
    "RequestInfo",
    "current_app_activity",
    "current_request",
    "current_request_activity",
    "current_request_id",
    "run_in_background",
]


def __dir__() -> list[str]:
    """The module's public names only, for ``dir()`` and completion."""
    return sorted(__all__)


_logger = logging.getLogger("activity.integrations")


def _provide_request_activity(scope: Scope) -> Activity:
    return request_activity_of_scope(cast("Mapping[str, Any]", scope))


def _provide_app_activity(scope: Scope) -> Activity:
    return app_activity_of_scope(cast("Mapping[str, Any]", scope))


@final
class ActivityPlugin(InitPluginProtocol):
    """A Litestar plugin: an app activity for the application, a request activity per request.

    It adds to the application:

    * a lifespan context that opens the app activity at startup and drains it at
      shutdown (with its ``shutdown_timeout``), before ``on_shutdown`` hooks and
      the lifespan contexts registered before it close what background work uses;
      ``on_startup`` hooks run in the app activity, so work they start is drained too;
    * a middleware that runs every HTTP request and WebSocket connection in a
      request activity with the request's values (:func:`current_request`);
    * the dependencies ``request_activity`` and ``app_activity``;
    * an exception handler for :class:`~activity.ActivityError` (unless
      ``problem_details`` is false);
    * with ``statistics_path``, a ``GET`` route that returns :class:`AppStatistics`.

    The options are the fields of :class:`activity.integrations.asgi.WebOptions`, as
    for :class:`activity.integrations.asgi.ActivityMiddleware`.

    :raises InvalidArgumentError: if an option has a bad value

    .. versionadded:: 0.1
    """

    __slots__ = ("_web",)

    def __init__(self, **options: Unpack[WebKeywords]) -> None:
        self._web = WebRuntime(WebOptions(**options))

    @property
    def app_activity(self) -> Activity | None:
        """The app activity while it is open, else ``None``."""
        return self._web.host.activity

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        """Add the lifespan, middleware, dependencies and handlers to the application."""
        web = self._web
        # Last in, first out: the activity drains before the contexts and hooks
        # registered before it tear down what the background work may use.
        app_config.lifespan.append(self._lifespan)  # pyright: ignore[reportUnknownMemberType]
        # First is outermost: the request activity wraps every other middleware.
        app_config.middleware.insert(0, self._middleware)
        app_config.dependencies.setdefault(
            "request_activity", Provide(_provide_request_activity, sync_to_thread=False)
        )
        app_config.dependencies.setdefault(
            "app_activity", Provide(_provide_app_activity, sync_to_thread=False)
        )
        app_config.signature_namespace.setdefault("Activity", Activity)
        if web.options.problem_details:
            # Litestar's handler map is typed with unparametrized generics.
            handlers: dict[Any, Any] = app_config.exception_handlers  # type: ignore[assignment]  # pyright: ignore[reportUnknownMemberType, reportAssignmentType]
            handlers.setdefault(ActivityError, self._exception_handler)
        statistics_path = web.options.statistics_path
        if statistics_path is not None:

            @get(statistics_path, include_in_schema=False)
            async def activity_statistics() -> Response[bytes]:
                return Response(
                    await web.statistics(),
                    media_type="application/json",
                    headers={"cache-control": "no-store"},
                )

            app_config.route_handlers.append(activity_statistics)
        return app_config

    @asynccontextmanager
    async def _lifespan(self, app: Litestar) -> AsyncGenerator[None]:
        # The startup hooks run after the lifespan contexts are entered: in the
        # app activity, so that work they start is the app's.
        token = make_current(await self._web.host.open())
        try:
            yield
        finally:
            restore(token)
            await self._web.host.close()

    def _middleware(self, app: ASGIApp) -> ASGIApp:
        web = self._web
        inner = cast("_web.ASGIApp", app)

        async def activity_middleware(scope: Scope, receive: Receive, send: Send) -> None:
            await handle_connection(
                web,
                inner,
                cast("_web.Scope", scope),
                cast("_web.Receive", receive),
                cast("_web.Send", send),
            )

        return activity_middleware

    def _exception_handler(
        self, request: Request[Any, Any, Any], exc: Exception
    ) -> Response[bytes]:
        assert isinstance(exc, ActivityError)
        web = self._web
        info = current_request()
        problem = web.problem(exc, info)
        if info is None:
            problem = problem.model_copy(update={"instance": request.url.path})
        if problem.status == 500:
            # Answered, and reported as a server error is: with its traceback.
            _logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        headers = dict(problem.headers(web.options.retry_after))
        media_type = headers.pop("content-type")
        return Response(
            problem.body(), status_code=problem.status, media_type=media_type, headers=headers
        )
