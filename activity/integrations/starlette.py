"""Activities for Starlette applications (and FastAPI's, which are Starlette's).

:class:`ActivityMiddleware` is the pure ASGI middleware of
:mod:`activity.integrations.asgi`; Starlette takes it as it is. It gives the
application an app activity (opened and drained by the lifespan) and every
request an activity of its own, a child of the app activity::

    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from activity.integrations.starlette import (
        ActivityMiddleware, request_activity, run_in_background,
    )

    def render(request: Request) -> str: ...          # blocking: runs in a worker thread
    async def send_email(receipt: str) -> None: ...

    async def order(request: Request) -> PlainTextResponse:
        receipt = await request_activity(request).synchronous_call(render, request)
        await run_in_background(send_email, receipt)   # outlives the response
        return PlainTextResponse(receipt)

    app = Starlette(
        routes=[Route("/order", order, methods=["POST"])],
        middleware=[Middleware(ActivityMiddleware, app_options={"max_concurrency": 20})],
    )

Installed with ``Middleware(...)`` or ``app.add_middleware(...)``, it sits
inside Starlette's ``ServerErrorMiddleware`` and outside its exception
handlers, so an :class:`~activity.ActivityError` that a handler lets escape
becomes a problem-details response, and every other exception still reaches
Starlette's own handling.

Unlike Starlette's ``BackgroundTasks`` (run one after another, after the
response, where the first failure stops the rest), work handed over with
:func:`run_in_background` runs concurrently under the app activity's limits,
each call's failure is its own, and shutdown drains it.

.. versionadded:: 0.1
"""

try:
    from starlette.requests import HTTPConnection
except ImportError:
    raise ImportError(
        "activity.integrations.starlette needs Starlette: pip install 'activity[starlette]'"
    ) from None

from activity import Activity

from .asgi import (
    DEFAULT_STATUS_MAP,
    ActivityMiddleware,
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

__all__ = [
    "DEFAULT_STATUS_MAP",
    "ActivityMiddleware",
    "AppStatistics",
    "ProblemDetails",
    "RequestInfo",
    "app_activity",
    "current_app_activity",
    "current_request",
    "current_request_activity",
    "current_request_id",
    "request_activity",
    "run_in_background",
]


def __dir__() -> list[str]:
    """The module's public names only, for ``dir()`` and completion."""
    return sorted(__all__)


def request_activity(connection: HTTPConnection) -> Activity:
    """Return the activity of a request or WebSocket connection.

    For work the response waits for:
    ``await request_activity(request).synchronous_call(fn, *args)``.

    :param connection: the ``Request`` or ``WebSocket``
    :raises LookupError: if :class:`ActivityMiddleware` does not handle the application

    .. versionadded:: 0.1
    """
    return request_activity_of_scope(connection.scope)


def app_activity(connection: HTTPConnection) -> Activity:
    """Return the app activity of the application that handles a connection.

    :param connection: the ``Request`` or ``WebSocket``
    :raises LookupError: if :class:`ActivityMiddleware` does not handle the application

    .. versionadded:: 0.1
    """
    return app_activity_of_scope(connection.scope)
