"""The exception tree, and the mapping between exceptions and HRESULT codes.

Every error the activity raises is an :class:`ActivityError` carrying an
:class:`~activity.HResult`. Misuse errors also inherit the builtin a caller would
catch for them::

    Exception
     └── ActivityError                       E_FAIL; also any code with no class of its own
          ├── ActivityFailedError            E_FAIL
          ├── AsyncWorkRejectedError         CO_E_ASYNC_WORK_REJECTED
          ├── CallCancelledError             E_ABORT
          ├── InvalidArgumentError           E_INVALIDARG         + ValueError
          ├── OutOfMemoryError               E_OUTOFMEMORY        + MemoryError
          ├── CallTimeoutError               E_TIMEOUT            + TimeoutError
          ├── AccessDeniedError              E_ACCESSDENIED       + PermissionError
          ├── NotImplementedHResultError     E_NOTIMPL            + NotImplementedError
          ├── WrongThreadError               RPC_E_WRONG_THREAD   + RuntimeError
          ├── ActivityClosedError            RPC_E_DISCONNECTED   + RuntimeError
          ├── CallPendingError               E_PENDING            + RuntimeError
          └── WouldDeadlockError             CONTEXT_E_WOULD_DEADLOCK + RuntimeError

:func:`hresult_of` gives any exception a code, and :func:`error_from_hresult` turns a
failing code back into an exception; :func:`register_hresult` adds a pair of the
user's own to both directions.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import reprlib
import threading
from enum import Enum
from typing import Any, ClassVar, Final, cast

from ._hresult import HResult

__all__ = (
    "AccessDeniedError",
    "ActivityClosedError",
    "ActivityError",
    "ActivityFailedError",
    "AsyncWorkRejectedError",
    "CallCancelledError",
    "CallPendingError",
    "CallTimeoutError",
    "InvalidArgumentError",
    "NotImplementedHResultError",
    "OutOfMemoryError",
    "WouldDeadlockError",
    "WrongThreadError",
    "error_from_hresult",
    "hresult_of",
    "register_hresult",
    "unregister_hresult",
)


class _Unset(Enum):
    UNSET = "<unset>"

    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Final = _Unset.UNSET


def _any_code(value: object, argument: str) -> HResult:
    """Normalize ``value`` to an :class:`HResult`, or refuse it.

    :param value: what the caller passed
    :param argument: the caller's name for it, for the error message
    :return: the code, a pseudo-member if it is not in the table
    :raises InvalidArgumentError: if ``value`` is not a 32-bit integer

    """
    if not isinstance(value, int):
        raise InvalidArgumentError(
            f"{argument} must be an int HRESULT, not {type(value).__name__}",
            field=argument,
            value=value,
        )
    try:
        return HResult(value)
    except ValueError:
        raise InvalidArgumentError(
            f"{argument}={value!r} is not a 32-bit HRESULT", field=argument, value=value
        ) from None


def _failing_code(value: object, argument: str) -> HResult:
    """Normalize ``value`` to a failing :class:`HResult`, or refuse it.

    :param value: what the caller passed
    :param argument: the caller's name for it, for the error message
    :return: the failing code
    :raises InvalidArgumentError: if ``value`` is not a 32-bit integer, or is a
        succeeding code (an error cannot be made from success)

    """
    hresult = _any_code(value, argument)
    if hresult.succeeded:
        raise InvalidArgumentError(
            f"{argument} must be a failing HRESULT, got {hresult}", field=argument, value=value
        )
    return hresult


class ActivityError(Exception):
    """Raised by the activity for a failure it reports with an HRESULT; the root of the tree.

    The code is :attr:`hresult`, given as ``hresult=`` or else the class's
    :attr:`default_hresult`; the message defaults to the code's message.

    A subclass of the user's own sets ``default_hresult`` (a failing code). It
    survives pickling as long as its ``__init__`` accepts ``(message, *, hresult=)``
    as this one does; otherwise it must define its own ``__reduce__``.

    :param message: what went wrong; the code's message if omitted
    :param hresult: the failing code (signed or unsigned); the class's default if omitted
    :raises InvalidArgumentError: if ``hresult`` is not a 32-bit integer or is a
        succeeding code
    """

    __module__ = "activity"

    #: The code an instance carries when no ``hresult=`` is given.
    default_hresult: ClassVar[HResult] = HResult.E_FAIL

    # Attributes that __init__ rebuilds from the arguments __reduce__ passes back, so
    # they are left out of the pickled __dict__.
    _rebuilt_attributes: ClassVar[frozenset[str]] = frozenset({"hresult", "message"})

    #: The failing code this error carries.
    hresult: HResult
    #: The message, also what ``str()`` gives.
    message: str

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Checked once here, so a bad default fails at the class statement, not at
        # the first raise; a plain int is accepted and normalized.
        cls.default_hresult = _failing_code(cls.default_hresult, "default_hresult")

    def __init__(self, message: str | None = None, *, hresult: int | None = None) -> None:
        code = type(self).default_hresult if hresult is None else _failing_code(hresult, "hresult")
        self.hresult = code
        self.message = code.message if message is None else str(message)
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def _reduce_kwargs(self) -> dict[str, Any]:
        """Give the keyword arguments (besides ``hresult``) that rebuild this error."""
        return {}

    def __reduce__(self) -> tuple[Any, ...]:
        # partial() carries the keyword-only arguments, which a reduce tuple cannot;
        # the rest of __dict__ (notes, attributes set later) goes as the state.
        factory = functools.partial(type(self), hresult=int(self.hresult), **self._reduce_kwargs())
        rebuilt = self._rebuilt_attributes
        state = {k: v for k, v in vars(self).items() if k not in rebuilt}
        return factory, (self.message,), state or None


class ActivityFailedError(ActivityError):
    """Raised when a call fails with ``E_FAIL``, the unspecified failure."""

    __module__ = "activity"
    default_hresult = HResult.E_FAIL


class AsyncWorkRejectedError(ActivityError):
    """Raised by ``asynchronous_call()`` when the activity's work queue is full."""

    __module__ = "activity"
    default_hresult = HResult.CO_E_ASYNC_WORK_REJECTED


class CallCancelledError(ActivityError):
    """Raised when a call was cancelled (``E_ABORT``) before it could give a result."""

    __module__ = "activity"
    default_hresult = HResult.E_ABORT


class InvalidArgumentError(ActivityError, ValueError):
    """Raised before anything is accepted when an argument or config value is invalid.

    :attr:`field` names what was wrong; :attr:`value` is the value that was refused
    (reading it raises :exc:`AttributeError` when none was given, since ``None`` can
    itself be the bad value). To be pickled, the error needs a picklable ``value``.

    :param message: what went wrong; built from ``field`` and ``value`` if omitted
    :param hresult: the failing code; ``E_INVALIDARG`` if omitted
    :param field: the name of the argument or config field that was wrong
    :param value: the value that was refused
    """

    __module__ = "activity"
    default_hresult = HResult.E_INVALIDARG

    _rebuilt_attributes = ActivityError._rebuilt_attributes | {"field", "_value"}

    #: The argument or config field that was wrong, if known.
    field: str | None

    def __init__(
        self,
        message: str | None = None,
        *,
        hresult: int | None = None,
        field: str | None = None,
        value: object = _UNSET,
    ) -> None:
        code = type(self).default_hresult if hresult is None else _failing_code(hresult, "hresult")
        self.field = field
        self._value = value
        if message is None and field is not None:
            detail = field if value is _UNSET else f"{field}={reprlib.repr(value)}"
            message = f"{code.message.rstrip('.')}: {detail}"
        super().__init__(message, hresult=code)

    @property
    def value(self) -> object:
        """The value that was refused.

        :raises AttributeError: if no value was given
        """
        if self._value is _UNSET:
            raise AttributeError(f"{type(self).__name__} was raised without a value")
        return self._value

    def _reduce_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"field": self.field}
        if self._value is not _UNSET:
            kwargs["value"] = self._value
        return kwargs


class OutOfMemoryError(ActivityError, MemoryError):
    """Raised when the activity cannot allocate what a call needs (``E_OUTOFMEMORY``)."""

    __module__ = "activity"
    default_hresult = HResult.E_OUTOFMEMORY


class CallTimeoutError(ActivityError, TimeoutError):
    """Raised when a call or a wait outlives its timeout (``HRESULT_FROM_WIN32(ERROR_TIMEOUT)``)."""

    __module__ = "activity"
    default_hresult = HResult.E_TIMEOUT


class AccessDeniedError(ActivityError, PermissionError):
    """Raised when a call fails with ``E_ACCESSDENIED``, the caller lacking a permission."""

    __module__ = "activity"
    default_hresult = HResult.E_ACCESSDENIED


class NotImplementedHResultError(ActivityError, NotImplementedError):
    """Raised when a call fails with ``E_NOTIMPL``, asking for something not implemented."""

    __module__ = "activity"
    default_hresult = HResult.E_NOTIMPL


class WrongThreadError(ActivityError, RuntimeError):
    """Raised when an activity is used from a thread or event loop other than its own."""

    __module__ = "activity"
    default_hresult = HResult.RPC_E_WRONG_THREAD


class ActivityClosedError(ActivityError, RuntimeError):
    """Raised when work is submitted to an activity that is closing or closed."""

    __module__ = "activity"
    default_hresult = HResult.RPC_E_DISCONNECTED


class CallPendingError(ActivityError, RuntimeError):
    """Raised by ``Call.result()`` and ``Call.exception()`` before the call has finished."""

    __module__ = "activity"
    default_hresult = HResult.E_PENDING


class WouldDeadlockError(ActivityError, RuntimeError):
    """Raised when a wait would never end: the awaited work needs a domain the waiter holds.

    A call chain that holds a synchronization domain waits (``await call``,
    ``call.wait()``, ``synchronous_call``) for work that needs that domain,
    directly or through other chains that wait in turn. The wait raises at
    once instead of hanging; the awaited call is left as it was, and runs
    once the domain is free (``CONTEXT_E_WOULD_DEADLOCK``).

    .. versionadded:: 0.2
    """

    __module__ = "activity"
    default_hresult = HResult.CONTEXT_E_WOULD_DEADLOCK


# Failing code -> class, for error_from_hresult(). Each class's own code, plus codes of
# the table whose meaning one of them already covers; any other code is ActivityError.
_CLASS_OF_CODE: Final[dict[HResult, type[ActivityError]]] = {
    cls.default_hresult: cls
    for cls in (
        ActivityFailedError,
        AsyncWorkRejectedError,
        CallCancelledError,
        InvalidArgumentError,
        OutOfMemoryError,
        CallTimeoutError,
        AccessDeniedError,
        NotImplementedHResultError,
        WrongThreadError,
        ActivityClosedError,
        CallPendingError,
        WouldDeadlockError,
    )
}
_CLASS_OF_CODE.update(
    {
        HResult.E_CANCELLED: CallCancelledError,
        HResult.CONTEXT_E_SYNCH_TIMEOUT: CallTimeoutError,
        HResult.E_POINTER: InvalidArgumentError,
        HResult.E_HANDLE: InvalidArgumentError,
        HResult.CO_E_THREADPOOL_CONFIG: InvalidArgumentError,
        HResult.CO_E_TRACKER_CONFIG: InvalidArgumentError,
    }
)

# Builtin exception class -> code, for hresult_of(); matched on the exact class while
# walking the MRO, so the most specific entry wins.
_CODE_OF_BUILTIN: Final[dict[type[BaseException], HResult]] = {
    ValueError: HResult.E_INVALIDARG,
    TypeError: HResult.E_INVALIDARG,
    MemoryError: HResult.E_OUTOFMEMORY,
    NotImplementedError: HResult.E_NOTIMPL,
    PermissionError: HResult.E_ACCESSDENIED,
    TimeoutError: HResult.E_TIMEOUT,
    asyncio.CancelledError: HResult.E_ABORT,
    concurrent.futures.CancelledError: HResult.E_ABORT,
}

# The users' pairs, kept one-to-one: a code has one class and a class one code.
_registry_lock = threading.Lock()
_registered_class: dict[HResult, type[BaseException]] = {}
_registered_code: dict[type[BaseException], HResult] = {}


def _is_exception_class(obj: object) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseException)


def _is_trio_cancelled(cls: type[BaseException]) -> bool:
    # Detected by name so that importing this module never imports trio.
    module = cls.__module__
    return cls.__name__ == "Cancelled" and (module == "trio" or module.startswith("trio."))


def hresult_of(exc: BaseException) -> HResult:
    """Give the HRESULT that stands for an exception.

    The first rule that applies wins:

    * an :class:`ActivityError` gives its own :attr:`~ActivityError.hresult`;
    * otherwise the exception's classes are walked from the most specific (its MRO),
      and the first that has a code gives it: a pair from :func:`register_hresult`,
      then the builtins: :exc:`ValueError` and :exc:`TypeError` give ``E_INVALIDARG``,
      :exc:`MemoryError` ``E_OUTOFMEMORY``, :exc:`NotImplementedError` ``E_NOTIMPL``,
      :exc:`PermissionError` ``E_ACCESSDENIED``, :exc:`TimeoutError` ``E_TIMEOUT``,
      a cancellation (:exc:`asyncio.CancelledError`,
      :exc:`concurrent.futures.CancelledError`, trio's ``Cancelled``) ``E_ABORT``;
    * an exception group gives the code of its leaves if they all agree, else
      ``E_FAIL``;
    * anything else gives ``E_FAIL``.

    :param exc: the exception
    :return: its code; always a failing one
    :raises InvalidArgumentError: if ``exc`` is not an exception

    """
    if isinstance(exc, ActivityError):
        return exc.hresult
    if not isinstance(exc, BaseException):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise InvalidArgumentError(
            f"exc must be an exception, not {type(exc).__name__}", field="exc", value=exc
        )
    for cls in type(exc).__mro__:
        registered = _registered_code.get(cls)
        if registered is not None:
            return registered
        builtin = _CODE_OF_BUILTIN.get(cls)
        if builtin is not None:
            return builtin
        if cls is BaseExceptionGroup:
            group = cast("BaseExceptionGroup[BaseException]", exc)
            # Nested groups answer for their own leaves: agreeing leaves give their
            # code, and a disagreement anywhere below becomes E_FAIL, which only
            # agrees with leaves that are themselves E_FAIL.
            codes = {hresult_of(inner) for inner in group.exceptions}
            return codes.pop() if len(codes) == 1 else HResult.E_FAIL
        if _is_trio_cancelled(cls):
            return HResult.E_ABORT
    return HResult.E_FAIL


def error_from_hresult(code: int, message: str | None = None) -> BaseException:
    """Make the exception that stands for a failing HRESULT.

    The class is the one :func:`register_hresult` paired with the code, else the
    activity's class for it (``E_INVALIDARG`` gives :exc:`InvalidArgumentError`,
    ``E_TIMEOUT`` :exc:`CallTimeoutError`, and so on), else :exc:`ActivityError`
    itself. An :class:`ActivityError` is made with ``hresult=code``, so
    ``hresult_of(error_from_hresult(code)) == code`` for every failing code; another
    class is made with the message alone.

    :param code: a failing HRESULT, signed or unsigned
    :param message: the message; the code's message if omitted
    :return: the exception, not raised
    :raises InvalidArgumentError: if ``code`` is a succeeding code (an error cannot be
        made from success) or is not a 32-bit integer

    """
    hresult = _failing_code(code, "code")
    cls = _registered_class.get(hresult) or _CLASS_OF_CODE.get(hresult, ActivityError)
    if issubclass(cls, ActivityError):
        return cls(message, hresult=hresult)
    return cls(hresult.message if message is None else message)


def register_hresult(code: int, exc_type: type[BaseException]) -> None:
    """Pair a failing HRESULT of the user's own with an exception class.

    From then on :func:`error_from_hresult` makes ``exc_type`` for ``code`` (as
    ``exc_type(message, hresult=code)`` for an :class:`ActivityError` subclass, as
    ``exc_type(message)`` otherwise), and :func:`hresult_of` gives ``code`` for an
    instance of ``exc_type`` or of a subclass that has no pair of its own.

    Pairs are one-to-one: registering a code or a class that is already in a pair
    replaces that pair. A pair takes precedence over the activity's own mapping;
    :func:`unregister_hresult` removes it.

    :param code: a failing HRESULT, signed or unsigned
    :param exc_type: an exception class
    :raises InvalidArgumentError: if ``code`` is a succeeding code or not a 32-bit
        integer, or if ``exc_type`` is not an exception class

    """
    hresult = _failing_code(code, "code")
    if not _is_exception_class(exc_type):
        raise InvalidArgumentError(
            f"exc_type must be an exception class, got {exc_type!r}",
            field="exc_type",
            value=exc_type,
        )
    with _registry_lock:
        old_class = _registered_class.pop(hresult, None)
        if old_class is not None:
            del _registered_code[old_class]
        old_code = _registered_code.pop(exc_type, None)
        if old_code is not None:
            del _registered_class[old_code]
        _registered_class[hresult] = exc_type
        _registered_code[exc_type] = hresult


def unregister_hresult(code: int) -> type[BaseException] | None:
    """Remove the pair that :func:`register_hresult` made for a code.

    The activity's own mapping of the code, if any, applies again. Removing a code
    that has no pair does nothing.

    :param code: the HRESULT, signed or unsigned
    :return: the class that was paired with ``code``, or ``None`` if there was none
    :raises InvalidArgumentError: if ``code`` is not a 32-bit integer

    """
    hresult = _any_code(code, "code")
    with _registry_lock:
        exc_type = _registered_class.pop(hresult, None)
        if exc_type is not None:
            del _registered_code[exc_type]
    return exc_type


for _public in (error_from_hresult, hresult_of, register_hresult, unregister_hresult):
    _public.__module__ = "activity"
del _public
