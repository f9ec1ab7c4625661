from __future__ import annotations

import json
from typing import Any

import pytest

from activity import ActivityConfig, FailurePolicy, HResult, InvalidArgumentError, Overflow


class TestActivityConfig:
    def test_defaults(self) -> None:
        config = ActivityConfig()
        assert config.max_concurrency == 100
        assert config.max_pending == 1000
        assert config.overflow is Overflow.REJECT
        assert config.failure_policy is FailurePolicy.ISOLATE
        assert config.error_handler is None

    def test_frozen(self) -> None:
        config = ActivityConfig()
        with pytest.raises(Exception, match="frozen"):
            config.max_concurrency = 3  # pyright: ignore[reportAttributeAccessIssue]

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("max_concurrency", 0),
            ("max_concurrency", -1),
            ("max_concurrency", "many"),
            ("max_pending", -1),
            ("thread_limit", 0),
            ("timeout", 0),
            ("timeout", -0.5),
            ("shutdown_timeout", -1),
            ("admission_timeout", -1),
            ("overflow", "explode"),
            ("failure_policy", "maybe"),
            ("name", ""),
            ("error_handler", 42),
        ],
    )
    def test_bad_value_names_field_and_value(self, field: str, value: Any) -> None:
        with pytest.raises(InvalidArgumentError) as info:
            ActivityConfig(**{field: value})
        error = info.value
        assert isinstance(error, ValueError)
        assert error.hresult is HResult.E_INVALIDARG
        assert error.field == field
        assert error.value == value
        assert field in str(error)
        assert repr(value) in str(error)

    def test_unknown_field(self) -> None:
        with pytest.raises(InvalidArgumentError, match="no field 'max_concurency'") as info:
            ActivityConfig(max_concurency=2)
        assert info.value.field == "max_concurency"

    def test_from_mapping_and_json(self) -> None:
        config = ActivityConfig.model_validate(
            {"name": "ingest", "max_concurrency": 8, "overflow": "wait", "admission_timeout": 2}
        )
        assert config.overflow is Overflow.WAIT
        assert config.admission_timeout == 2.0
        text = json.dumps({"name": "ingest", "failure_policy": "fail_fast"})
        from_json = ActivityConfig.model_validate_json(text)
        assert from_json.failure_policy is FailurePolicy.FAIL_FAST
        round_trip = ActivityConfig.model_validate_json(config.model_dump_json())
        assert round_trip == config

    def test_bad_json_and_mapping(self) -> None:
        with pytest.raises(InvalidArgumentError, match="max_pending"):
            ActivityConfig.model_validate_json('{"max_pending": -3}')
        with pytest.raises(InvalidArgumentError):
            ActivityConfig.model_validate_json("{not json")
        with pytest.raises(InvalidArgumentError, match="thread_limit"):
            ActivityConfig.model_validate({"thread_limit": 0})

    def test_with_options_validates_again(self) -> None:
        config = ActivityConfig(max_concurrency=4)
        assert config.with_options({}) is config
        assert config.with_options({"max_pending": 2}).max_pending == 2
        with pytest.raises(InvalidArgumentError, match="max_pending"):
            config.with_options({"max_pending": -2})

    def test_several_bad_fields_are_all_named(self) -> None:
        with pytest.raises(InvalidArgumentError, match="also invalid: thread_limit"):
            ActivityConfig(max_concurrency=0, thread_limit=0)

    def test_error_handler_accepts_callables(self) -> None:
        def handler(call: object, exc: BaseException) -> None:
            pass

        assert ActivityConfig(error_handler=handler).error_handler is handler


class TestStrictNumbers:
    """Counts and seconds take numbers only: no bool, str or bytes is quietly converted."""

    @pytest.mark.parametrize(
        "field",
        [
            "max_concurrency",
            "max_pending",
            "thread_limit",
            "timeout",
            "shutdown_timeout",
            "admission_timeout",
        ],
    )
    @pytest.mark.parametrize("value", [True, "3", b"4"], ids=["bool", "str", "bytes"])
    def test_refused(self, field: str, value: object) -> None:
        with pytest.raises(InvalidArgumentError) as info:
            ActivityConfig(**{field: value})
        assert info.value.field == field

    @pytest.mark.parametrize("field", ["timeout", "shutdown_timeout", "admission_timeout"])
    def test_seconds_take_an_int(self, field: str) -> None:
        assert getattr(ActivityConfig(**{field: 2}), field) == 2.0

    def test_json_numbers(self) -> None:
        config = ActivityConfig.model_validate_json('{"max_concurrency": 4, "timeout": 1}')
        assert (config.max_concurrency, config.timeout) == (4, 1.0)


class TestValidateNamesTheField:
    @pytest.mark.parametrize(
        "build",
        [
            lambda: ActivityConfig.model_validate({"max_concurrency": 0}),
            lambda: ActivityConfig.model_validate_json('{"max_concurrency": 0}'),
            lambda: ActivityConfig(max_concurrency=0),
        ],
        ids=["mapping", "json", "keywords"],
    )
    def test_field_and_message(self, build: Any) -> None:
        with pytest.raises(InvalidArgumentError) as info:
            build()
        assert info.value.field == "max_concurrency"
        message = str(info.value)
        assert message.count("ActivityConfig.") == 1
        assert "Value error" not in message
