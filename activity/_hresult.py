"""HRESULT codes: the table of known values and the bit arithmetic of ``winerror.h``.

An HRESULT is a 32-bit value laid out as::

     3 3 2 2 2 2 2 2 2 2 2 2 1 1 1 1 1 1 1 1 1 1
     1 0 9 8 7 6 5 4 3 2 1 0 9 8 7 6 5 4 3 2 1 0 9 8 7 6 5 4 3 2 1 0
    +-+-+-+-+-+---------------------+-------------------------------+
    |S|R|C|N|X|      Facility       |               Code            |
    +-+-+-+-+-+---------------------+-------------------------------+

``S`` (bit 31) is the severity: 1 means failure, so ``SUCCEEDED(hr)`` is ``hr >= 0``
read as a signed 32-bit integer. Windows APIs, ctypes and pywin32 hand HRESULTs out
signed (``E_FAIL`` is ``-2147467259`` there); this module stores them unsigned, as
``winerror.h`` spells them, and accepts both.

This module imports nothing but the standard library.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final, Self

__all__ = (
    "HResult",
    "code",
    "facility",
    "failed",
    "hresult_from_win32",
    "severity",
    "succeeded",
)

_UINT32_MASK: Final = 0xFFFF_FFFF
_SEVERITY_BIT: Final = 0x8000_0000
_INT32_MIN: Final = -0x8000_0000
_FACILITY_WIN32: Final = 7

#: How many pseudo-members (codes missing from the table) are kept, so that repeated
#: lookups of one unknown code give the same object. Past this many distinct codes
#: each lookup builds a fresh (equal) pseudo-member: codes can come from a peer, and
#: the cache must not grow without bound.
_MAX_PSEUDO_MEMBERS: Final = 4096
_pseudo_members: dict[int, HResult] = {}


def _to_unsigned(value: object) -> int:
    """Normalize a signed or unsigned 32-bit HRESULT to its unsigned form.

    :param value: an HRESULT, signed (as ctypes and pywin32 return it) or unsigned
    :return: the unsigned 32-bit value
    :raises ValueError: if ``value`` fits neither a signed nor an unsigned 32-bit integer
    :raises TypeError: if ``value`` is not an integer

    """
    if not isinstance(value, int):
        raise TypeError(f"an HRESULT must be an int, not {type(value).__name__}")
    if not _INT32_MIN <= value <= _UINT32_MASK:
        raise ValueError(f"{value!r} is not a 32-bit HRESULT (expected -0x80000000 to 0xFFFFFFFF)")
    return value & _UINT32_MASK


class HResult(IntEnum):
    """A 32-bit ``HRESULT`` code, with the message ``winerror.h`` gives it.

    Members hold the unsigned value (``HResult.E_FAIL == 0x80004005``). Looking a code
    up never fails for a valid 32-bit value:

    * signed input is normalized: ``HResult(-2147467259) is HResult.E_FAIL``;
    * a code missing from the table gives a *pseudo-member* named ``HRESULT_0x........``
      with a generic message, as :class:`enum.Flag` does for combined values. It is an
      ``HResult`` like any other, but it is not listed by ``iter(HResult)``.

    Only a value outside the 32-bit range (or not an integer) raises :exc:`ValueError`.

    ``str()`` gives ``E_FAIL (0x80004005): Unspecified error.``; ``format()`` with an
    empty spec gives the same, and with a spec formats the number (``f"{hr:#010x}"``).
    """

    _value_: int
    _message: str

    def __new__(cls, value: int, message: str = "") -> Self:
        member = int.__new__(cls, value)
        member._value_ = value
        member._message = message
        return member

    # Success codes.
    S_OK = 0x00000000, "The operation completed successfully."
    S_FALSE = 0x00000001, "The operation succeeded with a false or partial result."

    # Generic COM failures (FACILITY_NULL).
    E_PENDING = 0x8000000A, "The data necessary to complete this operation is not yet available."
    E_NOTIMPL = 0x80004001, "Not implemented."
    E_NOINTERFACE = 0x80004002, "No such interface supported."
    E_POINTER = 0x80004003, "Invalid pointer."
    E_ABORT = 0x80004004, "Operation aborted."
    E_FAIL = 0x80004005, "Unspecified error."
    E_UNEXPECTED = 0x8000FFFF, "Catastrophic failure."

    # COM+ services (FACILITY_NULL).
    CO_E_ASYNC_WORK_REJECTED = (
        0x80004029,
        "The thread-pool rejected the submitted asynchronous work.",
    )
    CO_E_TRACKER_CONFIG = 0x80004030, "The provided tracker configuration is invalid."
    CO_E_THREADPOOL_CONFIG = 0x80004031, "The provided thread pool configuration is invalid."

    # RPC (FACILITY_RPC).
    RPC_E_DISCONNECTED = 0x80010108, "The object invoked has disconnected from its clients."
    RPC_E_WRONG_THREAD = (
        0x8001010E,
        "The application called an interface that was marshaled for a different thread.",
    )

    # COM+ contexts (FACILITY_ITF).
    CONTEXT_E_ABORTED = (
        0x8004E002,
        "The root transaction wanted to commit, but the transaction aborted.",
    )
    CONTEXT_E_ABORTING = (
        0x8004E003,
        (
            "The COM+ component on which the method call was made has a transaction that has "
            "already aborted or is in the process of aborting."
        ),
    )
    CONTEXT_E_WOULD_DEADLOCK = (
        0x8004E005,
        (
            "The component is configured to use synchronization, and this method call would "
            "cause a deadlock to occur."
        ),
    )
    CONTEXT_E_SYNCH_TIMEOUT = (
        0x8004E006,
        (
            "The component is configured to use synchronization, and a thread has timed out "
            "waiting to enter the context."
        ),
    )

    # Win32 errors as HRESULTs (FACILITY_WIN32).
    E_ACCESSDENIED = 0x80070005, "General access denied error."
    E_HANDLE = 0x80070006, "Invalid handle."
    E_OUTOFMEMORY = 0x8007000E, "Ran out of memory."
    E_INVALIDARG = 0x80070057, "One or more arguments are invalid."
    E_CANCELLED = 0x800704C7, "The operation was canceled by the user."
    """``HRESULT_FROM_WIN32(ERROR_CANCELLED)``: Win32 error 1223 as an HRESULT."""
    E_TIMEOUT = 0x800705B4, "This operation returned because the timeout period expired."
    """``HRESULT_FROM_WIN32(ERROR_TIMEOUT)``: Win32 error 1460 as an HRESULT."""

    @classmethod
    def _missing_(cls, value: object) -> HResult | None:
        if not isinstance(value, int):
            return None  # Enum turns this into "... is not a valid HResult"
        unsigned = _to_unsigned(value)  # ValueError out of range: bad input, not a code
        known = cls._value2member_map_.get(unsigned)
        if isinstance(known, cls):
            return known
        cached = _pseudo_members.get(unsigned)
        if cached is not None:
            return cached
        pseudo = int.__new__(cls, unsigned)
        pseudo._name_ = f"HRESULT_0x{unsigned:08X}"
        pseudo._value_ = unsigned
        pseudo._message = (
            f"Unknown {'failure' if unsigned & _SEVERITY_BIT else 'success'} code "
            f"(facility {(unsigned >> 16) & 0x7FF}, code {unsigned & 0xFFFF})."
        )
        if len(_pseudo_members) >= _MAX_PSEUDO_MEMBERS:
            return pseudo
        # setdefault: two threads racing on one new code still share one object.
        return _pseudo_members.setdefault(unsigned, pseudo)

    @property
    def message(self) -> str:
        """The code's message, from ``winerror.h`` (generic for a pseudo-member)."""
        return self._message

    @property
    def severity(self) -> int:
        """Bit 31: 1 for a failure, 0 for a success."""
        return self._value_ >> 31

    @property
    def facility(self) -> int:
        """Bits 16 to 26: the facility (7 is ``FACILITY_WIN32``, 4 ``FACILITY_ITF``)."""
        return (self._value_ >> 16) & 0x7FF

    @property
    def code(self) -> int:
        """Bits 0 to 15: the code within the facility."""
        return self._value_ & 0xFFFF

    @property
    def succeeded(self) -> bool:
        """Whether the code is a success (``SUCCEEDED(hr)``)."""
        return not self._value_ & _SEVERITY_BIT

    @property
    def failed(self) -> bool:
        """Whether the code is a failure (``FAILED(hr)``)."""
        return bool(self._value_ & _SEVERITY_BIT)

    def __str__(self) -> str:
        return f"{self._name_} (0x{self._value_:08X}): {self._message}"

    def __format__(self, format_spec: str) -> str:
        if not format_spec:
            return str(self)
        return int.__format__(self, format_spec)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{self._name_}: 0x{self._value_:08X}>"


def succeeded(hr: int) -> bool:
    """Tell whether an HRESULT is a success, as the ``SUCCEEDED`` macro does.

    :param hr: an HRESULT, signed or unsigned
    :return: ``True`` if ``hr`` is non-negative as a signed 32-bit integer
    :raises ValueError: if ``hr`` is outside the 32-bit range
    :raises TypeError: if ``hr`` is not an integer

    """
    return not _to_unsigned(hr) & _SEVERITY_BIT


def failed(hr: int) -> bool:
    """Tell whether an HRESULT is a failure, as the ``FAILED`` macro does.

    :param hr: an HRESULT, signed or unsigned
    :return: ``True`` if ``hr`` is negative as a signed 32-bit integer
    :raises ValueError: if ``hr`` is outside the 32-bit range
    :raises TypeError: if ``hr`` is not an integer

    """
    return bool(_to_unsigned(hr) & _SEVERITY_BIT)


def severity(hr: int) -> int:
    """Give the severity bit of an HRESULT (``HRESULT_SEVERITY``).

    :param hr: an HRESULT, signed or unsigned
    :return: 1 for a failure, 0 for a success
    :raises ValueError: if ``hr`` is outside the 32-bit range
    :raises TypeError: if ``hr`` is not an integer

    """
    return _to_unsigned(hr) >> 31


def facility(hr: int) -> int:
    """Give the facility of an HRESULT, bits 16 to 26 (``HRESULT_FACILITY``).

    :param hr: an HRESULT, signed or unsigned
    :return: the facility, from 0 to 0x7FF
    :raises ValueError: if ``hr`` is outside the 32-bit range
    :raises TypeError: if ``hr`` is not an integer

    """
    return (_to_unsigned(hr) >> 16) & 0x7FF


def code(hr: int) -> int:
    """Give the code of an HRESULT within its facility, bits 0 to 15 (``HRESULT_CODE``).

    :param hr: an HRESULT, signed or unsigned
    :return: the code, from 0 to 0xFFFF
    :raises ValueError: if ``hr`` is outside the 32-bit range
    :raises TypeError: if ``hr`` is not an integer

    """
    return _to_unsigned(hr) & 0xFFFF


def hresult_from_win32(err: int) -> HResult:
    """Turn a Win32 error code into an HRESULT, as the ``HRESULT_FROM_WIN32`` macro does.

    0 (``ERROR_SUCCESS``) gives ``S_OK``; a positive error gives
    ``0x80070000 | (err & 0xFFFF)`` (``FACILITY_WIN32``); a value that is already zero
    or negative as a signed 32-bit integer (a failing HRESULT) passes through unchanged.

    :param err: a Win32 error code (``GetLastError()``), or an HRESULT
    :return: the HRESULT, a pseudo-member if it is not in the table
    :raises ValueError: if ``err`` is outside the 32-bit range
    :raises TypeError: if ``err`` is not an integer

    """
    unsigned = _to_unsigned(err)
    if unsigned == 0 or unsigned & _SEVERITY_BIT:
        return HResult(unsigned)
    return HResult(_SEVERITY_BIT | (_FACILITY_WIN32 << 16) | (unsigned & 0xFFFF))


# Only what activity/__init__.py re-exports claims to live there: pickle and the docs
# look objects up by __module__. severity(), facility() and code() are not re-exported
# (HResult has them as properties), so they stay here.
for _public in (HResult, succeeded, failed, hresult_from_win32):
    _public.__module__ = "activity"
del _public
