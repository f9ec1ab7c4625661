"""Ways into an activity besides ``async with``: ``parent=``, ``open()``/``aclose()``,
``as_current()``, and ``LocalScope.CALL`` (a table of values per call)."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from activity import (
    Activity,
    ActivityClosedError,
    ActivityError,
    ActivityLocal,
    CallStatus,
    InvalidArgumentError,
    LocalScope,
    current_activity,
)

pytestmark = pytest.mark.anyio

LIMIT = 10

tenant = ActivityLocal[str]("tenant", default="none")


class TestParent:
    async def test_an_explicit_parent_is_the_parent_wherever_it_is_entered(self) -> None:
        async with Activity(name="app") as app:
            pass_through = Activity(name="other")
            async with pass_through, Activity(name="request", parent=app) as request:
                assert request.parent is app
                assert request in app.children
                assert request not in pass_through.children

    async def test_none_makes_a_root_inside_another_activity(self) -> None:
        async with Activity(name="outer") as outer, Activity(parent=None) as root:
            assert root.parent is None
            assert root not in outer.children
            assert current_activity() is root

    async def test_the_default_is_the_current_activity(self) -> None:
        async with Activity() as outer, Activity() as inner:
            assert inner.parent is outer

    async def test_a_child_with_an_explicit_parent_is_cancelled_with_it(self) -> None:
        async with Activity(name="app") as app, Activity(parent=app) as child:
            call = await child.asynchronous_call(anyio.sleep_forever)
            app.cancel("stop")
            with anyio.fail_after(LIMIT):
                await call.wait()
            assert call.status is CallStatus.CANCELLED

    def test_a_parent_that_is_not_an_activity_is_refused(self) -> None:
        with pytest.raises(InvalidArgumentError, match="parent must be an Activity") as info:
            Activity(parent="app")  # type: ignore[arg-type]
        assert info.value.field == "parent"


class TestOpenAndClose:
    async def test_open_takes_work_without_making_the_activity_current(self) -> None:
        act = await Activity(name="app").open()
        try:
            assert current_activity() is None

            async def where() -> Activity | None:
                return current_activity()

            assert await act.synchronous_call(where) is act
            call = await act.asynchronous_call(where)
            assert await call is act
        finally:
            await act.aclose()
        assert act.statistics().completed == 2
        with pytest.raises(ActivityClosedError):
            await act.asynchronous_call(where)

    async def test_aclose_drains_and_raises_what_nobody_observed(self) -> None:
        async def boom() -> None:
            raise ValueError("lost")

        act = await Activity().open()
        await act.asynchronous_call(boom)
        with pytest.raises(ExceptionGroup) as info:
            await act.aclose()
        assert [type(e) for e in info.value.exceptions] == [ValueError]

    async def test_open_and_aclose_in_different_tasks(self) -> None:
        act = Activity()
        async with anyio.create_task_group() as tg:
            tg.start_soon(act.open)
        assert act.statistics().accepted == 0
        assert await act.synchronous_call(lambda: 42) == 42
        async with anyio.create_task_group() as tg:
            tg.start_soon(act.aclose)
        with pytest.raises(ActivityClosedError):
            await act.synchronous_call(lambda: 42)

    async def test_aclose_twice_is_closing_once(self) -> None:
        act = await Activity().open()
        await act.aclose()
        await act.aclose()

    async def test_an_entered_activity_is_closed_by_its_block_only(self) -> None:
        async with Activity(name="block") as act:
            with pytest.raises(ActivityError, match="closes when its block ends"):
                await act.aclose()
            assert await act.synchronous_call(lambda: 1) == 1

    async def test_opening_twice_is_refused(self) -> None:
        act = await Activity(name="once").open()
        try:
            with pytest.raises(ActivityError, match="only once"):
                await act.open()
            with pytest.raises(ActivityError, match="only once"):
                async with act:
                    pass
        finally:
            await act.aclose()

    async def test_closing_what_was_never_opened_is_refused(self) -> None:
        with pytest.raises(ActivityError, match="never entered"):
            await Activity().aclose()


class TestAsCurrent:
    async def test_the_enclosed_code_runs_in_the_activity(self) -> None:
        act = await Activity(name="app").open()
        try:
            with act.as_current() as entered:
                assert entered is act
                assert current_activity() is act
                tenant.set("startup")
                async with Activity() as child:
                    assert child.parent is act
            assert current_activity() is None
            assert tenant.get() == "none"
            with act.as_current():
                assert tenant.get() == "startup"
        finally:
            await act.aclose()

    async def test_it_nests_and_restores(self) -> None:
        async with Activity(name="outer") as outer:
            inner = await Activity(name="inner", parent=None).open()
            try:
                with inner.as_current():
                    assert current_activity() is inner
                assert current_activity() is outer
            finally:
                await inner.aclose()

    async def test_a_closed_activity_cannot_be_made_current(self) -> None:
        act = await Activity().open()
        await act.aclose()
        with pytest.raises(ActivityClosedError), act.as_current():
            pass
        with pytest.raises(ActivityClosedError), Activity().as_current():
            pass


class TestCallScope:
    async def test_each_call_from_outside_has_values_of_its_own(self) -> None:
        async def job(name: str) -> tuple[str, str]:
            seen = tenant.get()
            tenant.set(name)  # stays with this call
            await anyio.lowlevel.checkpoint()
            return seen, tenant.get()

        async with Activity(name="app", local_scope=LocalScope.CALL) as app:
            tenant.set("startup")
            results: dict[str, tuple[str, str]] = {}

            async def request(name: str) -> None:
                async with Activity(name=name, parent=None):
                    tenant.set(name)
                    call = await app.asynchronous_call(job, f"{name}-job")
                    results[name] = await call

            async with anyio.create_task_group() as tg:
                for name in ("a", "b", "c"):
                    tg.start_soon(request, name)
            assert results == {n: (n, f"{n}-job") for n in ("a", "b", "c")}
            # The block's own value is untouched by the calls' writes.
            assert tenant.get() == "startup"

    async def test_values_set_at_startup_show_through_but_never_hide_the_submitters(
        self,
    ) -> None:
        region = ActivityLocal[str]("region", default="?")

        async def job() -> tuple[str, str]:
            return tenant.get(), region.get()

        async with Activity(local_scope=LocalScope.CALL) as app:
            tenant.set("startup")
            region.set("eu")
            async with Activity(parent=None):
                tenant.set("acme")
                assert await (await app.asynchronous_call(job)) == ("acme", "eu")
                assert await app.synchronous_call(job) == ("acme", "eu")

    async def test_a_nested_call_starts_with_a_copy_of_its_callers_values(self) -> None:
        async def inner() -> str:
            seen = tenant.get()
            tenant.set("inner-call")  # stays with the nested call
            return seen

        async def outer(act: Activity) -> str:
            tenant.set("outer-call")
            seen = await act.synchronous_call(inner)
            assert tenant.get() == "outer-call"
            return seen

        async with Activity(local_scope=LocalScope.CALL) as app, Activity(parent=None):
            tenant.set("request")
            assert await app.synchronous_call(outer, app) == "outer-call"

    async def test_an_activity_scoped_activity_shares_one_table(self) -> None:
        async def job(name: str) -> None:
            tenant.set(name)

        async with Activity() as act:
            await act.synchronous_call(job, "first")
            assert tenant.get() == "first"
