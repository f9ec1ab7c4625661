"""The options every web entry point takes, declared once.

:class:`WebOptions` is the single source of truth: each option's name, type,
default, documentation and validation. The entry points
(:class:`~activity.integrations.asgi.ActivityMiddleware`, Litestar's
``ActivityPlugin``, aiohttp's ``setup()``) take the options as keywords typed
``**options: Unpack[WebKeywords]`` (PEP 692) and hand them straight to
``WebOptions(**options)``, so an editor completes and a type checker checks
every keyword while no entry point repeats a default. :class:`WebKeywords`
names the keywords and their types only; type checkers check it against
:class:`WebOptions` at each ``WebOptions(**options)``, and a test checks that
the two name the same fields.

A frozen dataclass rather than a pydantic model, so that the options validate
as they always have: a bad value raises :class:`~activity.InvalidArgumentError`
naming the field, with the same message, and ``echo_request_id`` and
``problem_details`` take any truth value.

A private module: :mod:`activity.integrations.asgi` exports both names.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict, final

from activity import ActivityConfig, InvalidArgumentError

from .problem import resolve_status_map

if TYPE_CHECKING:
    from activity import HResult

    from ._request import RequestInfo

__all__ = ["WebKeywords", "WebOptions"]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class WebOptions:
    """The options of the web integrations: the app activity, request activities, answers.

    Every entry point takes these as keywords, with these defaults. Mappings
    given are copied and frozen, the header name is lower-cased, and the derived
    attributes (:attr:`app_config`, :attr:`request_config`, :attr:`statuses`)
    are computed once, here.

    :raises InvalidArgumentError: if an option has a bad value, naming it

    .. versionadded:: 0.1
    """

    #: The app activity's :class:`~activity.ActivityConfig`, or a mapping of its
    #: fields: its ``max_concurrency`` and ``max_pending`` bound the background work,
    #: its ``shutdown_timeout`` the drain at shutdown, and its ``error_handler``
    #: observes background failures. Its default name is ``"app"``.
    app_options: ActivityConfig | Mapping[str, Any] | None = None
    #: The config of every request activity, likewise; its default name is the
    #: request's method and path.
    request_options: ActivityConfig | Mapping[str, Any] | None = None
    #: The header a client's request id is taken from (one is generated when it is
    #: absent or not 1-128 printable ASCII characters); ``None`` to always generate.
    request_id_header: str | None = "x-request-id"
    #: Whether the response carries the request id in ``request_id_header``.
    echo_request_id: bool = True
    #: Whether an :class:`~activity.ActivityError` that escapes the application
    #: before the response started is answered with a problem document (a
    #: WebSocket is closed with 1013 for a 503, else 1011).
    problem_details: bool = True
    #: HRESULT to HTTP status pairs that override
    #: :data:`~activity.integrations.problem.DEFAULT_STATUS_MAP`; a code no map
    #: names answers 500, and a 500 is re-raised after the answer so that the
    #: server reports it.
    status_map: Mapping[int, int] | None = None
    #: The ``Retry-After`` seconds of a 503.
    retry_after: int = 1
    #: A path (such as ``"/_activity/stats"``) where ``GET`` returns
    #: :class:`~activity.integrations.asgi.AppStatistics` as JSON; ``None`` serves none.
    statistics_path: str | None = None
    #: Sessions: a callable from a request's
    #: :class:`~activity.integrations.asgi.RequestInfo` to its session's key (a
    #: cookie, a header, the authenticated user), or ``None`` for a request of no
    #: session. The requests of one session then run one at a time, in the order
    #: they arrived, each in its turn of the session's activity (a key of a
    #: :class:`~activity.KeyedActivity` under the app activity); different
    #: sessions run side by side. ``None`` (the default): no sessions.
    session_key: Callable[[RequestInfo], Hashable | None] | None = None

    #: The app activity's config, from :attr:`app_options`.
    app_config: ActivityConfig = field(init=False, repr=False, compare=False)
    #: The request activities' config, from :attr:`request_options`.
    request_config: ActivityConfig = field(init=False, repr=False, compare=False)
    #: The HTTP status of each HRESULT: the default map with :attr:`status_map` over it.
    statuses: Mapping[HResult, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Validated in the order the options were always checked in.
        setattr_ = object.__setattr__  # frozen: normalised values are set once, here
        setattr_(self, "app_config", _config_of(self.app_options, "app", "app_options"))
        setattr_(self, "request_config", _config_of(self.request_options, None, "request_options"))
        header = self.request_id_header
        if header is not None and (
            not isinstance(header, str)  # pyright: ignore[reportUnnecessaryIsInstance]
            or not header
        ):
            raise InvalidArgumentError(
                f"request_id_header must be a header name or None, got {header!r}",
                field="request_id_header",
                value=header,
            )
        setattr_(self, "request_id_header", None if header is None else header.lower())
        setattr_(self, "echo_request_id", bool(self.echo_request_id))
        setattr_(self, "problem_details", bool(self.problem_details))
        setattr_(self, "statuses", resolve_status_map(self.status_map))
        retry_after = self.retry_after
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
        path = self.statistics_path
        if path is not None and (
            not isinstance(path, str)  # pyright: ignore[reportUnnecessaryIsInstance]
            or not path.startswith("/")
        ):
            raise InvalidArgumentError(
                f"statistics_path must be a path starting with '/' or None, got {path!r}",
                field="statistics_path",
                value=path,
            )
        session_key = self.session_key
        if session_key is not None and not callable(session_key):
            raise InvalidArgumentError(
                f"session_key must be a callable from the request to a key, or None, "
                f"got {session_key!r}",
                field="session_key",
                value=session_key,
            )
        # Copies, so that changing a mapping after the fact changes no option.
        if isinstance(self.app_options, Mapping):
            setattr_(self, "app_options", types.MappingProxyType(dict(self.app_options)))
        if isinstance(self.request_options, Mapping):
            setattr_(self, "request_options", types.MappingProxyType(dict(self.request_options)))
        if self.status_map is not None:
            setattr_(self, "status_map", types.MappingProxyType(dict(self.status_map)))


class WebKeywords(TypedDict, total=False):
    """The keywords of every web entry point: the fields of :class:`WebOptions`.

    For typing ``**options`` (``**options: Unpack[WebKeywords]``); what each one
    means, and its default, is documented on :class:`WebOptions`.

    .. versionadded:: 0.1
    """

    app_options: ActivityConfig | Mapping[str, Any] | None
    request_options: ActivityConfig | Mapping[str, Any] | None
    request_id_header: str | None
    echo_request_id: bool
    problem_details: bool
    status_map: Mapping[int, int] | None
    retry_after: int
    statistics_path: str | None
    session_key: Callable[[RequestInfo], Hashable | None] | None


def _config_of(
    options: ActivityConfig | Mapping[str, Any] | None, default_name: str | None, option: str
) -> ActivityConfig:
    """The :class:`~activity.ActivityConfig` an ``*_options`` value stands for.

    :param default_name: the name to give a config that names no activity
    :param option: the option's name, for the error
    :raises InvalidArgumentError: if ``options`` is not a config, a mapping or ``None``
    """
    if options is None:
        return ActivityConfig(name=default_name)
    if isinstance(options, ActivityConfig):
        if options.name is None and default_name is not None:
            return options.with_options({"name": default_name})
        return options
    if isinstance(options, Mapping):  # pyright: ignore[reportUnnecessaryIsInstance]
        return ActivityConfig(**{"name": default_name, **options})
    raise InvalidArgumentError(
        f"{option} must be an ActivityConfig, a mapping of its fields or None, got {options!r}",
        field=option,
        value=options,
    )
