from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import json
import pickle
from typing import TYPE_CHECKING, Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

import activity
import activity._errors
import activity._hresult
from activity._errors import (
    AccessDeniedError,
    ActivityClosedError,
    ActivityError,
    ActivityFailedError,
    AsyncWorkRejectedError,
    CallCancelledError,
    CallPendingError,
    CallTimeoutError,
    InvalidArgumentError,
    NotImplementedHResultError,
    OutOfMemoryError,
    WouldDeadlockError,
    WrongThreadError,
    error_from_hresult,
    hresult_of,
    register_hresult,
    unregister_hresult,
)
from activity._hresult import HResult

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

# Each class, its code and the builtins it must also be.
SUBCLASSES: list[tuple[type[ActivityError], HResult, tuple[type[BaseException], ...]]] = [
    (ActivityFailedError, HResult.E_FAIL, ()),
    (AsyncWorkRejectedError, HResult.CO_E_ASYNC_WORK_REJECTED, ()),
    (CallCancelledError, HResult.E_ABORT, ()),
    (InvalidArgumentError, HResult.E_INVALIDARG, (ValueError,)),
    (OutOfMemoryError, HResult.E_OUTOFMEMORY, (MemoryError,)),
    (CallTimeoutError, HResult.E_TIMEOUT, (TimeoutError,)),
    (AccessDeniedError, HResult.E_ACCESSDENIED, (PermissionError,)),
    (NotImplementedHResultError, HResult.E_NOTIMPL, (NotImplementedError,)),
    (WrongThreadError, HResult.RPC_E_WRONG_THREAD, (RuntimeError,)),
    (ActivityClosedError, HResult.RPC_E_DISCONNECTED, (RuntimeError,)),
    (CallPendingError, HResult.E_PENDING, (RuntimeError,)),
    (WouldDeadlockError, HResult.CONTEXT_E_WOULD_DEADLOCK, (RuntimeError,)),
]
SUBCLASS_IDS = [cls.__name__ for cls, _, _ in SUBCLASSES]
ALL_CLASSES: list[type[ActivityError]] = [ActivityError] + [cls for cls, _, _ in SUBCLASSES]

# What error_from_hresult() makes for every failing code of the table.
CLASS_OF_CODE: dict[HResult, type[ActivityError]] = {
    HResult.E_PENDING: CallPendingError,
    HResult.E_NOTIMPL: NotImplementedHResultError,
    HResult.E_NOINTERFACE: ActivityError,
    HResult.E_POINTER: InvalidArgumentError,
    HResult.E_ABORT: CallCancelledError,
    HResult.E_FAIL: ActivityFailedError,
    HResult.E_UNEXPECTED: ActivityError,
    HResult.CO_E_ASYNC_WORK_REJECTED: AsyncWorkRejectedError,
    HResult.CO_E_TRACKER_CONFIG: InvalidArgumentError,
    HResult.CO_E_THREADPOOL_CONFIG: InvalidArgumentError,
    HResult.RPC_E_DISCONNECTED: ActivityClosedError,
    HResult.RPC_E_WRONG_THREAD: WrongThreadError,
    HResult.CONTEXT_E_ABORTED: ActivityError,
    HResult.CONTEXT_E_ABORTING: ActivityError,
    HResult.CONTEXT_E_WOULD_DEADLOCK: WouldDeadlockError,
    HResult.CONTEXT_E_SYNCH_TIMEOUT: CallTimeoutError,
    HResult.E_ACCESSDENIED: AccessDeniedError,
    HResult.E_HANDLE: InvalidArgumentError,
    HResult.E_OUTOFMEMORY: OutOfMemoryError,
    HResult.E_INVALIDARG: InvalidArgumentError,
    HResult.E_CANCELLED: CallCancelledError,
    HResult.E_TIMEOUT: CallTimeoutError,
}

USER_CODE = 0xA0041001  # customer bit set: a code of the user's own
OTHER_USER_CODE = 0xA0041002

failing_codes = st.integers(0x80000000, 0xFFFFFFFF)
succeeding_codes = st.integers(0, 0x7FFFFFFF)


def name_of(cls: type[BaseException]) -> str:
    return cls.__name__


def round_trip(exc: BaseException) -> Any:
    return pickle.loads(pickle.dumps(exc))


class UserError(ActivityError):
    """A user's own error, with the same __init__ signature as ActivityError."""

    default_hresult = HResult(USER_CODE)


class UserErrorWithInit(ActivityError):
    """A user's own error that overrides __init__, keeping its signature."""

    default_hresult = HResult(OTHER_USER_CODE)

    def __init__(self, message: str | None = None, *, hresult: int | None = None) -> None:
        super().__init__(message, hresult=hresult)
        self.extra = "set in __init__"


class UserInvalidArgumentError(InvalidArgumentError):
    """A user's subclass of InvalidArgumentError."""


class PlainUserError(Exception):
    """A user's exception that knows nothing of HRESULTs."""


class UserValueError(ValueError):
    """A user's ValueError subclass, to be registered with a code of its own."""


@pytest.fixture
def register() -> Iterator[Callable[[int, type[BaseException]], None]]:
    """Register pairs for one test, and remove them afterwards."""
    codes: list[int] = []

    def register_for_test(code: int, exc_type: type[BaseException]) -> None:
        codes.append(code)
        register_hresult(code, exc_type)

    yield register_for_test
    for code in codes:
        unregister_hresult(code)


class TestActivityError:
    def test_defaults(self) -> None:
        exc = ActivityError()
        assert exc.hresult is HResult.E_FAIL
        assert exc.message == HResult.E_FAIL.message
        assert str(exc) == HResult.E_FAIL.message
        assert ActivityError.default_hresult is HResult.E_FAIL

    def test_message(self) -> None:
        exc = ActivityError("it broke")
        assert exc.message == "it broke"
        assert str(exc) == "it broke"
        assert exc.args == ("it broke",)
        assert exc.hresult is HResult.E_FAIL

    def test_hresult_argument(self) -> None:
        exc = ActivityError(hresult=HResult.E_UNEXPECTED)
        assert exc.hresult is HResult.E_UNEXPECTED
        assert exc.message == HResult.E_UNEXPECTED.message

    def test_hresult_is_normalized(self) -> None:
        assert ActivityError(hresult=-2147467260).hresult is HResult.E_ABORT
        assert ActivityError(hresult=0x80004004).hresult is HResult.E_ABORT
        unknown = ActivityError(hresult=0x80041234).hresult
        assert type(unknown) is HResult
        assert unknown == 0x80041234

    @pytest.mark.parametrize("hresult", [0, 1, HResult.S_FALSE, 0x7FFFFFFF])
    def test_succeeding_hresult_refused(self, hresult: int) -> None:
        with pytest.raises(InvalidArgumentError, match="failing HRESULT") as info:
            ActivityError(hresult=hresult)
        assert info.value.field == "hresult"

    @pytest.mark.parametrize("hresult", [2**32, -(2**31) - 1])
    def test_out_of_range_hresult_refused(self, hresult: int) -> None:
        with pytest.raises(InvalidArgumentError, match="32-bit") as info:
            ActivityError(hresult=hresult)
        assert info.value.field == "hresult"
        assert info.value.value == hresult

    def test_non_int_hresult_refused(self) -> None:
        with pytest.raises(InvalidArgumentError, match="int HRESULT"):
            ActivityError(hresult=cast("Any", "E_FAIL"))

    def test_is_an_exception(self) -> None:
        assert issubclass(ActivityError, Exception)
        with pytest.raises(ActivityError):
            raise ActivityError("boom")

    def test_user_subclass(self) -> None:
        exc = UserError()
        assert exc.hresult == USER_CODE
        assert type(exc.hresult) is HResult
        assert hresult_of(exc) == USER_CODE

    def test_user_subclass_int_default_is_normalized(self) -> None:
        class IntDefault(ActivityError):
            default_hresult = cast("Any", -2147467259)

        assert IntDefault.default_hresult is HResult.E_FAIL
        assert IntDefault().hresult is HResult.E_FAIL

    def test_user_subclass_succeeding_default_refused(self) -> None:
        with pytest.raises(InvalidArgumentError) as info:

            class Succeeding(ActivityError):  # pyright: ignore[reportUnusedClass]
                default_hresult = HResult.S_OK

        assert info.value.field == "default_hresult"

    @pytest.mark.parametrize("cls", ALL_CLASSES, ids=name_of)
    def test_module(self, cls: type[ActivityError]) -> None:
        assert cls.__module__ == "activity"

    @pytest.mark.parametrize("cls", ALL_CLASSES, ids=name_of)
    def test_docstring(self, cls: type[ActivityError]) -> None:
        assert cls.__doc__
        assert cls.__doc__.startswith("Raised ")


class TestSubclasses:
    @pytest.mark.parametrize(("cls", "hresult", "bases"), SUBCLASSES, ids=SUBCLASS_IDS)
    def test_code_and_bases(
        self,
        cls: type[ActivityError],
        hresult: HResult,
        bases: tuple[type[BaseException], ...],
    ) -> None:
        assert cls.default_hresult is hresult
        exc = cls("message")
        assert issubclass(cls, ActivityError)
        assert exc.hresult is hresult
        assert str(exc) == "message"
        for base in bases:
            assert isinstance(exc, base)
        assert hresult_of(exc) is hresult

    @pytest.mark.parametrize(("cls", "hresult", "bases"), SUBCLASSES, ids=SUBCLASS_IDS)
    def test_default_message(
        self,
        cls: type[ActivityError],
        hresult: HResult,
        bases: tuple[type[BaseException], ...],
    ) -> None:
        assert str(cls()) == hresult.message

    @pytest.mark.parametrize(("cls", "hresult", "bases"), SUBCLASSES, ids=SUBCLASS_IDS)
    def test_caught_as_builtin(
        self,
        cls: type[ActivityError],
        hresult: HResult,
        bases: tuple[type[BaseException], ...],
    ) -> None:
        for base in bases:
            with pytest.raises(base):
                raise cls("caught by its builtin")

    def test_oserror_subclasses_keep_the_message(self) -> None:
        # TimeoutError and PermissionError are OSErrors, whose constructor reads args.
        exc = CallTimeoutError("too slow", hresult=HResult.CONTEXT_E_SYNCH_TIMEOUT)
        assert exc.args == ("too slow",)
        assert str(exc) == "too slow"
        assert exc.hresult is HResult.CONTEXT_E_SYNCH_TIMEOUT
        assert str(AccessDeniedError("no")) == "no"


class TestInvalidArgumentError:
    def test_field_and_value(self) -> None:
        exc = InvalidArgumentError("bad limit", field="max_concurrency", value=-1)
        assert exc.field == "max_concurrency"
        assert exc.value == -1
        assert str(exc) == "bad limit"

    def test_defaults(self) -> None:
        exc = InvalidArgumentError()
        assert exc.field is None
        assert not hasattr(exc, "value")
        with pytest.raises(AttributeError, match="without a value"):
            _ = exc.value
        assert str(exc) == HResult.E_INVALIDARG.message

    def test_none_is_a_value(self) -> None:
        exc = InvalidArgumentError(field="name", value=None)
        assert hasattr(exc, "value")
        assert exc.value is None

    def test_message_from_field_and_value(self) -> None:
        assert str(InvalidArgumentError(field="timeout", value=-1.5)) == (
            "One or more arguments are invalid: timeout=-1.5"
        )
        assert str(InvalidArgumentError(field="timeout")) == (
            "One or more arguments are invalid: timeout"
        )

    def test_message_from_a_long_value_is_short(self) -> None:
        assert len(str(InvalidArgumentError(field="data", value="x" * 10_000))) < 100

    def test_other_code(self) -> None:
        exc = InvalidArgumentError(hresult=HResult.CO_E_THREADPOOL_CONFIG, field="thread_pool")
        assert exc.hresult is HResult.CO_E_THREADPOOL_CONFIG
        assert exc.field == "thread_pool"
        assert str(exc).startswith(HResult.CO_E_THREADPOOL_CONFIG.message.rstrip("."))


class TestPickle:
    @pytest.mark.parametrize("cls", ALL_CLASSES, ids=name_of)
    def test_default(self, cls: type[ActivityError]) -> None:
        exc = cls()
        clone = round_trip(exc)
        assert type(clone) is cls
        assert clone.message == exc.message
        assert clone.hresult is exc.hresult
        assert str(clone) == str(exc)
        assert clone.args == exc.args

    @pytest.mark.parametrize("cls", ALL_CLASSES, ids=name_of)
    def test_message_and_hresult(self, cls: type[ActivityError]) -> None:
        exc = cls("custom message", hresult=0x80041234)
        clone = round_trip(exc)
        assert type(clone) is cls
        assert clone.message == "custom message"
        assert clone.hresult == 0x80041234
        assert type(clone.hresult) is HResult

    @pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
    def test_every_protocol(self, protocol: int) -> None:
        exc = CallTimeoutError("late", hresult=HResult.CONTEXT_E_SYNCH_TIMEOUT)
        clone = pickle.loads(pickle.dumps(exc, protocol))
        assert type(clone) is CallTimeoutError
        assert (clone.message, clone.hresult) == ("late", HResult.CONTEXT_E_SYNCH_TIMEOUT)

    def test_invalid_argument_field_and_value(self) -> None:
        exc = InvalidArgumentError("bad", field="max_pending", value=[1, 2])
        clone = round_trip(exc)
        assert type(clone) is InvalidArgumentError
        assert (clone.message, clone.hresult) == ("bad", HResult.E_INVALIDARG)
        assert clone.field == "max_pending"
        assert clone.value == [1, 2]

    def test_invalid_argument_without_value(self) -> None:
        clone = round_trip(InvalidArgumentError(field="name"))
        assert clone.field == "name"
        assert not hasattr(clone, "value")
        assert str(clone) == "One or more arguments are invalid: name"

    def test_invalid_argument_none_value(self) -> None:
        clone = round_trip(InvalidArgumentError(field="name", value=None))
        assert hasattr(clone, "value")
        assert clone.value is None

    @pytest.mark.parametrize("cls", [UserError, UserErrorWithInit], ids=name_of)
    def test_user_subclass(self, cls: type[ActivityError]) -> None:
        exc = cls("user message", hresult=HResult.E_ABORT)
        clone = round_trip(exc)
        assert type(clone) is cls
        assert (clone.message, clone.hresult) == ("user message", HResult.E_ABORT)
        assert vars(clone) == vars(exc)

    def test_user_subclass_of_invalid_argument(self) -> None:
        clone = round_trip(UserInvalidArgumentError("x", field="f", value=3))
        assert type(clone) is UserInvalidArgumentError
        assert (clone.field, clone.value) == ("f", 3)

    def test_notes_and_attributes_survive(self) -> None:
        exc = ActivityFailedError("failed")
        exc.add_note("while ingesting")
        exc.__dict__["call_name"] = "fetch"
        clone = round_trip(exc)
        assert clone.__notes__ == ["while ingesting"]
        assert clone.call_name == "fetch"

    def test_user_attribute_named_like_invalid_argument_ones_survives(self) -> None:
        exc = UserError("x")
        exc.__dict__["field"] = "kept"
        assert round_trip(exc).field == "kept"

    def test_later_changes_to_message_survive(self) -> None:
        exc = ActivityError("first")
        exc.message = "second"
        assert round_trip(exc).message == "second"

    def test_copy(self) -> None:
        exc = InvalidArgumentError("bad", field="f", value=1)
        clone = copy.copy(exc)
        assert type(clone) is InvalidArgumentError
        assert (clone.message, clone.hresult, clone.field, clone.value) == (
            "bad",
            HResult.E_INVALIDARG,
            "f",
            1,
        )


class TestErrorFromHResult:
    def test_table_covers_every_failing_member(self) -> None:
        assert set(CLASS_OF_CODE) == {member for member in HResult if member.failed}

    @pytest.mark.parametrize(
        ("hresult", "cls"), CLASS_OF_CODE.items(), ids=[m.name for m in CLASS_OF_CODE]
    )
    def test_known_code(self, hresult: HResult, cls: type[ActivityError]) -> None:
        exc = error_from_hresult(hresult)
        assert type(exc) is cls
        assert isinstance(exc, ActivityError)
        assert exc.hresult is hresult
        assert str(exc) == hresult.message

    @pytest.mark.parametrize(("cls", "hresult", "bases"), SUBCLASSES, ids=SUBCLASS_IDS)
    def test_signed_code(
        self,
        cls: type[ActivityError],
        hresult: HResult,
        bases: tuple[type[BaseException], ...],
    ) -> None:
        exc = error_from_hresult(int(hresult) - 2**32)
        assert type(exc) is cls

    def test_message(self) -> None:
        exc = error_from_hresult(HResult.E_INVALIDARG, "limit must be positive")
        assert isinstance(exc, InvalidArgumentError)
        assert str(exc) == "limit must be positive"

    def test_unknown_failing_code(self) -> None:
        exc = error_from_hresult(0x80041234)
        assert type(exc) is ActivityError
        assert exc.hresult == 0x80041234
        assert exc.hresult.name == "HRESULT_0x80041234"
        assert str(exc) == exc.hresult.message

    @pytest.mark.parametrize("code", [0, 1, HResult.S_OK, HResult.S_FALSE, 0x7FFFFFFF])
    def test_success_refused(self, code: int) -> None:
        with pytest.raises(InvalidArgumentError, match="failing HRESULT") as info:
            error_from_hresult(code)
        assert info.value.field == "code"
        assert info.value.value == code

    @pytest.mark.parametrize("code", [2**32, -(2**31) - 1])
    def test_out_of_range_refused(self, code: int) -> None:
        with pytest.raises(InvalidArgumentError, match="32-bit") as info:
            error_from_hresult(code)
        assert info.value.field == "code"

    def test_not_an_int_refused(self) -> None:
        with pytest.raises(InvalidArgumentError, match="int HRESULT"):
            error_from_hresult(cast("Any", "E_FAIL"))

    def test_module(self) -> None:
        assert error_from_hresult.__module__ == "activity"

    @given(failing_codes)
    def test_round_trip(self, code: int) -> None:
        exc = error_from_hresult(code)
        assert isinstance(exc, ActivityError)
        assert hresult_of(exc) == code

    @given(succeeding_codes)
    def test_every_success_refused(self, code: int) -> None:
        with pytest.raises(InvalidArgumentError):
            error_from_hresult(code)


class TestHResultOf:
    @pytest.mark.parametrize(
        ("exc", "hresult"),
        [
            (ValueError("v"), HResult.E_INVALIDARG),
            (TypeError("t"), HResult.E_INVALIDARG),
            (MemoryError(), HResult.E_OUTOFMEMORY),
            (NotImplementedError(), HResult.E_NOTIMPL),
            (PermissionError(), HResult.E_ACCESSDENIED),
            (TimeoutError(), HResult.E_TIMEOUT),
            (asyncio.CancelledError(), HResult.E_ABORT),
            (concurrent.futures.CancelledError(), HResult.E_ABORT),
            (RuntimeError(), HResult.E_FAIL),
            (KeyError("k"), HResult.E_FAIL),
            (OSError(), HResult.E_FAIL),
            (Exception(), HResult.E_FAIL),
            (KeyboardInterrupt(), HResult.E_FAIL),
        ],
        ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else "",
    )
    def test_builtin(self, exc: BaseException, hresult: HResult) -> None:
        assert hresult_of(exc) is hresult

    @pytest.mark.parametrize(
        ("exc", "hresult"),
        [
            (json.JSONDecodeError("bad", "{", 0), HResult.E_INVALIDARG),
            (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"), HResult.E_INVALIDARG),
            (FileNotFoundError(), HResult.E_FAIL),
            (RecursionError(), HResult.E_FAIL),
        ],
        ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else "",
    )
    def test_builtin_subclass(self, exc: BaseException, hresult: HResult) -> None:
        assert hresult_of(exc) is hresult

    def test_activity_error_gives_its_own(self) -> None:
        assert hresult_of(ActivityError(hresult=0x80041234)) == 0x80041234
        assert hresult_of(InvalidArgumentError(hresult=HResult.E_POINTER)) is HResult.E_POINTER
        # Its own code wins over the builtin it also is.
        assert hresult_of(CallTimeoutError()) is HResult.E_TIMEOUT
        assert hresult_of(ActivityClosedError()) is HResult.RPC_E_DISCONNECTED

    def test_trio_cancelled_by_name(self) -> None:
        fake = type("Cancelled", (BaseException,), {"__module__": "trio"})
        assert hresult_of(fake()) is HResult.E_ABORT
        private = type("Cancelled", (BaseException,), {"__module__": "trio._core._exceptions"})
        assert hresult_of(private()) is HResult.E_ABORT

    def test_other_cancelled_is_not_trio(self) -> None:
        lookalike = type("Cancelled", (BaseException,), {"__module__": "triomphe"})
        assert hresult_of(lookalike()) is HResult.E_FAIL
        other = type("Cancelled", (Exception,), {"__module__": "mylib"})
        assert hresult_of(other()) is HResult.E_FAIL

    def test_real_trio_cancelled(self) -> None:
        trio = pytest.importorskip("trio")
        caught: list[BaseException] = []

        async def main() -> None:
            with trio.CancelScope() as scope:
                scope.cancel()
                try:
                    await trio.sleep(1)
                except trio.Cancelled as exc:
                    caught.append(exc)
                    raise

        trio.run(main)
        assert len(caught) == 1
        assert hresult_of(caught[0]) is HResult.E_ABORT

    def test_group_whose_leaves_agree(self) -> None:
        group = ExceptionGroup("g", [ValueError(), TypeError(), InvalidArgumentError()])
        assert hresult_of(group) is HResult.E_INVALIDARG

    def test_group_whose_leaves_disagree(self) -> None:
        group = ExceptionGroup("g", [ValueError(), MemoryError()])
        assert hresult_of(group) is HResult.E_FAIL

    def test_single_leaf(self) -> None:
        assert hresult_of(ExceptionGroup("g", [TimeoutError()])) is HResult.E_TIMEOUT

    def test_nested_groups(self) -> None:
        agree = ExceptionGroup(
            "outer", [ValueError(), ExceptionGroup("inner", [TypeError(), ValueError()])]
        )
        assert hresult_of(agree) is HResult.E_INVALIDARG
        disagree = ExceptionGroup(
            "outer", [ValueError(), ExceptionGroup("inner", [TypeError(), KeyError()])]
        )
        assert hresult_of(disagree) is HResult.E_FAIL

    def test_base_exception_group_of_cancellations(self) -> None:
        group = BaseExceptionGroup("g", [asyncio.CancelledError(), asyncio.CancelledError()])
        assert hresult_of(group) is HResult.E_ABORT

    def test_group_of_unknown_codes(self) -> None:
        group = ExceptionGroup("g", [ActivityError(hresult=0x80041234)] * 2)
        assert hresult_of(group) == 0x80041234

    def test_not_an_exception_refused(self) -> None:
        with pytest.raises(InvalidArgumentError) as info:
            hresult_of(cast("Any", "E_FAIL"))
        assert info.value.field == "exc"

    def test_module(self) -> None:
        assert hresult_of.__module__ == "activity"

    @given(failing_codes)
    def test_always_failing(self, code: int) -> None:
        assert hresult_of(ActivityError(hresult=code)).failed


class TestRegistration:
    def test_register_plain_exception(
        self, register: Callable[[int, type[BaseException]], None]
    ) -> None:
        register(USER_CODE, PlainUserError)
        exc = error_from_hresult(USER_CODE, "from the peer")
        assert type(exc) is PlainUserError
        assert str(exc) == "from the peer"
        assert hresult_of(PlainUserError()) == USER_CODE

    def test_register_plain_exception_default_message(
        self, register: Callable[[int, type[BaseException]], None]
    ) -> None:
        register(USER_CODE, PlainUserError)
        exc = error_from_hresult(USER_CODE)
        assert str(exc) == HResult(USER_CODE).message

    def test_register_activity_error_subclass(
        self, register: Callable[[int, type[BaseException]], None]
    ) -> None:
        register(OTHER_USER_CODE, UserError)
        exc = error_from_hresult(OTHER_USER_CODE, "made with the code")
        assert type(exc) is UserError
        assert exc.hresult == OTHER_USER_CODE  # the registered code, not the class default
        assert str(exc) == "made with the code"

    def test_registered_subclass_of_builtin_wins(
        self, register: Callable[[int, type[BaseException]], None]
    ) -> None:
        assert hresult_of(UserValueError()) is HResult.E_INVALIDARG
        register(USER_CODE, UserValueError)
        assert hresult_of(UserValueError()) == USER_CODE
        assert hresult_of(ValueError()) is HResult.E_INVALIDARG  # the base is untouched

    def test_subclass_of_registered_class(
        self, register: Callable[[int, type[BaseException]], None]
    ) -> None:
        class Child(UserValueError):
            pass

        register(USER_CODE, UserValueError)
        assert hresult_of(Child()) == USER_CODE

    def test_most_specific_registration_wins(
        self, register: Callable[[int, type[BaseException]], None]
    ) -> None:
        class Child(UserValueError):
            pass

        register(USER_CODE, UserValueError)
        register(OTHER_USER_CODE, Child)
        assert hresult_of(Child()) == OTHER_USER_CODE
        assert hresult_of(UserValueError()) == USER_CODE

    def test_registering_a_builtin_overrides_the_default(
        self, register: Callable[[int, type[BaseException]], None]
    ) -> None:
        register(USER_CODE, KeyError)
        assert hresult_of(KeyError("k")) == USER_CODE
        assert type(error_from_hresult(USER_CODE)) is KeyError

    def test_registering_a_table_code_overrides_its_class(
        self, register: Callable[[int, type[BaseException]], None]
    ) -> None:
        register(HResult.E_INVALIDARG, UserValueError)
        assert type(error_from_hresult(HResult.E_INVALIDARG)) is UserValueError
        unregister_hresult(HResult.E_INVALIDARG)
        assert type(error_from_hresult(HResult.E_INVALIDARG)) is InvalidArgumentError

    def test_group_of_registered(
        self, register: Callable[[int, type[BaseException]], None]
    ) -> None:
        register(USER_CODE, PlainUserError)
        assert hresult_of(ExceptionGroup("g", [PlainUserError(), PlainUserError()])) == USER_CODE

    def test_reregistering_a_code_replaces_the_pair(
        self, register: Callable[[int, type[BaseException]], None]
    ) -> None:
        register(USER_CODE, PlainUserError)
        register(USER_CODE, UserValueError)
        assert type(error_from_hresult(USER_CODE)) is UserValueError
        assert hresult_of(UserValueError()) == USER_CODE
        assert hresult_of(PlainUserError()) is HResult.E_FAIL  # its pair is gone

    def test_reregistering_a_class_replaces_the_pair(
        self, register: Callable[[int, type[BaseException]], None]
    ) -> None:
        register(USER_CODE, PlainUserError)
        register(OTHER_USER_CODE, PlainUserError)
        assert hresult_of(PlainUserError()) == OTHER_USER_CODE
        assert type(error_from_hresult(OTHER_USER_CODE)) is PlainUserError
        assert type(error_from_hresult(USER_CODE)) is ActivityError  # its pair is gone

    def test_signed_code(self, register: Callable[[int, type[BaseException]], None]) -> None:
        register(USER_CODE - 2**32, PlainUserError)
        assert hresult_of(PlainUserError()) == USER_CODE
        assert type(error_from_hresult(USER_CODE)) is PlainUserError

    def test_unregister(self) -> None:
        register_hresult(USER_CODE, PlainUserError)
        assert unregister_hresult(USER_CODE) is PlainUserError
        assert hresult_of(PlainUserError()) is HResult.E_FAIL
        assert type(error_from_hresult(USER_CODE)) is ActivityError

    def test_unregister_signed(self) -> None:
        register_hresult(USER_CODE, PlainUserError)
        assert unregister_hresult(USER_CODE - 2**32) is PlainUserError

    def test_unregister_unknown_code_does_nothing(self) -> None:
        assert unregister_hresult(USER_CODE) is None
        assert unregister_hresult(HResult.S_OK) is None

    def test_unregister_bad_code(self) -> None:
        with pytest.raises(InvalidArgumentError) as info:
            unregister_hresult(2**32)
        assert info.value.field == "code"

    @pytest.mark.parametrize("code", [0, 1, HResult.S_FALSE, 0x7FFFFFFF])
    def test_success_code_refused(self, code: int) -> None:
        with pytest.raises(InvalidArgumentError, match="failing HRESULT") as info:
            register_hresult(code, PlainUserError)
        assert info.value.field == "code"

    def test_out_of_range_code_refused(self) -> None:
        with pytest.raises(InvalidArgumentError) as info:
            register_hresult(2**32, PlainUserError)
        assert info.value.field == "code"

    @pytest.mark.parametrize("exc_type", [int, object, "ValueError", ValueError(), None], ids=repr)
    def test_non_exception_type_refused(self, exc_type: object) -> None:
        with pytest.raises(InvalidArgumentError, match="exc_type") as info:
            register_hresult(USER_CODE, cast("Any", exc_type))
        assert info.value.field == "exc_type"
        assert info.value.value is exc_type
        assert unregister_hresult(USER_CODE) is None  # nothing half-done

    @pytest.mark.parametrize("function", [register_hresult, unregister_hresult])
    def test_module(self, function: Callable[..., object]) -> None:
        assert function.__module__ == "activity"


@pytest.mark.parametrize(
    ("module", "name"),
    [(module, name) for module in (activity._errors, activity._hresult) for name in module.__all__],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_module_attribute_matches_reexport(module: object, name: str) -> None:
    """An object claims ``__module__ = "activity"`` exactly when ``activity`` exports it.

    Pickle finds a class or function by its ``__module__``, so a claim without the
    export breaks pickling, and an export without the claim shows the private module.
    """
    obj = getattr(module, name)
    exported = getattr(activity, name, None) is obj
    assert exported == (obj.__module__ == "activity")
