"""The activity's service configuration: :class:`ActivityConfig` and its enums.

``ActivityConfig`` plays the part of COM+'s ``CServiceConfig``: it is read once,
when the activity is created, and is frozen afterwards.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._errors import InvalidArgumentError

__all__ = [
    "ActivityConfig",
    "Binding",
    "FailurePolicy",
    "Inheritance",
    "LocalScope",
    "Overflow",
    "Synchronization",
    "ThreadPool",
]


class Overflow(enum.Enum):
    """What :meth:`Activity.asynchronous_call` does when the work queue is full."""

    #: Raise :class:`AsyncWorkRejectedError` at once (COM+'s ``CO_E_ASYNC_WORK_REJECTED``).
    REJECT = "reject"
    #: Wait up to ``admission_timeout`` for a place in the queue, then reject.
    WAIT = "wait"


class LocalScope(enum.Enum):
    """Where the ``ActivityLocal`` values of an activity's calls live."""

    #: In the activity: every call reads and writes the activity's one table (and
    #: reads, where it has no value, what the activity the work came from has).
    ACTIVITY = "activity"
    #: In each call: a call starts with a copy of the values its submitter sees,
    #: over the activity's own, and what it sets stays with it and with the tasks
    #: and threads it starts (as a task starts with a copy of the context). For a
    #: long-lived activity that runs work for many requests or tenants: no call
    #: sees what another one set. The activity's block (its startup code) keeps
    #: writing the activity's own table.
    CALL = "call"


class FailurePolicy(enum.Enum):
    """What the failure of one asynchronous call does to the others."""

    #: A failed call is reported; the other calls go on (COM+ semantics).
    ISOLATE = "isolate"
    #: The first failure cancels every other call of the activity and closes admission.
    FAIL_FAST = "fail_fast"


#: ``error_handler(call, exc)``; kept loose here because pydantic validates it at runtime.
ErrorHandler = Callable[..., object]


class Synchronization(enum.Enum):
    """Whether calls run one at a time in a synchronization domain (COM+'s four values).

    A domain lets one call chain in at a time; a chain already inside (same
    causality: a ``synchronous_call`` made from a call that holds the domain,
    directly, through another activity or from a worker thread) re-enters at
    once instead of deadlocking, and other chains wait their turn, FIFO.
    """

    #: No domain: calls run concurrently (the default under ``Inheritance.IGNORE``).
    NONE = "none"
    #: Join the enclosing activity's domain if it has one, else none (the default
    #: under ``Inheritance.INHERIT``).
    IF_CONTAINER_IS_SYNCHRONIZED = "if_container_is_synchronized"
    #: Always synchronized: the enclosing activity's domain, or a new one.
    NEW_IF_NECESSARY = "new_if_necessary"
    #: Always a new domain of the activity's own.
    NEW = "new"


class ThreadPool(enum.Enum):
    """Where the activity's blocking (plain callable) calls run."""

    #: COM+'s ThreadPoolNone; refused for an activity, as ``CoCreateActivity`` refuses it.
    NONE = "none"
    #: The enclosing activity's model (MTA when there is none).
    INHERIT = "inherit"
    #: A single-threaded apartment: blocking calls run one at a time on a thread of
    #: the activity's own, named after it and joined when the activity exits.
    STA = "sta"
    #: Worker threads under the activity's ``thread_limit`` (the default).
    MTA = "mta"


class Binding(enum.Enum):
    """Whether an STA activity's blocking calls are bound to one thread."""

    #: An STA activity may move to a fresh apartment thread when its thread is held
    #: by an abandoned (cancelled or timed-out) call.
    NO_BINDING = "no_binding"
    #: Every blocking call runs on the same dedicated thread for the activity's whole
    #: life (thread affinity: thread-bound objects such as a ``sqlite3`` connection
    #: made there stay usable). Only for STA activities.
    BIND_TO_POOL_THREAD = "bind_to_pool_thread"


class Inheritance(enum.Enum):
    """Whether a nested activity builds on the activity it was entered in."""

    #: Start clean: no parent locals, no parent domain (COM+'s default).
    IGNORE = "ignore"
    #: See the parent's ``ActivityLocal`` values (a ``set`` shadows, never writes
    #: through), and take its domain and thread model where those say so.
    INHERIT = "inherit"


class ActivityConfig(BaseModel):
    """The services of an activity, validated and frozen.

    Build it with keyword arguments, or from a mapping or a JSON document with
    :meth:`model_validate` and :meth:`model_validate_json`. A bad value raises
    :class:`InvalidArgumentError` naming the field and the value. Counts and
    seconds are strict: a ``bool``, a string or ``bytes`` is refused where a number
    is expected (an ``int`` is taken for seconds).

    .. versionadded:: 0.1
    """

    model_config: ClassVar[ConfigDict] = ConfigDict(
        frozen=True, extra="forbid", validate_default=True, arbitrary_types_allowed=True
    )

    #: A name for tracking, tracebacks and worker-thread names.
    name: str | None = Field(default=None, min_length=1, max_length=200)
    #: How many calls may run at once.
    max_concurrency: int = Field(default=100, ge=1, strict=True)
    #: How many accepted calls may wait for a place to run (FIFO).
    max_pending: int = Field(default=1000, ge=0, strict=True)
    #: What a full queue does to a new asynchronous call.
    overflow: Overflow = Overflow.REJECT
    #: With ``Overflow.WAIT``: seconds to wait for a place before rejecting (None: no limit).
    admission_timeout: float | None = Field(default=None, ge=0, strict=True)
    #: How many worker threads the activity's blocking calls may use at once.
    thread_limit: int = Field(default=40, ge=1, strict=True)
    #: Default per-call timeout in seconds (None: no limit).
    timeout: float | None = Field(default=None, gt=0, strict=True)
    #: Seconds that leaving the activity waits for accepted work before cancelling it.
    shutdown_timeout: float | None = Field(default=10.0, ge=0, strict=True)
    #: Whether one failure leaves the other calls alone (the default) or cancels them.
    failure_policy: FailurePolicy = FailurePolicy.ISOLATE
    #: Called as ``error_handler(call, exc)`` (sync or async) when an asynchronous call fails.
    error_handler: ErrorHandler | None = Field(default=None, exclude=True)
    #: Whether a nested activity builds on its parent (COM+'s ``IServiceInheritanceConfig``).
    inheritance: Inheritance = Inheritance.IGNORE
    #: The synchronization domain (None: ``NONE`` under ``IGNORE``,
    #: ``IF_CONTAINER_IS_SYNCHRONIZED`` under ``INHERIT``).
    synchronization: Synchronization | None = None
    #: Seconds a call chain waits to enter the synchronization domain before its call
    #: fails with ``CallTimeoutError`` (``CONTEXT_E_SYNCH_TIMEOUT``). ``None``: no limit
    #: of its own; an activity in its parent's domain then takes the limit of the
    #: activity that made the domain.
    synchronization_timeout: float | None = Field(default=None, ge=0, strict=True)
    #: Where blocking calls run (None: ``MTA`` under ``IGNORE``, ``INHERIT`` under ``INHERIT``).
    thread_pool: ThreadPool | None = None
    #: Thread affinity for an STA activity.
    binding: Binding = Binding.NO_BINDING
    #: Activities that name the same partition share one admission budget (running and
    #: pending), so a burst in one partition cannot starve another.
    partition: str | None = Field(default=None, min_length=1, max_length=200)
    #: Where the calls' ``ActivityLocal`` values live: the activity's one table, or
    #: a table per call seeded from what its submitter sees.
    local_scope: LocalScope = LocalScope.ACTIVITY
    #: Where the calls' bodies run: ``None`` for this process (tasks and worker
    #: threads), or an executor such as :class:`activity.dask.DaskExecutor`.
    executor: Any = Field(default=None, exclude=True)
    #: Whether each call gets an OpenTelemetry span once :func:`activity.otel.instrument`
    #: has run: ``None`` follows its ``spans`` argument, ``True`` or ``False`` decides
    #: for this activity alone.
    trace_calls: bool | None = Field(default=None, strict=True)

    @property
    def effective_synchronization(self) -> Synchronization:
        """``synchronization``, or the default of the inheritance mode."""
        if self.synchronization is not None:
            return self.synchronization
        if self.inheritance is Inheritance.INHERIT:
            return Synchronization.IF_CONTAINER_IS_SYNCHRONIZED
        return Synchronization.NONE

    @property
    def effective_thread_pool(self) -> ThreadPool:
        """``thread_pool``, or the default of the inheritance mode."""
        if self.thread_pool is not None:
            return self.thread_pool
        return ThreadPool.INHERIT if self.inheritance is Inheritance.INHERIT else ThreadPool.MTA

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _invalid(exc) from None

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Self:
        """Build a config from a mapping (or another config).

        :raises InvalidArgumentError: if a field is unknown or has a bad value
        """
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError as exc:
            raise _invalid(exc) from None

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **kwargs: Any) -> Self:
        """Build a config from a JSON document.

        :raises InvalidArgumentError: if the JSON is malformed, a field is unknown or
            has a bad value
        """
        try:
            return super().model_validate_json(json_data, **kwargs)
        except ValidationError as exc:
            raise _invalid(exc) from None

    def with_options(self, options: Mapping[str, Any]) -> ActivityConfig:
        """Return a copy with some fields replaced, validated again.

        :raises InvalidArgumentError: if an option is unknown or has a bad value
        """
        if not options:
            return self
        data = {name: getattr(self, name) for name in type(self).model_fields}
        data.update(options)
        return ActivityConfig(**data)


def _invalid(exc: ValidationError) -> InvalidArgumentError:
    """Turn pydantic's error into ours, naming the first bad field and value."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    # model_validate() runs __init__, whose own InvalidArgumentError pydantic wraps as a
    # value error of the whole model: hand that one on as it was.
    inner = first.get("ctx", {}).get("error")
    if isinstance(inner, InvalidArgumentError):
        return inner
    field = ".".join(str(part) for part in first["loc"]) or "config"
    value = first.get("input")
    if first["type"] == "extra_forbidden":
        message = f"ActivityConfig has no field {field!r} (got {field}={value!r})"
    else:
        message = f"ActivityConfig.{field}: {first['msg']} (got {value!r})"
    if len(errors) > 1:
        others = ", ".join(".".join(str(p) for p in e["loc"]) for e in errors[1:])
        message += f"; also invalid: {others}"
    return InvalidArgumentError(message, field=field, value=value)


for _obj in (
    ActivityConfig,
    Overflow,
    FailurePolicy,
    Synchronization,
    ThreadPool,
    Binding,
    Inheritance,
    LocalScope,
):
    _obj.__module__ = "activity"
