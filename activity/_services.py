"""Service domains: the services of an activity around code that runs in the current task.

COM+'s ``CoEnterServiceDomain`` / ``CoLeaveServiceDomain``, as
:func:`service_domain`. The services themselves (inheritance, the
synchronization domain, the thread model) are resolved when an activity
opens, in ``_lifecycle``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, cast

from ._activity import Activity
from ._config import ActivityConfig
from ._context import frame_var
from ._errors import InvalidArgumentError

if TYPE_CHECKING:
    from ._context import Frame
    from ._lifecycle import Core

__all__ = ["create_activity", "service_domain"]


class Chain:
    """The causality of a service domain's block (a logical thread of its own)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<chain of service domain {self.name!r}>"


@asynccontextmanager
async def service_domain(
    config: ActivityConfig | Mapping[str, Any] | None = None, /, **options: Any
) -> AsyncGenerator[Activity]:
    """Run the enclosed code inside a set of services, in the current task.

    COM+'s ``CoEnterServiceDomain`` / ``CoLeaveServiceDomain`` pair, as an
    async context manager: no new task runs the block, but for its duration
    the code is inside an activity's services. Its synchronization domain is
    held by the block's call chain (other chains wait; the block's own
    ``synchronous_call``s re-enter), ``ActivityLocal`` values set in the block
    belong to it, and with ``Inheritance.INHERIT`` it sees the enclosing
    activity's values and joins its domain. Pairs nest and always balance.

    ::

        async with service_domain(synchronization=Synchronization.NEW) as domain:
            ...  # one chain at a time in here; domain is an Activity for calls

    Thread pool and binding belong to activities only, as in COM+.

    :param config: an :class:`ActivityConfig` (or a mapping of its fields)
    :param options: fields of :class:`ActivityConfig`
    :return: the domain's activity, open for the block
    :raises InvalidArgumentError: if ``thread_pool`` or ``binding`` is given, or any
        field is bad
    """
    given = set(options)
    if isinstance(config, ActivityConfig):
        given |= config.model_fields_set
    elif isinstance(config, Mapping):
        given |= set(config)
    refused = sorted(given & {"thread_pool", "binding"})
    if refused:
        raise InvalidArgumentError(
            f"a service domain takes no {' or '.join(refused)}: thread pool and binding "
            "can only be set for an activity, as CoEnterServiceDomain refuses them",
            field=refused[0],
            value=options.get(refused[0]),
        )
    activity = Activity(config, **options)
    async with activity:
        # The block's frame is the activity's core.
        core = cast("Core", cast("Frame", frame_var.get()).host)
        # Entered inside a call, the block continues that call's chain.
        chain = core.causality or Chain(activity.name)
        core.causality = chain
        domain = core.domain
        if domain is not None:
            await domain.enter(chain)
        try:
            yield activity
        finally:
            if domain is not None:
                domain.leave(chain)
            core.causality = None


def create_activity(
    config: ActivityConfig | Mapping[str, Any] | None = None, /, **options: Any
) -> Activity:
    """Create an :class:`Activity` from a configuration (COM+'s ``CoCreateActivity``).

    :param config: an :class:`ActivityConfig`, or a mapping of its fields
    :param options: fields of :class:`ActivityConfig`, overriding ``config``'s
    :return: the activity, to be entered with ``async with``
    :raises InvalidArgumentError: if an option is unknown or has a bad value
    """
    return Activity(config, **options)


create_activity.__module__ = "activity"
service_domain.__module__ = "activity"
