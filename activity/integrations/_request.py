"""What the application's code reads of the web runtime.

The request's intrinsics (:class:`RequestInfo`) and the activities of the
request and of the application are activity-local values that the web runtime
(:mod:`activity.integrations._web`) sets as it enters a request activity; this
module holds them, the functions that read them, and the app's statistics
snapshot (:class:`AppStatistics`). It is private and imports no other module of
the package: :mod:`activity.integrations.asgi` and each framework plugin export
its names, and :mod:`activity.integrations.problem` reads the request id here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final, final

from pydantic import BaseModel, ConfigDict

from activity import Activity, ActivityLocal, ActivityStatistics

if TYPE_CHECKING:
    from collections.abc import MutableMapping

__all__ = [
    "APP_ACTIVITY",
    "REQUEST",
    "REQUEST_ACTIVITY",
    "AppStatistics",
    "RequestInfo",
    "app_statistics",
    "current_app_activity",
    "current_request",
    "current_request_activity",
    "current_request_id",
]


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
    def from_scope(cls, scope: MutableMapping[str, Any], request_id: str) -> RequestInfo:
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


REQUEST: Final = ActivityLocal[RequestInfo | None]("activity.integrations.request", default=None)
REQUEST_ACTIVITY: Final = ActivityLocal[Activity | None](
    "activity.integrations.request_activity", default=None
)
APP_ACTIVITY: Final = ActivityLocal[Activity | None](
    "activity.integrations.app_activity", default=None
)


def current_request() -> RequestInfo | None:
    """Return the intrinsics of the request the running code works for.

    That is the request being handled, in its handler and in every call of its
    request activity (tasks and worker threads alike), and the request that
    handed work to the app activity, in that work. Outside any request (for
    example in work started at lifespan startup) it is ``None``.

    .. versionadded:: 0.1
    """
    return REQUEST.get()


def current_request_id() -> str | None:
    """Return the id of the request the running code works for, or ``None``.

    .. versionadded:: 0.1
    """
    info = REQUEST.get()
    return None if info is None else info.request_id


def current_request_activity() -> Activity | None:
    """Return the activity of the request the running code works for, or ``None``.

    In background work that outlived its request this is the request's activity
    all the same, closed by then.

    .. versionadded:: 0.1
    """
    return REQUEST_ACTIVITY.get()


def current_app_activity() -> Activity | None:
    """Return the app activity that the running code can hand work to, or ``None``.

    Known in a request (its handler and its calls), in background work and in the
    app activity's own calls.

    .. versionadded:: 0.1
    """
    return APP_ACTIVITY.get()


# -- the app's statistics --------------------------------------------------------------------------


@final
class AppStatistics(BaseModel):
    """The app activity's statistics and those of its live children (the open requests).

    .. versionadded:: 0.1
    """

    model_config: ClassVar[ConfigDict] = ConfigDict(frozen=True, extra="forbid")

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
