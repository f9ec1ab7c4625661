"""Activities for FastAPI applications: the Starlette middleware, and dependencies.

Install :class:`ActivityMiddleware` and ask for the activities in a handler's
signature::

    from fastapi import FastAPI
    from activity.integrations.fastapi import (
        ActivityMiddleware, AppActivity, RequestActivity, run_in_background,
    )

    app = FastAPI()
    app.add_middleware(ActivityMiddleware, app_options={"max_concurrency": 20})

    @app.post("/orders")
    async def order(item: str, request_activity: RequestActivity) -> dict[str, str]:
        receipt = await request_activity.synchronous_call(render, item)  # before the response
        await run_in_background(send_email, receipt)                      # after it
        return {"receipt": receipt}

FastAPI closes a dependency with ``yield`` before its ``BackgroundTasks`` run;
work handed to the app activity does not depend on the request's
dependencies at all: it carries the request's values with it and is drained
at shutdown.

.. versionadded:: 0.1
"""

from typing import Annotated

try:
    from fastapi import Depends
    from starlette.requests import HTTPConnection
except ImportError:
    raise ImportError(
        "activity.integrations.fastapi needs FastAPI: pip install 'activity[fastapi]'"
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
    "AppActivity",
    "AppStatistics",
    "ProblemDetails",
    "RequestActivity",
    "RequestInfo",
    "current_app_activity",
    "current_request",
    "current_request_activity",
    "current_request_id",
    "get_app_activity",
    "get_request_activity",
    "run_in_background",
]


def __dir__() -> list[str]:
    """The module's public names only, for ``dir()`` and completion."""
    return sorted(__all__)


# The dependencies are coroutine functions so that FastAPI runs them on the event
# loop rather than in a worker thread.
async def get_request_activity(connection: HTTPConnection) -> Activity:
    """Give a handler its request's activity (a FastAPI dependency).

    :raises LookupError: if :class:`ActivityMiddleware` is not installed

    .. versionadded:: 0.1
    """
    return request_activity_of_scope(connection.scope)


async def get_app_activity(connection: HTTPConnection) -> Activity:
    """Give a handler the app activity (a FastAPI dependency).

    :raises LookupError: if :class:`ActivityMiddleware` is not installed

    .. versionadded:: 0.1
    """
    return app_activity_of_scope(connection.scope)


#: A handler parameter annotated with it receives the request's activity.
RequestActivity = Annotated[Activity, Depends(get_request_activity)]
#: A handler parameter annotated with it receives the app activity.
AppActivity = Annotated[Activity, Depends(get_app_activity)]
