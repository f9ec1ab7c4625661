"""Deadlock detection: a chain that would wait for a domain it holds is told at once.

A call chain that holds a synchronization domain and waits (``await call``,
``call.wait()``, ``synchronous_call``, ``synchronous_call_from_thread``) for work
that needs that domain, directly or through other waiting chains, gets
``WouldDeadlockError`` instead of hanging; the awaited work is left alone and runs
once the domain is free. Chains that re-enter a domain they hold are unaffected.
"""

# Names bound inside `with pytest.raises(...)` blocks are read after them.
# pyright: reportPossiblyUnboundVariable=false

from __future__ import annotations

import contextlib
import pickle
import threading
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from activity import (
    Activity,
    ActivityError,
    Call,
    CallStatus,
    HResult,
    Inheritance,
    Synchronization,
    WouldDeadlockError,
    error_from_hresult,
    hresult_of,
    service_domain,
)
from activity.pytest_plugin import assert_balanced

pytestmark = pytest.mark.anyio

NEW = Synchronization.NEW


async def settle() -> None:
    """Let every task that can run take its steps (no time passes)."""
    for _ in range(10):
        await anyio.lowlevel.checkpoint()


class TestTheError:
    def test_is_an_activity_error_and_a_runtime_error_with_its_code(self) -> None:
        error = WouldDeadlockError()
        assert isinstance(error, ActivityError)
        assert isinstance(error, RuntimeError)
        assert error.hresult is HResult.CONTEXT_E_WOULD_DEADLOCK
        assert hresult_of(error) is HResult.CONTEXT_E_WOULD_DEADLOCK
        assert type(error_from_hresult(HResult.CONTEXT_E_WOULD_DEADLOCK)) is WouldDeadlockError

    def test_survives_pickling(self) -> None:
        error = WouldDeadlockError("cycle")
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is WouldDeadlockError
        assert str(copy) == "cycle"
        assert copy.hresult is HResult.CONTEXT_E_WOULD_DEADLOCK


class TestOneActivity:
    async def test_a_call_awaiting_a_call_it_queued_in_its_own_domain(self) -> None:
        # The example: inside synchronization=NEW, a call awaits a call it
        # submitted to the same activity, which waits for the domain the caller holds.
        async def inner() -> str:
            return "inner ran"

        async with Activity(name="ledger", synchronization=NEW) as act:

            async def outer() -> tuple[Call[str], CallStatus, str]:
                queued = await act.asynchronous_call(inner)
                with pytest.raises(WouldDeadlockError) as info:
                    await queued
                return queued, queued.status, str(info.value)

            queued, status_then, message = await act.synchronous_call(outer)
            assert status_then in (CallStatus.PENDING, CallStatus.RUNNING)  # left alone
            assert await queued == "inner ran"  # it ran once the domain was free
        assert "this call chain" in message
        assert "'ledger'" in message
        assert queued.status is CallStatus.COMPLETED
        stats = act.statistics()
        assert_balanced(stats)
        assert (stats.completed, stats.failed, stats.cancelled) == (2, 0, 0)

    async def test_call_wait_is_told_too(self) -> None:
        ran: list[str] = []

        async def inner() -> None:
            ran.append("inner")

        async with Activity(synchronization=NEW) as act:

            async def outer() -> bool:
                queued = await act.asynchronous_call(inner)
                try:
                    await queued.wait()
                except WouldDeadlockError:
                    return not queued.done() and ran == []
                return False

            call = await act.asynchronous_call(outer)
            assert await call is True
            await act.wait_idle()
        assert ran == ["inner"]
        assert_balanced(act.statistics())

    async def test_an_unhandled_error_fails_only_the_waiter(self) -> None:
        async def inner() -> int:
            return 7

        queued: list[Call[int]] = []
        async with Activity(synchronization=NEW) as act:

            async def outer() -> int:
                queued.append(await act.asynchronous_call(inner))
                return await queued[0]

            call = await act.asynchronous_call(outer)
            with pytest.raises(WouldDeadlockError):
                await call
            assert await queued[0] == 7
        stats = act.statistics()
        assert (stats.completed, stats.failed) == (1, 1)

    async def test_a_service_domain_block_awaiting_its_own_queued_call(self) -> None:
        async def deposit() -> int:
            return 10

        async with service_domain(name="batch", synchronization=NEW) as batch:
            queued = await batch.asynchronous_call(deposit)
            with pytest.raises(WouldDeadlockError):
                await queued
            assert not queued.done()
        assert await queued == 10

    async def test_an_inheriting_child_joins_the_domain_the_chain_holds(self) -> None:
        async def inner() -> str:
            return "child ran"

        async with Activity(name="outer", synchronization=NEW) as outer:

            async def body() -> bool:
                async with Activity(name="child", inheritance=Inheritance.INHERIT) as child:
                    assert child.synchronization_domain is outer.synchronization_domain
                    queued = await child.asynchronous_call(inner)
                    with pytest.raises(WouldDeadlockError):
                        await queued
                    left_alone = not queued.done()
                    # The child's drain would wait for it as well: this chain gives it up.
                    queued.cancel()
                    return left_alone

            assert await outer.synchronous_call(body) is True


class TestCycles:
    async def test_two_activities_the_await_closes_the_cycle(self) -> None:
        # A's call awaits B's call, which waits in A's domain for a synchronous call.
        async with (
            Activity(name="A", synchronization=NEW) as a,
            Activity(name="B", synchronization=NEW) as b,
        ):
            b_waits = anyio.Event()

            async def a_inner() -> str:
                return "a-inner"

            async def b_work() -> str:
                b_waits.set()
                return "b:" + await a.synchronous_call(a_inner)

            async def a_outer() -> tuple[Call[str], str]:
                queued = await b.asynchronous_call(b_work)
                await b_waits.wait()
                await settle()
                with pytest.raises(WouldDeadlockError) as info:
                    await queued
                return queued, str(info.value)

            queued, message = await a.synchronous_call(a_outer)
            assert await queued == "b:a-inner"
        assert "'A'" in message
        assert "'B'" in message
        assert_balanced(a.statistics())
        assert_balanced(b.statistics())

    async def test_two_activities_the_domain_wait_closes_the_cycle(self) -> None:
        # A's call awaits B's call first; B's call then asks for A's domain: its
        # synchronous_call is the wait that would never end, and it is told.
        async with (
            Activity(name="A", synchronization=NEW) as a,
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
                queued = await b.asynchronous_call(b_work)
                return await queued

            assert await a.synchronous_call(a_outer) == "told"
        stats = a.statistics()
        assert_balanced(stats)
        assert stats.failed == 1  # the synchronous call that was refused, nothing else
        assert b.statistics().completed == 1

    async def test_a_three_chain_cycle(self) -> None:
        # A holds its domain and awaits B's call; B's call awaits C's call; C's call
        # waits for A's domain. The last wait closes the cycle.
        async with (
            Activity(name="A", synchronization=NEW) as a,
            Activity(name="B", synchronization=NEW) as b,
            Activity(name="C", synchronization=NEW) as c,
        ):
            c_waits = anyio.Event()
            b_waits = anyio.Event()

            async def a_inner() -> str:
                return "a"

            async def c_work() -> str:
                c_waits.set()
                return "c" + await a.synchronous_call(a_inner)

            async def b_work() -> str:
                queued = await c.asynchronous_call(c_work)
                await c_waits.wait()
                b_waits.set()
                return "b" + await queued

            async def a_outer() -> tuple[Call[str], str]:
                queued = await b.asynchronous_call(b_work)
                await b_waits.wait()
                await settle()
                with pytest.raises(WouldDeadlockError) as info:
                    await queued
                return queued, str(info.value)

            queued, message = await a.synchronous_call(a_outer)
            assert await queued == "bca"
        for name in ("'A'", "'B'", "'C'"):
            assert name in message

    async def test_synchronous_call_into_an_activity_whose_holder_needs_our_domain(
        self,
    ) -> None:
        # B's call holds B's domain and awaits a call of A; A's call, holding A's
        # domain, makes a synchronous call into B: it would wait for B's domain forever.
        async with (
            Activity(name="A", synchronization=NEW) as a,
            Activity(name="B", synchronization=NEW) as b,
        ):
            a_holds = anyio.Event()
            b_waits = anyio.Event()

            async def a_work() -> str:
                return "a-work"

            async def b_noop() -> str:
                return "b-noop"

            async def b_holder() -> str:
                await a_holds.wait()
                queued = await a.asynchronous_call(a_work)
                b_waits.set()
                return await queued

            async def a_holder() -> str:
                a_holds.set()
                await b_waits.wait()
                await settle()
                with pytest.raises(WouldDeadlockError):
                    await b.synchronous_call(b_noop)
                return "a-holder told"

            b_call = await b.asynchronous_call(b_holder)
            assert await a.synchronous_call(a_holder) == "a-holder told"
            assert await b_call == "a-work"
        assert a.statistics().completed == 2
        stats = b.statistics()
        assert (stats.completed, stats.failed) == (1, 1)  # b_holder; the refused call

    async def test_a_synchronous_call_queued_for_a_place_in_the_cycle(self) -> None:
        # As above, with B full: the synchronous call waits for a place first, and
        # that wait is the one told. The refused call never runs.
        async with (
            Activity(name="A", synchronization=NEW) as a,
            Activity(name="B", max_concurrency=1, synchronization=NEW) as b,
        ):
            a_holds = anyio.Event()
            b_waits = anyio.Event()
            ran: list[str] = []

            async def a_work() -> str:
                return "a-work"

            async def b_noop() -> None:
                ran.append("b_noop")

            async def b_holder() -> str:
                await a_holds.wait()
                queued = await a.asynchronous_call(a_work)
                b_waits.set()
                return await queued

            async def a_holder() -> str:
                a_holds.set()
                await b_waits.wait()
                await settle()
                with pytest.raises(WouldDeadlockError):
                    await b.synchronous_call(b_noop)
                return "a-holder told"

            b_call = await b.asynchronous_call(b_holder)
            assert await a.synchronous_call(a_holder) == "a-holder told"
            assert await b_call == "a-work"
        assert ran == []
        stats = b.statistics()
        assert_balanced(stats)
        assert (stats.completed, stats.cancelled) == (1, 1)  # b_holder; the refused call

    async def test_a_cycle_through_a_worker_thread(self) -> None:
        # A's blocking call holds A's domain in a worker thread and calls into B with
        # synchronous_call_from_thread, while B's holder awaits a call of A.
        async with (
            Activity(name="A", synchronization=NEW) as a,
            Activity(name="B", synchronization=NEW) as b,
        ):
            b_waits = threading.Event()

            async def a_work() -> str:
                return "a-work"

            async def b_noop() -> str:
                return "b-noop"

            async def b_holder() -> str:
                queued = await a.asynchronous_call(a_work)
                b_waits.set()
                return await queued

            def a_blocking() -> str:
                assert b_waits.wait(30)
                try:
                    b.synchronous_call_from_thread(b_noop)
                except WouldDeadlockError:
                    return "told in the thread"
                return "not told"

            a_call = await a.asynchronous_call(a_blocking)
            await settle()
            domain = a.synchronization_domain
            assert domain is not None
            assert domain.owner is a_call  # the blocking call holds A's domain
            b_call = await b.asynchronous_call(b_holder)
            assert await a_call == "told in the thread"
            assert await b_call == "a-work"


class TestBlockingCalls:
    async def test_a_blocking_call_reading_the_future_of_a_call_in_its_own_domain(
        self,
    ) -> None:
        async def inner() -> str:
            return "inner ran"

        async with Activity(name="A", synchronization=NEW) as a:
            futures: list[Any] = []

            def blocking_outer() -> str:
                future = a.asynchronous_call_from_thread(inner)
                futures.append(future)
                with pytest.raises(WouldDeadlockError):
                    future.result()
                with pytest.raises(WouldDeadlockError):
                    future.exception(timeout=30)
                return "told in the thread"

            assert await a.synchronous_call(blocking_outer) == "told in the thread"
            await a.wait_idle()
            assert futures[0].result() == "inner ran"  # it ran once the domain was free
        assert_balanced(a.statistics())
        assert a.statistics().completed == 2

    async def test_a_blocking_call_reading_the_future_of_a_free_call(self) -> None:
        async def elsewhere() -> str:
            await anyio.lowlevel.checkpoint()
            return "elsewhere"

        async with (
            Activity(name="A", synchronization=NEW) as a,
            Activity(name="B", synchronization=NEW) as b,
        ):

            def blocking_outer() -> str:
                return b.asynchronous_call_from_thread(elsewhere).result(timeout=30)

            assert await a.synchronous_call(blocking_outer) == "elsewhere"


class TestNoFalseAlarms:
    async def test_reentry_a_b_a_with_waits_in_between(self) -> None:
        async with (
            Activity(name="A", max_concurrency=1, synchronization=NEW) as a,
            Activity(name="B", synchronization=NEW) as b,
            Activity(name="free") as free,
        ):

            async def a_inner() -> str:
                return "a-inner"

            async def elsewhere() -> str:
                await anyio.lowlevel.checkpoint()
                return "free"

            async def b_middle() -> str:
                other = await free.asynchronous_call(elsewhere)  # a new chain, no domain
                return "b:" + await a.synchronous_call(a_inner) + "+" + await other

            async def a_outer() -> str:
                direct = await a.synchronous_call(a_inner)
                return direct + "|" + await b.synchronous_call(b_middle)

            assert await a.synchronous_call(a_outer) == "a-inner|b:a-inner+free"
            call = await a.asynchronous_call(a_outer)
            assert await call == "a-inner|b:a-inner+free"
        assert_balanced(a.statistics())
        assert_balanced(b.statistics())

    async def test_reentry_from_a_worker_thread(self) -> None:
        async with Activity(name="A", max_concurrency=1, synchronization=NEW) as a:

            async def inner() -> int:
                return 42

            def blocking_outer() -> int:
                return a.synchronous_call_from_thread(inner) + 1

            assert await a.synchronous_call(blocking_outer) == 43

    async def test_awaiting_a_call_held_up_by_a_chain_that_does_not_wait(self) -> None:
        # B's domain is held by a chain that is busy, not waiting: A's call waits its
        # turn like any other, and gets the result.
        gate = anyio.Event()
        async with (
            Activity(name="A", synchronization=NEW) as a,
            Activity(name="B", synchronization=NEW) as b,
        ):

            async def b_busy() -> str:
                await gate.wait()
                return "busy"

            async def b_work() -> str:
                return "work"

            async def a_outer() -> str:
                queued = await b.asynchronous_call(b_work)
                return await queued

            busy = await b.asynchronous_call(b_busy)
            await settle()
            outer = await a.asynchronous_call(a_outer)
            await settle()
            assert not outer.done()  # waiting, not refused
            gate.set()
            assert await outer == "work"
            assert await busy == "busy"

    async def test_the_block_awaits_calls_of_its_synchronized_activity(self) -> None:
        async def work(i: int) -> int:
            await anyio.lowlevel.checkpoint()
            return i

        async with Activity(synchronization=NEW) as act:
            calls = [await act.asynchronous_call(work, i) for i in range(5)]
            assert [await call for call in calls] == list(range(5))

    async def test_awaiting_a_finished_call_of_the_own_domain(self) -> None:
        async def inner() -> str:
            return "done"

        async with Activity(synchronization=NEW) as act:
            finished: list[Call[str]] = []

            async def outer() -> str:
                return await finished[0]

            finished.append(await act.asynchronous_call(inner))
            await finished[0]
            assert await act.synchronous_call(outer) == "done"

    async def test_a_call_awaiting_work_in_its_own_domain_through_a_synchronous_call(
        self,
    ) -> None:
        # The synchronous call continues the chain: it re-enters and runs.
        async with Activity(synchronization=NEW, max_concurrency=1) as act:

            async def inner() -> str:
                return "re-entered"

            async def outer() -> str:
                return await act.synchronous_call(inner)

            call = await act.asynchronous_call(outer)
            assert await call == "re-entered"

    async def test_a_queued_synchronous_call_of_an_unsynchronized_activity(self) -> None:
        # The caller holds a domain; its synchronous call into a busy activity waits
        # for a place, which a chain that does not wait will free.
        gate = anyio.Event()
        async with (
            Activity(name="A", synchronization=NEW) as a,
            Activity(name="narrow", max_concurrency=1) as narrow,
        ):

            async def busy() -> None:
                await gate.wait()

            async def quick() -> str:
                return "quick"

            async def a_outer() -> str:
                return await narrow.synchronous_call(quick)

            held = await narrow.asynchronous_call(busy)
            await settle()
            outer = await a.asynchronous_call(a_outer)
            await settle()
            assert not outer.done()
            gate.set()
            assert await outer == "quick"
            await held

    async def test_no_wait_is_left_recorded(self) -> None:
        from activity import _context  # pyright: ignore[reportPrivateUsage]

        async def inner() -> None:
            await anyio.lowlevel.checkpoint()

        async with (
            Activity(name="A", synchronization=NEW) as a,
            Activity(name="B", synchronization=NEW) as b,
        ):

            async def outer() -> None:
                queued = await b.asynchronous_call(inner)
                await queued
                mine = await a.asynchronous_call(inner)
                with contextlib.suppress(WouldDeadlockError):
                    await mine

            calls: list[Call[Any]] = [await a.asynchronous_call(outer) for _ in range(5)]
            for call in calls:
                await call
        assert _context._waits == {}  # pyright: ignore[reportPrivateUsage]
