from __future__ import annotations

import pytest

from activity import Activity, ActivityError, ActivityLocal, InvalidArgumentError, current_activity

pytestmark = pytest.mark.anyio


class TestActivityLocal:
    async def test_outside_any_activity(self) -> None:
        with_default = ActivityLocal[int]("n", default=1)
        without = ActivityLocal[int]("m")
        assert current_activity() is None
        assert with_default.get() == 1
        assert without.get(5) == 5
        with pytest.raises(LookupError, match="outside any activity"):
            without.get()
        with pytest.raises(ActivityError, match="inside an activity"):
            with_default.set(2)

    async def test_set_and_get_in_an_activity(self) -> None:
        local = ActivityLocal[str]("v")
        async with Activity():
            with pytest.raises(LookupError, match="in this activity"):
                local.get()
            local.set("x")
            assert local.get() == "x"
            local.set("y")
            assert local.get() == "y"
        with pytest.raises(LookupError):
            local.get()

    async def test_each_activity_has_its_own_value(self) -> None:
        local = ActivityLocal[str]("v", default="none")
        async with Activity() as first:
            local.set("first")
            async with Activity() as second:
                assert second.parent is first
                assert local.get() == "none"
                local.set("second")
                assert local.get() == "second"
            assert local.get() == "first"

    def test_name_and_repr(self) -> None:
        local = ActivityLocal[int]("counter")
        assert local.name == "counter"
        assert repr(local) == "<ActivityLocal 'counter'>"
        with pytest.raises(InvalidArgumentError):
            ActivityLocal[int]("")
