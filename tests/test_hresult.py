from __future__ import annotations

import pickle
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from activity._hresult import (
    HResult,
    code,
    facility,
    failed,
    hresult_from_win32,
    severity,
    succeeded,
)

# Every member and its value as winerror.h spells it, written out as literals so that
# a typo in the table cannot hide behind the same typo here.
WINERROR_H: dict[str, int] = {
    "S_OK": 0x00000000,
    "S_FALSE": 0x00000001,
    "E_PENDING": 0x8000000A,
    "E_NOTIMPL": 0x80004001,
    "E_NOINTERFACE": 0x80004002,
    "E_POINTER": 0x80004003,
    "E_ABORT": 0x80004004,
    "E_FAIL": 0x80004005,
    "E_UNEXPECTED": 0x8000FFFF,
    "CO_E_ASYNC_WORK_REJECTED": 0x80004029,
    "CO_E_TRACKER_CONFIG": 0x80004030,
    "CO_E_THREADPOOL_CONFIG": 0x80004031,
    "RPC_E_DISCONNECTED": 0x80010108,
    "RPC_E_WRONG_THREAD": 0x8001010E,
    "CONTEXT_E_ABORTED": 0x8004E002,
    "CONTEXT_E_ABORTING": 0x8004E003,
    "CONTEXT_E_WOULD_DEADLOCK": 0x8004E005,
    "CONTEXT_E_SYNCH_TIMEOUT": 0x8004E006,
    "E_ACCESSDENIED": 0x80070005,
    "E_HANDLE": 0x80070006,
    "E_OUTOFMEMORY": 0x8007000E,
    "E_INVALIDARG": 0x80070057,
    "E_CANCELLED": 0x800704C7,
    "E_TIMEOUT": 0x800705B4,
}

UNKNOWN_FAILURE = 0x80041234  # FACILITY_ITF, not in the table
UNKNOWN_SUCCESS = 0x00041234

hresults = st.integers(-(2**31), 2**32 - 1)
out_of_range = st.one_of(st.integers(max_value=-(2**31) - 1), st.integers(min_value=2**32))


def to_signed(value: int) -> int:
    return value - 2**32 if value >= 2**31 else value


class TestHResult:
    def test_table_is_complete(self) -> None:
        assert {member.name for member in HResult} == set(WINERROR_H)

    @pytest.mark.parametrize(("name", "value"), WINERROR_H.items())
    def test_value_matches_winerror_h(self, name: str, value: int) -> None:
        member = HResult[name]
        assert member == value
        assert member.value == value
        assert HResult(value) is member

    @pytest.mark.parametrize("member", list(HResult), ids=lambda m: m.name)
    def test_message_is_nonempty(self, member: HResult) -> None:
        assert isinstance(member.message, str)
        assert member.message.strip()

    def test_message_example(self) -> None:
        assert HResult.E_INVALIDARG.message == "One or more arguments are invalid."

    def test_win32_members_are_hresult_from_win32(self) -> None:
        assert hresult_from_win32(1460) is HResult.E_TIMEOUT  # ERROR_TIMEOUT
        assert hresult_from_win32(1223) is HResult.E_CANCELLED  # ERROR_CANCELLED
        assert hresult_from_win32(5) is HResult.E_ACCESSDENIED  # ERROR_ACCESS_DENIED
        assert hresult_from_win32(6) is HResult.E_HANDLE  # ERROR_INVALID_HANDLE
        assert hresult_from_win32(14) is HResult.E_OUTOFMEMORY  # ERROR_OUTOFMEMORY
        assert hresult_from_win32(87) is HResult.E_INVALIDARG  # ERROR_INVALID_PARAMETER

    def test_is_an_int(self) -> None:
        assert isinstance(HResult.E_FAIL, int)
        assert HResult.E_FAIL + 0 == 0x80004005
        assert HResult.E_FAIL > 0  # unsigned

    def test_bit_fields(self) -> None:
        hr = HResult.E_INVALIDARG
        assert (hr.severity, hr.facility, hr.code) == (1, 7, 0x57)
        assert (HResult.S_FALSE.severity, HResult.S_FALSE.facility, HResult.S_FALSE.code) == (
            0,
            0,
            1,
        )
        assert HResult.CONTEXT_E_SYNCH_TIMEOUT.facility == 4  # FACILITY_ITF
        assert HResult.RPC_E_WRONG_THREAD.facility == 1  # FACILITY_RPC

    @pytest.mark.parametrize("member", list(HResult), ids=lambda m: m.name)
    def test_succeeded_and_failed(self, member: HResult) -> None:
        is_success = member.name.startswith("S_")
        assert member.succeeded is is_success
        assert member.failed is not is_success

    def test_str(self) -> None:
        assert str(HResult.E_FAIL) == "E_FAIL (0x80004005): Unspecified error."
        assert str(HResult.S_OK) == "S_OK (0x00000000): The operation completed successfully."

    def test_format(self) -> None:
        assert f"{HResult.E_FAIL}" == str(HResult.E_FAIL)
        assert f"{HResult.E_FAIL:#010x}" == "0x80004005"
        assert f"{HResult.E_ABORT:d}" == str(0x80004004)

    def test_repr(self) -> None:
        assert repr(HResult.E_ABORT) == "<HResult.E_ABORT: 0x80004004>"

    def test_module(self) -> None:
        assert HResult.__module__ == "activity"

    def test_pickle_member(self) -> None:
        assert pickle.loads(pickle.dumps(HResult.E_FAIL)) is HResult.E_FAIL


class TestSignedInput:
    def test_e_fail_signed(self) -> None:
        assert HResult(-2147467259) is HResult.E_FAIL

    @pytest.mark.parametrize("member", [m for m in HResult if m.failed], ids=lambda m: m.name)
    def test_every_failing_member(self, member: HResult) -> None:
        assert HResult(int(member) - 2**32) is member

    def test_minus_one(self) -> None:
        hr = HResult(-1)
        assert hr == 0xFFFFFFFF
        assert hr.name == "HRESULT_0xFFFFFFFF"

    def test_int32_min(self) -> None:
        assert HResult(-(2**31)) == 0x80000000


class TestPseudoMember:
    def test_unknown_code_does_not_raise(self) -> None:
        hr = HResult(UNKNOWN_FAILURE)
        assert isinstance(hr, HResult)
        assert hr == UNKNOWN_FAILURE
        assert hr.value == UNKNOWN_FAILURE

    def test_name_and_message(self) -> None:
        hr = HResult(UNKNOWN_FAILURE)
        assert hr.name == "HRESULT_0x80041234"
        assert hr.message
        assert str(hr).startswith("HRESULT_0x80041234 (0x80041234): ")
        assert repr(hr) == "<HResult.HRESULT_0x80041234: 0x80041234>"

    def test_success_pseudo_member(self) -> None:
        hr = HResult(UNKNOWN_SUCCESS)
        assert hr.succeeded
        assert hr.name == "HRESULT_0x00041234"
        assert "success" in hr.message

    def test_same_object_each_time(self) -> None:
        assert HResult(UNKNOWN_FAILURE) is HResult(UNKNOWN_FAILURE)
        assert HResult(to_signed(UNKNOWN_FAILURE)) is HResult(UNKNOWN_FAILURE)

    def test_same_object_across_threads(self) -> None:
        value = 0x80041235
        seen: list[HResult] = []
        threads = [threading.Thread(target=lambda: seen.append(HResult(value))) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(hr is seen[0] for hr in seen)

    def test_not_listed(self) -> None:
        HResult(UNKNOWN_FAILURE)
        assert UNKNOWN_FAILURE not in [int(m) for m in HResult]
        assert "HRESULT_0x80041234" not in HResult.__members__

    def test_bit_fields(self) -> None:
        hr = HResult(UNKNOWN_FAILURE)
        assert (hr.severity, hr.facility, hr.code) == (1, 4, 0x1234)
        assert hr.failed
        assert not hr.succeeded

    def test_pickle(self) -> None:
        hr = HResult(UNKNOWN_FAILURE)
        assert pickle.loads(pickle.dumps(hr)) is hr


class TestBadInput:
    @pytest.mark.parametrize("value", [2**32, -(2**31) - 1, 2**64, -(2**63)])
    def test_out_of_range(self, value: int) -> None:
        with pytest.raises(ValueError, match="32-bit"):
            HResult(value)

    @pytest.mark.parametrize("value", ["E_FAIL", 1.5, None, b"\x00"])
    def test_not_an_int(self, value: object) -> None:
        with pytest.raises(ValueError, match="not a valid HResult"):
            HResult(value)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]

    @pytest.mark.parametrize(
        "function", [succeeded, failed, severity, facility, code, hresult_from_win32]
    )
    @pytest.mark.parametrize("value", [2**32, -(2**31) - 1])
    def test_functions_out_of_range(self, function: object, value: int) -> None:
        assert callable(function)
        with pytest.raises(ValueError, match="32-bit"):
            function(value)

    @pytest.mark.parametrize(
        "function", [succeeded, failed, severity, facility, code, hresult_from_win32]
    )
    def test_functions_not_an_int(self, function: object) -> None:
        assert callable(function)
        with pytest.raises(TypeError, match="must be an int"):
            function("E_FAIL")

    @given(out_of_range)
    def test_out_of_range_property(self, value: int) -> None:
        with pytest.raises(ValueError, match="32-bit"):
            HResult(value)


class TestFunctions:
    @pytest.mark.parametrize("function", [succeeded, failed, hresult_from_win32])
    def test_module(self, function: object) -> None:
        assert getattr(function, "__module__", None) == "activity"

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (0, True),
            (1, True),
            (0x7FFFFFFF, True),
            (0x80000000, False),
            (0x80004005, False),
            (-2147467259, False),
            (-1, False),
            (0xFFFFFFFF, False),
        ],
    )
    def test_succeeded_and_failed(self, value: int, expected: bool) -> None:
        assert succeeded(value) is expected
        assert failed(value) is not expected

    def test_accessors(self) -> None:
        assert severity(0x80070057) == 1
        assert facility(0x80070057) == 7
        assert code(0x80070057) == 0x57
        assert (severity(-2147024809), facility(-2147024809), code(-2147024809)) == (1, 7, 0x57)
        assert (severity(1), facility(1), code(1)) == (0, 0, 1)

    def test_accessors_ignore_reserved_bits(self) -> None:
        value = 0xF8000000 | (0x7FF << 16) | 0xFFFF  # S, R, C, N, X all set
        assert (severity(value), facility(value), code(value)) == (1, 0x7FF, 0xFFFF)
        value = 0x78000000  # only R, C, N, X set
        assert (severity(value), facility(value), code(value)) == (0, 0, 0)

    def test_hresult_from_win32(self) -> None:
        assert hresult_from_win32(0) is HResult.S_OK
        assert hresult_from_win32(1460) is HResult.E_TIMEOUT
        assert hresult_from_win32(2) == 0x80070002  # ERROR_FILE_NOT_FOUND, not in the table
        assert hresult_from_win32(2).name == "HRESULT_0x80070002"

    def test_hresult_from_win32_passes_hresults_through(self) -> None:
        assert hresult_from_win32(0x80004005) is HResult.E_FAIL
        assert hresult_from_win32(-2147467259) is HResult.E_FAIL
        assert hresult_from_win32(HResult.E_ABORT) is HResult.E_ABORT

    def test_hresult_from_win32_masks_to_16_bits(self) -> None:
        # The SDK macro keeps only the low word of a positive value.
        assert hresult_from_win32(0x10005) is HResult.E_ACCESSDENIED


class TestProperties:
    @given(hresults)
    def test_normalization(self, value: int) -> None:
        hr = HResult(value)
        assert isinstance(hr, HResult)
        assert int(hr) == value % 2**32
        assert 0 <= hr <= 0xFFFFFFFF

    @given(hresults)
    def test_normalization_is_idempotent(self, value: int) -> None:
        hr = HResult(value)
        assert HResult(hr) is hr
        assert HResult(int(hr)) == hr
        assert HResult(to_signed(int(hr))) == hr

    @given(hresults)
    def test_succeeded_differs_from_failed(self, value: int) -> None:
        assert succeeded(value) != failed(value)
        assert succeeded(value) is (to_signed(value % 2**32) >= 0)
        hr = HResult(value)
        assert (hr.succeeded, hr.failed) == (succeeded(value), failed(value))

    @given(hresults)
    def test_accessors_match_bit_arithmetic(self, value: int) -> None:
        unsigned = value % 2**32
        assert severity(value) == unsigned >> 31
        assert facility(value) == (unsigned >> 16) & 0x7FF
        assert code(value) == unsigned & 0xFFFF
        assert 0 <= facility(value) < 2**11
        assert 0 <= code(value) < 2**16
        hr = HResult(value)
        assert (hr.severity, hr.facility, hr.code) == (
            severity(value),
            facility(value),
            code(value),
        )

    @given(hresults)
    def test_accessors_recompose(self, value: int) -> None:
        unsigned = value % 2**32
        recomposed = (severity(value) << 31) | (facility(value) << 16) | code(value)
        if unsigned & 0x78000000 == 0:  # bits 27-30 (X, N, C, R) clear
            assert recomposed == unsigned
        else:
            assert recomposed == unsigned & ~0x78000000

    @given(hresults)
    def test_hresult_from_win32(self, value: int) -> None:
        result = hresult_from_win32(value)
        assert isinstance(result, HResult)
        if to_signed(value % 2**32) <= 0:
            assert result == value % 2**32  # zero and failing HRESULTs pass through
        else:
            assert result.failed
            assert result.facility == 7  # FACILITY_WIN32
            assert result.code == value & 0xFFFF
            assert result == 0x80070000 | (value & 0xFFFF)
        assert hresult_from_win32(result) is result  # idempotent

    @given(st.integers(1, 0xFFFF))
    def test_hresult_from_win32_of_win32_errors(self, error: int) -> None:
        result = hresult_from_win32(error)
        assert failed(result)
        assert code(result) == error
        assert facility(result) == 7
