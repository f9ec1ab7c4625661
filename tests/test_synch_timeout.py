"""Bounded domain waits: ``synchronization_timeout`` limits a chain's wait for its turn.

A call chain that waits longer than its activity's ``synchronization_timeout`` to
enter a synchronization domain fails with ``CallTimeoutError`` carrying
``CONTEXT_E_SYNCH_TIMEOUT``: the call is counted as failed, its body never runs,
and its place in the domain's line is given up, so the next waiter gets its turn.
Each test holds the domain with an event until the wait has timed out: what is
asserted is the outcome and the counters, never how long anything took.
"""

# Names bound inside `with pytest.raises(...)` blocks are read after them.
# pyright: reportPossiblyUnboundVariable=false

from __future__ import annotations

import gc
import inspect

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest

from activity import (
    Activity,
    ActivityConfig,
    Call,
    CallStatus,
    CallTimeoutError,
    HResult,
    Inheritance,
    InvalidArgumentError,
    Synchronization,
    WouldDeadlockError,
    error_from_hresult,
    hresult_of,
    service_domain,
)
from activity.pytest_plugin import assert_balanced

pytestmark = pytest.mark.anyio

NEW = Synchronization.NEW
INHERIT = Inheritance.INHERIT
#: Short enough for a test to wait out, without asserting anything about time.
SHORT = 0.05
#: Long enough never to run out while a test runs.
LONG = 600.0


async def settle() -> None:
    """Let every task that can run take its steps (no time passes)."""
    for _ in range(10):
        await anyio.lowlevel.checkpoint()


def is_synch_timeout(error: BaseException | None) -> bool:
    """Whether ``error`` is the failure of a chain that waited too long for a domain."""
    return (
        type(error) is CallTimeoutError
        and error.hresult is HResult.CONTEXT_E_SYNCH_TIMEOUT
        and hresult_of(error) is HResult.CONTEXT_E_SYNCH_TIMEOUT
    )


async def hold(act: Activity, release: anyio.Event) -> Call[None]:
    """Start a call that holds ``act``'s domain until ``release`` is set."""

    async def holder() -> None:
        await release.wait()

    call = await act.asynchronous_call(holder, name="holder")
    await settle()
    domain = act.synchronization_domain
    assert domain is not None
    assert domain.owner is call
    return call


def assert_free(act: Activity) -> None:
    """The domain is neither held nor waited for: nothing was leaked."""
    domain = act.synchronization_domain
    assert domain is not None
    assert domain.owner is None
    assert "free" in repr(domain)


class TestTheSetting:
    def test_defaults_to_no_limit(self) -> None:
        assert ActivityConfig().synchronization_timeout is None

    @pytest.mark.parametrize("value", [0, 0.5, 3, 2.5e3])
    def test_takes_seconds(self, value: float) -> None:
        assert ActivityConfig(synchronization_timeout=value).synchronization_timeout == value

    @pytest.mark.parametrize("value", [-1, -0.001, "1", b"1", True, [1]])
    def test_a_bad_value_names_the_field(self, value: object) -> None:
        with pytest.raises(InvalidArgumentError) as info:
            Activity(synchronization_timeout=value)
        assert info.value.field == "synchronization_timeout"
        assert info.value.value == value

    def test_read_from_json(self) -> None:
        config = ActivityConfig.model_validate_json('{"synchronization_timeout": 1.5}')
        assert config.synchronization_timeout == 1.5

    def test_the_code_maps_to_call_timeout_error(self) -> None:
        error = error_from_hresult(HResult.CONTEXT_E_SYNCH_TIMEOUT)
        assert type(error) is CallTimeoutError
        assert is_synch_timeout(error)


async def coroutine_function_body(ran: list[str]) -> str:
    ran.append("body")
    return "ran"


def plain_function_body(ran: list[str]) -> str:
    ran.append("body")
    return "ran"


class TestAsynchronousCalls:
    @pytest.mark.parametrize("kind", ["coroutine function", "coroutine", "plain function"])
    async def test_a_call_that_waits_too_long_fails_and_never_runs(self, kind: str) -> None:
        ran: list[str] = []
        release = anyio.Event()
        async with Activity(
            name="ledger", synchronization=NEW, synchronization_timeout=SHORT
        ) as act:
            holder = await hold(act, release)
            if kind == "coroutine function":
                call: Call[str] = await act.asynchronous_call(coroutine_function_body, ran)
            elif kind == "coroutine":
                coro = coroutine_function_body(ran)
                call = await act.asynchronous_call(coro)
            else:
                call = await act.asynchronous_call(plain_function_body, ran)
            with pytest.raises(CallTimeoutError) as info:
                await call
            assert call.status is CallStatus.FAILED
            assert not holder.done()  # the holder kept the domain all along
            release.set()
            await holder
        assert is_synch_timeout(info.value)
        message = str(info.value)
        assert "'ledger'" in message
        assert "synchronization_timeout" in message
        assert "'holder'" in message  # who held the domain
        assert ran == []
        if kind == "coroutine":
            # Closed: it never ran, and Python has no unawaited coroutine to warn about.
            assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
        gc.collect()
        stats = act.statistics()
        assert_balanced(stats)
        assert (stats.completed, stats.failed, stats.cancelled) == (1, 1, 0)
        assert_free(act)

    async def test_a_coroutine_cancelled_in_line_is_closed(self) -> None:
        # Not a timeout, but the same way out of the line: the body never runs, and
        # the coroutine object is closed rather than left for Python to warn about.
        ran: list[str] = []
        release = anyio.Event()
        async with Activity(synchronization=NEW, synchronization_timeout=LONG) as act:
            holder = await hold(act, release)
            coro = coroutine_function_body(ran)
            call = await act.asynchronous_call(coro)
            await settle()
            assert call.cancel("no longer needed")
            await call.wait()
            release.set()
            await holder
        assert call.status is CallStatus.CANCELLED
        assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
        assert ran == []
        gc.collect()
        stats = act.statistics()
        assert_balanced(stats)
        assert (stats.completed, stats.failed, stats.cancelled) == (1, 0, 1)
        assert_free(act)

    async def test_the_next_waiter_gets_its_turn(self) -> None:
        # The child's call waits with a short limit of its own, the parent's call
        # behind it with none: once the first has timed out and the holder leaves,
        # the domain goes to the second.
        ran: list[str] = []
        release = anyio.Event()

        async def body(label: str) -> str:
            ran.append(label)
            return label

        async with Activity(name="parent", synchronization=NEW) as parent:
            holder = await hold(parent, release)
            async with Activity(
                name="child", inheritance=INHERIT, synchronization_timeout=SHORT
            ) as child:
                assert child.synchronization_domain is parent.synchronization_domain
                first = await child.asynchronous_call(body, "first")
                second = await parent.asynchronous_call(body, "second")
                with pytest.raises(CallTimeoutError) as info:
                    await first
                assert not second.done()
                release.set()
                assert await second == "second"
                await holder
                # A later call finds the domain free, and runs at once.
                assert await child.synchronous_call(body, "third") == "third"
        assert is_synch_timeout(info.value)
        assert ran == ["second", "third"]
        child_stats = child.statistics()
        assert_balanced(child_stats)
        assert (child_stats.completed, child_stats.failed) == (1, 1)
        parent_stats = parent.statistics()
        assert_balanced(parent_stats)
        assert (parent_stats.completed, parent_stats.failed) == (2, 0)
        assert_free(parent)

    async def test_a_timed_out_waiter_in_the_middle_of_the_line(self) -> None:
        # Three waiters: the middle one's limit runs out; the others keep their order.
        order: list[str] = []
        release = anyio.Event()

        async def body(label: str) -> None:
            order.append(label)

        async with Activity(synchronization=NEW) as parent:
            holder = await hold(parent, release)
            async with Activity(inheritance=INHERIT, synchronization_timeout=SHORT) as child:
                first = await parent.asynchronous_call(body, "first")
                middle = await child.asynchronous_call(body, "middle")
                last = await parent.asynchronous_call(body, "last")
                with pytest.raises(CallTimeoutError):
                    await middle
                release.set()
                await first
                await last
                await holder
        assert order == ["first", "last"]
        assert_balanced(child.statistics())
        assert_balanced(parent.statistics())
        assert_free(parent)

    async def test_a_free_domain_is_entered_even_with_no_time_to_wait(self) -> None:
        async def body() -> str:
            return "ran"

        async with Activity(synchronization=NEW, synchronization_timeout=0) as act:
            assert await act.synchronous_call(body) == "ran"
            call = await act.asynchronous_call(body)
            assert await call == "ran"
        stats = act.statistics()
        assert (stats.completed, stats.failed) == (2, 0)

    async def test_reentry_does_not_wait(self) -> None:
        # The holder's own synchronous calls re-enter the domain it holds: no wait, so
        # even no time to wait at all is enough.
        async def inner() -> str:
            return "inner"

        async with Activity(synchronization=NEW, synchronization_timeout=0) as act:

            async def outer() -> str:
                await anyio.lowlevel.checkpoint()
                return await act.synchronous_call(inner) + " in outer"

            assert await act.synchronous_call(outer) == "inner in outer"
        assert act.statistics().completed == 2

    async def test_an_unobserved_failure_is_raised_at_the_exit(self) -> None:
        release = anyio.Event()

        async def body() -> None:
            await anyio.lowlevel.checkpoint()

        with pytest.raises(ExceptionGroup) as info:
            async with Activity(synchronization=NEW, synchronization_timeout=SHORT) as act:
                holder = await hold(act, release)
                call = await act.asynchronous_call(body)
                await call.wait()  # never raises: the failure stays unobserved
                release.set()
                await holder
        (error,) = info.value.exceptions
        assert is_synch_timeout(error)
        assert call.status is CallStatus.FAILED
        assert_balanced(act.statistics())


class TestSynchronousCalls:
    async def test_a_synchronous_call_that_waits_too_long(self) -> None:
        ran: list[str] = []
        release = anyio.Event()
        async with Activity(synchronization=NEW, synchronization_timeout=SHORT) as act:
            holder = await hold(act, release)
            with pytest.raises(CallTimeoutError) as info:
                await act.synchronous_call(coroutine_function_body, ran)
            with pytest.raises(CallTimeoutError) as blocking_info:
                await act.synchronous_call(plain_function_body, ran)
            release.set()
            await holder
            assert await act.synchronous_call(coroutine_function_body, ran) == "ran"
        assert is_synch_timeout(info.value)
        assert is_synch_timeout(blocking_info.value)
        assert ran == ["body"]  # only the call made once the domain was free
        stats = act.statistics()
        assert_balanced(stats)
        assert (stats.completed, stats.failed, stats.cancelled) == (2, 2, 0)
        assert_free(act)

    async def test_a_synchronous_call_queued_for_a_place_then_for_the_domain(self) -> None:
        # The child's only place is taken by a call that waits for the domain; the
        # synchronous call waits for that place, gets it when the first call times
        # out, then waits for the domain in turn and times out too.
        ran: list[str] = []
        release = anyio.Event()
        errors: list[BaseException] = []
        async with (
            Activity(synchronization=NEW) as parent,
            Activity(
                inheritance=INHERIT,
                max_concurrency=1,
                synchronization_timeout=SHORT,
                parent=parent,
            ) as child,
        ):
            holder = await hold(parent, release)
            assert child.synchronization_domain is parent.synchronization_domain
            occupying = await child.asynchronous_call(coroutine_function_body, ran)

            async def synchronous() -> None:
                try:
                    await child.synchronous_call(coroutine_function_body, ran)
                except CallTimeoutError as exc:
                    errors.append(exc)

            async with anyio.create_task_group() as group:
                group.start_soon(synchronous)
                await settle()
                assert child.statistics().pending == 1  # it waits for a place first
            with pytest.raises(CallTimeoutError) as info:
                await occupying
            release.set()
            await holder
        assert is_synch_timeout(info.value)
        (error,) = errors
        assert is_synch_timeout(error)
        assert ran == []
        stats = child.statistics()
        assert_balanced(stats)
        assert (stats.completed, stats.failed, stats.cancelled) == (0, 2, 0)

    async def test_synchronous_call_from_a_thread_that_waits_too_long(self) -> None:
        ran: list[str] = []
        release = anyio.Event()
        async with Activity(synchronization=NEW, synchronization_timeout=SHORT) as act:
            holder = await hold(act, release)

            def from_thread() -> BaseException | None:
                try:
                    act.synchronous_call_from_thread(coroutine_function_body, ran)
                except CallTimeoutError as exc:
                    return exc
                return None

            error = await anyio.to_thread.run_sync(from_thread)
            release.set()
            await holder
        assert error is not None
        assert is_synch_timeout(error)
        assert ran == []
        stats = act.statistics()
        assert_balanced(stats)
        assert (stats.completed, stats.failed) == (1, 1)


class TestServiceDomains:
    async def test_a_block_that_waits_too_long_to_join_a_held_domain(self) -> None:
        entered: list[str] = []
        release = anyio.Event()
        async with Activity(name="outer", synchronization=NEW) as outer:
            holder = await hold(outer, release)
            with pytest.raises(CallTimeoutError) as info:
                async with service_domain(inheritance=INHERIT, synchronization_timeout=SHORT):
                    entered.append("block")
            release.set()
            await holder
            # Once the domain is free, the same block enters at once.
            async with service_domain(inheritance=INHERIT, synchronization_timeout=0) as block:
                assert block.synchronization_domain is outer.synchronization_domain
                entered.append("block")
        assert is_synch_timeout(info.value)
        assert "'outer'" in str(info.value)
        assert entered == ["block"]
        assert_free(outer)


class TestWhichLimit:
    async def test_a_child_without_a_limit_takes_the_domain_makers(self) -> None:
        ran: list[str] = []
        release = anyio.Event()
        async with Activity(
            name="maker", synchronization=NEW, synchronization_timeout=SHORT
        ) as maker:
            holder = await hold(maker, release)
            async with (
                Activity(inheritance=INHERIT) as child,
                Activity(inheritance=INHERIT) as grandchild,
            ):
                assert grandchild.synchronization_domain is maker.synchronization_domain
                assert grandchild.parent is child
                with pytest.raises(CallTimeoutError) as info:
                    await grandchild.synchronous_call(coroutine_function_body, ran)
            release.set()
            await holder
        assert is_synch_timeout(info.value)
        assert ran == []

    async def test_a_childs_own_limit_wins_over_the_makers(self) -> None:
        # The child's call, first in line, waits up to its own long limit; the
        # maker's call behind it times out with the maker's short one.
        ran: list[str] = []
        release = anyio.Event()

        async def body(label: str) -> str:
            ran.append(label)
            return label

        async with Activity(synchronization=NEW, synchronization_timeout=SHORT) as maker:
            holder = await hold(maker, release)
            async with Activity(inheritance=INHERIT, synchronization_timeout=LONG) as child:
                patient = await child.asynchronous_call(body, "patient")
                hasty = await maker.asynchronous_call(body, "hasty")
                with pytest.raises(CallTimeoutError):
                    await hasty
                assert not patient.done()  # still in line
                release.set()
                assert await patient == "patient"
                await holder
        assert ran == ["patient"]

    async def test_a_child_with_a_domain_of_its_own_keeps_its_own_rule(self) -> None:
        # NEW in an activity with a limit: the child makes the domain, and its None
        # means no limit, whatever its parent says.
        release = anyio.Event()

        async def body() -> str:
            return "ran"

        async with (
            Activity(synchronization=NEW, synchronization_timeout=0) as parent,
            Activity(inheritance=INHERIT, synchronization=NEW) as child,
        ):
            assert child.synchronization_domain is not parent.synchronization_domain
            holder = await hold(child, release)
            waiting = await child.asynchronous_call(body)
            await settle()
            assert not waiting.done()
            release.set()
            assert await waiting == "ran"
            await holder


class TestNextToDeadlockDetection:
    async def test_a_refused_await_and_a_timed_out_domain_wait(self) -> None:
        # The holder awaits the call it queued in its own domain: refused at once. The
        # queued call, left in line, then waits out its limit and fails, never run.
        from activity import _context  # pyright: ignore[reportPrivateUsage]

        ran: list[str] = []
        async with Activity(
            name="ledger", synchronization=NEW, synchronization_timeout=SHORT
        ) as act:

            async def outer() -> tuple[Call[str], str]:
                queued = await act.asynchronous_call(coroutine_function_body, ran)
                with pytest.raises(WouldDeadlockError) as refused:
                    await queued
                assert not queued.done()  # left as it was
                gave_up = anyio.Event()
                queued.add_done_callback(lambda _: gave_up.set())
                await gave_up.wait()  # the holder keeps the domain until then
                return queued, str(refused.value)

            queued, refusal = await act.synchronous_call(outer)
            with pytest.raises(CallTimeoutError) as info:
                await queued
        assert "this call chain" in refusal
        assert is_synch_timeout(info.value)
        assert ran == []
        stats = act.statistics()
        assert_balanced(stats)
        assert (stats.completed, stats.failed, stats.cancelled) == (1, 1, 0)
        assert_free(act)
        assert _context._waits == {}  # pyright: ignore[reportPrivateUsage]

    async def test_a_wait_that_would_deadlock_is_refused_not_timed_out(self) -> None:
        # A's call awaits B's call; B's call then asks for A's domain. Even with a
        # limit on A's domain, the wait is refused at once as a deadlock.
        async with (
            Activity(name="A", synchronization=NEW, synchronization_timeout=LONG) as a,
            Activity(name="B", synchronization=NEW) as b,
        ):

            async def a_inner() -> str:
                return "a-inner"

            async def b_work() -> str:
                try:
                    return await a.synchronous_call(a_inner)
                except WouldDeadlockError:
                    return "told"

            async def a_outer() -> str:
                return await (await b.asynchronous_call(b_work))

            assert await a.synchronous_call(a_outer) == "told"
        stats = a.statistics()
        assert_balanced(stats)
        assert (stats.completed, stats.failed) == (1, 1)

    async def test_the_waits_of_timed_out_chains_are_not_left_recorded(self) -> None:
        from activity import _context  # pyright: ignore[reportPrivateUsage]

        release = anyio.Event()
        async with Activity(synchronization=NEW, synchronization_timeout=SHORT) as act:
            holder = await hold(act, release)
            calls = [await act.asynchronous_call(anyio.lowlevel.checkpoint) for _ in range(5)]
            for call in calls:
                with pytest.raises(CallTimeoutError):
                    await call
            release.set()
            await holder
        assert _context._waits == {}  # pyright: ignore[reportPrivateUsage]
        stats = act.statistics()
        assert_balanced(stats)
        assert (stats.completed, stats.failed) == (1, 5)
        assert_free(act)
