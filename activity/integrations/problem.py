"""RFC 9457 problem details for an :class:`~activity.ActivityError`.

Every web integration answers an :class:`~activity.ActivityError` that escapes
a handler before the response started with a problem document
(:class:`ProblemDetails`, ``application/problem+json``) that carries the
HRESULT. The HTTP status comes from the error's HRESULT through
:data:`DEFAULT_STATUS_MAP` and the application's overrides (``status_map``); a
code no map names answers 500. A client error (4xx) says the exception's
message; a server error says only :func:`plain_detail`, so that internals do
not leak. The same answers are here for code of one's own::

    from activity.integrations.problem import problem_details

    problem = problem_details(exc, instance=request.path)
    return Response(problem.body(), status=problem.status, headers=problem.headers())

Every name is also exported by :mod:`activity.integrations.asgi` and by the
framework plugins.

.. versionadded:: 0.1
"""

from __future__ import annotations

import http
import types
from collections.abc import Mapping
from typing import ClassVar, Final, final

from pydantic import BaseModel, ConfigDict

from activity import ActivityError, HResult, InvalidArgumentError

from ._request import current_request_id

__all__ = [
    "DEFAULT_STATUS_MAP",
    "PLAIN_DETAILS",
    "ProblemDetails",
    "http_status_of",
    "plain_detail",
    "problem_details",
    "resolve_status_map",
]


def __dir__() -> list[str]:
    """The module's public names only, for ``dir()`` and completion."""
    return sorted(__all__)


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
        HResult.CONTEXT_E_SYNCH_TIMEOUT: 504,
    }
)

_PROBLEM_JSON: Final = "application/problem+json"


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

    model_config: ClassVar[ConfigDict] = ConfigDict(frozen=True, extra="forbid")

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


def resolve_status_map(
    status_map: Mapping[int, int] | Mapping[HResult, int] | None = None,
) -> Mapping[HResult, int]:
    """Return the HTTP status of each HRESULT: :data:`DEFAULT_STATUS_MAP` with overrides.

    What :func:`http_status_of` and :func:`problem_details` look codes up in. The
    result can be given to them as ``status_map`` again (it overrides each default
    with itself), so that a map checked once, where it is configured, is not
    refused later, at the first error.

    :param status_map: HRESULT to HTTP status pairs that override the defaults
    :return: a read-only map; a code it does not name answers 500
    :raises InvalidArgumentError: if ``status_map`` is not a mapping of 32-bit
        HRESULTs to HTTP statuses (100-599)

    .. versionadded:: 0.1
    """
    merged = dict(DEFAULT_STATUS_MAP)
    if status_map is None:
        return types.MappingProxyType(merged)
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
    return types.MappingProxyType(merged)


def http_status_of(
    exc: ActivityError, status_map: Mapping[int, int] | Mapping[HResult, int] | None = None
) -> int:
    """Return the HTTP status that answers an :class:`~activity.ActivityError`.

    :param exc: the error
    :param status_map: HRESULT to status pairs that override :data:`DEFAULT_STATUS_MAP`
    :return: the status; 500 for a code that no map names
    :raises InvalidArgumentError: if ``status_map`` is not a valid map

    .. versionadded:: 0.1
    """
    return resolve_status_map(status_map).get(exc.hresult, 500)


def problem_details(
    exc: ActivityError,
    *,
    status_map: Mapping[int, int] | Mapping[HResult, int] | None = None,
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
    status = resolve_status_map(status_map).get(exc.hresult, 500)
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


#: What a server error says to a client, in plain words; other codes say their message.
PLAIN_DETAILS: Final[Mapping[HResult, str]] = {
    HResult.CO_E_ASYNC_WORK_REJECTED: (
        "The server has too much work queued to accept this request's work now; try again later."
    ),
    HResult.RPC_E_DISCONNECTED: (
        "The server is shutting down and accepts no new work; try again later."
    ),
    HResult.E_TIMEOUT: "The work for this request did not finish in time.",
    HResult.CONTEXT_E_SYNCH_TIMEOUT: "The work for this request waited too long for its turn.",
    HResult.CONTEXT_E_WOULD_DEADLOCK: (
        "The work for this request would have waited for itself, so it was stopped."
    ),
    HResult.E_ABORT: "The work for this request was cancelled before it finished.",
    HResult.E_FAIL: "The server failed to do the work for this request.",
}


def plain_detail(code: HResult) -> str:
    """What a server error with ``code`` tells a client: plain words, no internals.

    .. versionadded:: 0.1
    """
    return PLAIN_DETAILS.get(code, code.message)
