"""The services: synchronization domains, thread models, nesting, partitions, thread entry."""

# Names bound inside `with pytest.raises(...)` blocks are read after them.
# pyright: reportPossiblyUnboundVariable=false

from __future__ import annotations

import concurrent.futures
import sqlite3
import threading
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest

from activity import (
    Activity,
    ActivityClosedError,
    ActivityLocal,
    AsyncWorkRejectedError,
    Binding,
    Call,
    CallStatus,
    CallTimeoutError,
    HResult,
    Inheritance,
    InvalidArgumentError,
    Synchronization,
    ThreadPool,
    WrongThreadError,
    current_activity,
    service_domain,
)
from activity.pytest_plugin import assert_balanced

pytestmark = pytest.mark.anyio


async def racy_increment(state: dict[str, int]) -> None:
    """Read, yield to the loop, write: loses updates unless calls run one at a time."""
    value = state["n"]
    await anyio.lowlevel.checkpoint()
    await anyio.lowlevel.checkpoint()
    state["n"] = value + 1


class TestSynchronization:
    async def test_without_a_domain_the_counter_races(self) -> None:
        state = {"n": 0}
        async with Activity(max_concurrency=20) as act:
            for _ in range(50):
                await act.asynchronous_call(racy_increment, state)
        assert state["n"] < 50  # the control: the race is real

    async def test_a_new_domain_runs_calls_one_at_a_time(self) -> None:
        state = {"n": 0}
        async with Activity(max_concurrency=20, synchronization=Synchronization.NEW) as act:
            assert act.synchronization_domain is not None
            calls = [await act.asynchronous_call(racy_increment, state) for _ in range(50)]
            for _ in range(5):
                await act.synchronous_call(racy_increment, state)
        assert state["n"] == 55
        assert all(c.status is CallStatus.COMPLETED for c in calls)

    async def test_domain_admits_chains_in_fifo_order(self) -> None:
        order: list[int] = []

        async def record(i: int) -> None:
            await anyio.lowlevel.checkpoint()
            order.append(i)

        async with Activity(max_concurrency=10, synchronization=Synchronization.NEW) as act:
            for i in range(10):
                await act.asynchronous_call(record, i)
        assert order == list(range(10))

    async def test_reentrant_chain_a_b_a_finishes(self) -> None:
        async with (
            Activity(name="A", max_concurrency=1, synchronization=Synchronization.NEW) as a,
            Activity(name="B", synchronization=Synchronization.NEW) as b,
        ):

            async def a_inner() -> str:
                return "a-inner"

            async def b_middle() -> str:
                return "b:" + await a.synchronous_call(a_inner)

            async def a_outer() -> str:
                direct = await a.synchronous_call(a_inner)  # straight back into A
                return direct + "|" + await b.synchronous_call(b_middle)

            assert await a.synchronous_call(a_outer) == "a-inner|b:a-inner"
            call = await a.asynchronous_call(a_outer)
            assert await call == "a-inner|b:a-inner"
        assert_balanced(a.statistics())

    async def test_two_synchronous_calls_are_two_chains(self) -> None:
        # Two callers' synchronous calls of an activity without a domain, each going
        # on into one with a domain: each call is a chain of its own, so they take
        # turns in the domain instead of being let in together as one chain.
        inside: list[int] = []
        most = 0
        gate = anyio.Event()
        entered = anyio.Event()

        async with (
            Activity(name="plain") as plain,
            Activity(name="guarded", synchronization=Synchronization.NEW) as guarded,
        ):

            async def guarded_work(i: int) -> None:
                nonlocal most
                inside.append(i)
                most = max(most, len(inside))
                entered.set()
                await gate.wait()
                inside.remove(i)

            async def plain_work(i: int) -> None:
                await guarded.synchronous_call(guarded_work, i)

            async with anyio.create_task_group() as tg:
                for i in range(2):
                    tg.start_soon(plain.synchronous_call, plain_work, i)
                await entered.wait()
                for _ in range(5):
                    await anyio.lowlevel.checkpoint()
                assert len(inside) == 1  # the other chain waits at the domain
                gate.set()
        assert most == 1
        assert_balanced(plain.statistics())
        assert guarded.statistics().completed == 2

    async def test_reentry_through_a_worker_thread(self) -> None:
        async with Activity(name="A", max_concurrency=1, synchronization=Synchronization.NEW) as a:

            async def inner() -> int:
                return 42

            def blocking_outer() -> int:
                # In a worker thread, holding A's domain, calling back into A.
                return a.synchronous_call_from_thread(inner) + 1

            assert await a.synchronous_call(blocking_outer) == 43

    async def test_another_chain_waits_its_turn(self) -> None:
        gate = anyio.Event()
        entered: list[str] = []

        async def holder() -> None:
            entered.append("holder")
            await gate.wait()

        async def other() -> None:
            entered.append("other")

        async with Activity(max_concurrency=5, synchronization=Synchronization.NEW) as act:
            held = await act.asynchronous_call(holder)
            waiting = await act.asynchronous_call(other)
            for _ in range(5):
                await anyio.lowlevel.checkpoint()
            assert entered == ["holder"]
            assert waiting.status is CallStatus.RUNNING  # admitted, waiting for the domain
            assert act.synchronization_domain is not None
            assert act.synchronization_domain.owner is held
            gate.set()
            await waiting
        assert entered == ["holder", "other"]

    async def test_cancelled_while_waiting_for_the_domain(self) -> None:
        gate = anyio.Event()
        async with Activity(synchronization=Synchronization.NEW) as act:
            held = await act.asynchronous_call(gate.wait)
            waiting = await act.asynchronous_call(gate.wait)
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
            waiting.cancel()
            await waiting.wait()
            assert waiting.status is CallStatus.CANCELLED
            gate.set()
            await held
            assert act.synchronization_domain is not None
            assert act.synchronization_domain.owner is None

    async def test_inheritance_of_the_domain(self) -> None:
        async with Activity(name="outer", synchronization=Synchronization.NEW) as outer:
            seen: dict[str, Any] = {}

            async def nest() -> None:
                async with Activity(inheritance=Inheritance.INHERIT) as joined:
                    seen["joined"] = joined.synchronization_domain
                    # Same chain, same domain: re-enters instead of deadlocking.
                    seen["value"] = await joined.synchronous_call(anyio.lowlevel.checkpoint)
                async with Activity(
                    inheritance=Inheritance.INHERIT,
                    synchronization=Synchronization.NEW_IF_NECESSARY,
                ) as necessary:
                    seen["necessary"] = necessary.synchronization_domain
                async with Activity(
                    inheritance=Inheritance.IGNORE,
                    synchronization=Synchronization.IF_CONTAINER_IS_SYNCHRONIZED,
                ) as ignoring:
                    seen["ignoring"] = ignoring.synchronization_domain
                async with Activity(
                    inheritance=Inheritance.INHERIT, synchronization=Synchronization.NEW
                ) as fresh:
                    seen["fresh"] = fresh.synchronization_domain

            await outer.synchronous_call(nest)
            domain = outer.synchronization_domain
            assert seen["joined"] is domain
            assert seen["necessary"] is domain
            assert seen["ignoring"] is None
            assert seen["fresh"] is not None
            assert seen["fresh"] is not domain

        async with Activity(synchronization=Synchronization.NEW_IF_NECESSARY) as alone:
            assert alone.synchronization_domain is not None
        async with Activity(synchronization=Synchronization.IF_CONTAINER_IS_SYNCHRONIZED) as no:
            assert no.synchronization_domain is None


class TestThreadModel:
    async def test_mta_runs_blocking_calls_concurrently_in_pool_threads(self) -> None:
        barrier = threading.Barrier(3, timeout=10)
        async with Activity(thread_limit=3) as act:
            assert act.thread_model is ThreadPool.MTA
            calls = [await act.asynchronous_call(barrier.wait) for _ in range(3)]
            for call in calls:
                await call  # all three met at the barrier: they ran at once

    async def test_sta_runs_blocking_calls_one_at_a_time_on_its_thread(self) -> None:
        lock = threading.Lock()
        count = {"active": 0, "peak": 0}
        names: set[str] = set()

        def blocking() -> None:
            with lock:
                count["active"] += 1
                count["peak"] = max(count["peak"], count["active"])
                names.add(threading.current_thread().name)
            threading.Event().wait(0.002)
            with lock:
                count["active"] -= 1

        async with Activity(name="apt", thread_pool=ThreadPool.STA, max_concurrency=8) as act:
            assert act.thread_model is ThreadPool.STA
            calls = [await act.asynchronous_call(blocking) for _ in range(8)]
            await act.synchronous_call(blocking)
            for call in calls:
                await call
        assert count["peak"] == 1
        assert names == {"activity-apt-sta"}
        assert not any(t.name.startswith("activity-apt-sta") for t in threading.enumerate())

    async def test_sta_thread_is_joined_after_a_failing_call(self) -> None:
        def failing() -> None:
            raise OSError("disk on fire")

        async with Activity(name="joined", thread_pool=ThreadPool.STA) as act:
            with pytest.raises(OSError, match="disk on fire"):
                await act.synchronous_call(failing)
            call = await act.asynchronous_call(failing)
            await call.wait()
            assert isinstance(call.exception(), OSError)
            thread_name = await act.synchronous_call(lambda: threading.current_thread().name)
            assert any(t.name == thread_name for t in threading.enumerate())
        assert not any(t.name == thread_name for t in threading.enumerate())

    async def test_bound_sta_keeps_a_sqlite_connection_usable(self) -> None:
        store: dict[str, sqlite3.Connection] = {}

        def open_db() -> None:
            store["db"] = sqlite3.connect(":memory:")  # check_same_thread=True
            store["db"].execute("create table t (x int)")

        def insert(x: int) -> None:
            store["db"].execute("insert into t values (?)", (x,))

        def total() -> int:
            value = store["db"].execute("select sum(x) from t").fetchone()[0]
            store["db"].close()
            return int(value)

        async with Activity(
            thread_pool=ThreadPool.STA, binding=Binding.BIND_TO_POOL_THREAD, max_concurrency=4
        ) as act:
            await act.synchronous_call(open_db)
            calls = [await act.asynchronous_call(insert, i) for i in range(10)]
            for call in calls:
                await call
            assert await act.synchronous_call(total) == 45

    async def test_unbound_sta_moves_on_from_an_abandoned_thread_bound_does_not(self) -> None:
        release = threading.Event()

        def stuck() -> None:
            release.wait(10)

        def where() -> str:
            return threading.current_thread().name

        async with Activity(name="free", thread_pool=ThreadPool.STA) as unbound:
            with pytest.raises(CallTimeoutError):
                await unbound.synchronous_call(stuck, timeout=0.05)
            assert await unbound.synchronous_call(where) == "activity-free-sta-2"
            release.set()

        release.clear()
        async with Activity(
            name="tied", thread_pool=ThreadPool.STA, binding=Binding.BIND_TO_POOL_THREAD
        ) as bound:
            with pytest.raises(CallTimeoutError):
                await bound.synchronous_call(stuck, timeout=0.05)
            later = await bound.asynchronous_call(where)
            release.set()  # the one thread is free again; the call runs there
            assert await later == "activity-tied-sta"

    async def test_inherited_thread_model(self) -> None:
        async with Activity(thread_pool=ThreadPool.STA) as parent:
            async with Activity(inheritance=Inheritance.INHERIT) as child:
                assert child.thread_model is ThreadPool.STA
            async with Activity(thread_pool=ThreadPool.INHERIT) as ignoring:
                assert ignoring.thread_model is ThreadPool.MTA
            async with Activity(
                inheritance=Inheritance.INHERIT, binding=Binding.BIND_TO_POOL_THREAD
            ) as bound_child:
                assert bound_child.thread_model is ThreadPool.STA
            assert parent.thread_model is ThreadPool.STA
        async with Activity(inheritance=Inheritance.INHERIT) as orphan:
            assert orphan.thread_model is ThreadPool.MTA

    async def test_bind_to_current_thread(self) -> None:
        loop_thread = threading.get_ident()
        async with Activity() as act:
            assert await act.synchronous_call(threading.get_ident) != loop_thread
            act.bind_to_current_thread()
            assert await act.synchronous_call(threading.get_ident) == loop_thread
            call = await act.asynchronous_call(threading.get_ident)
            assert await call == loop_thread
            act.unbind_from_thread()
            assert await act.synchronous_call(threading.get_ident) != loop_thread


class TestRefusedCombinations:
    def test_thread_pool_none_is_refused(self) -> None:
        with pytest.raises(InvalidArgumentError, match="thread_pool") as info:
            Activity(thread_pool=ThreadPool.NONE)
        assert info.value.hresult is HResult.CO_E_THREADPOOL_CONFIG
        assert info.value.field == "thread_pool"

    def test_binding_on_mta_is_refused(self) -> None:
        with pytest.raises(InvalidArgumentError, match="binding") as info:
            Activity(binding=Binding.BIND_TO_POOL_THREAD)
        assert info.value.field == "binding"
        with pytest.raises(InvalidArgumentError, match="binding"):
            Activity(thread_pool=ThreadPool.MTA, binding=Binding.BIND_TO_POOL_THREAD)

    async def test_binding_on_an_inherited_mta_is_refused_at_entry(self) -> None:
        async with Activity():
            child = Activity(inheritance=Inheritance.INHERIT, binding=Binding.BIND_TO_POOL_THREAD)
            with pytest.raises(InvalidArgumentError, match="binding"):
                async with child:
                    pass
            with pytest.raises(ActivityClosedError, match="not open"):
                await child.asynchronous_call(anyio.lowlevel.checkpoint)

    async def test_service_domain_refuses_thread_pool_and_binding(self) -> None:
        with pytest.raises(InvalidArgumentError, match="thread_pool") as info:
            async with service_domain(thread_pool=ThreadPool.STA):
                pass
        assert info.value.field == "thread_pool"
        with pytest.raises(InvalidArgumentError, match="binding"):
            async with service_domain({"binding": "bind_to_pool_thread"}):
                pass


class TestNesting:
    async def test_parent_and_inherited_locals(self) -> None:
        tenant = ActivityLocal[str]("tenant", default="none")
        async with Activity(name="parent") as parent:
            tenant.set("acme")

            async def nested() -> tuple[str, str, str, str]:
                async with Activity(inheritance=Inheritance.INHERIT) as child:
                    assert child.parent is parent
                    assert parent.children == [child]
                    inherited = tenant.get()
                    in_call = await child.synchronous_call(tenant.get)
                    tenant.set("shadow")
                    shadowed = await child.synchronous_call(tenant.get)
                async with Activity() as clean:
                    assert clean.parent is parent
                    ignored = tenant.get()
                return inherited, in_call, shadowed, ignored

            assert await parent.synchronous_call(nested) == ("acme", "acme", "shadow", "none")
            assert tenant.get() == "acme"  # the child's set never wrote through
            assert parent.children == []

    async def test_cancelling_a_parent_cancels_its_children(self) -> None:
        async with Activity(name="parent") as parent:
            child_calls: list[Call[Any]] = []
            started = anyio.Event()

            async def nested() -> None:
                async with Activity(name="child", shutdown_timeout=5) as child:
                    child_calls.append(await child.asynchronous_call(anyio.sleep_forever))
                    started.set()
                    await anyio.sleep_forever()

            outer = await parent.asynchronous_call(nested)
            await started.wait()
            parent.cancel("stop everything")
            await outer.wait()
        assert outer.status is CallStatus.CANCELLED
        assert child_calls[0].status is CallStatus.CANCELLED

    async def test_a_child_cannot_outlive_its_parent(self) -> None:
        child_ready = anyio.Event()
        release = anyio.Event()
        holder: dict[str, Any] = {}

        async def own_task() -> None:
            # A task of its own, entered while the parent is current.
            async with Activity(name="child") as child:
                holder["child"] = child
                holder["call"] = await child.asynchronous_call(anyio.sleep_forever)
                child_ready.set()
                await release.wait()
                with pytest.raises(ActivityClosedError, match="parent"):
                    await child.asynchronous_call(anyio.lowlevel.checkpoint)

        async with anyio.create_task_group() as tg:
            async with Activity(name="parent") as parent:
                tg.start_soon(own_task)
                await child_ready.wait()
                assert holder["child"].parent is parent
            assert holder["call"].status is CallStatus.CANCELLED
            release.set()


class TestPartitions:
    async def test_activities_of_a_partition_share_one_budget(self) -> None:
        gate = anyio.Event()
        options: dict[str, Any] = {"partition": "tenant-a", "max_concurrency": 2, "max_pending": 2}
        async with (
            Activity(name="a1", **options) as a1,
            Activity(name="a2", **options) as a2,
            Activity(name="b1", partition="tenant-b", max_concurrency=2, max_pending=2) as b1,
        ):
            calls = [
                await a1.asynchronous_call(gate.wait),
                await a2.asynchronous_call(gate.wait),
                await a1.asynchronous_call(gate.wait),
                await a2.asynchronous_call(gate.wait),
            ]
            with pytest.raises(AsyncWorkRejectedError, match="tenant-a"):
                await a1.asynchronous_call(gate.wait)
            with pytest.raises(AsyncWorkRejectedError):
                await a2.asynchronous_call(gate.wait)
            # Another partition is untouched by tenant-a's burst.
            other = await b1.asynchronous_call(gate.wait)
            assert other.status is CallStatus.RUNNING
            stats = a1.partition_statistics()
            assert stats is not None
            assert (stats.name, stats.running, stats.pending) == ("tenant-a", 2, 2)
            assert a1.statistics().partition == "tenant-a"
            assert (a1.statistics().accepted, a1.statistics().rejected) == (2, 1)
            gate.set()
            for call in [*calls, other]:
                await call
        assert a2.statistics().completed == 2
        assert Activity().partition_statistics() is None

    async def test_a_pending_call_of_one_activity_starts_when_another_finishes(self) -> None:
        gate = anyio.Event()
        async with (
            Activity(partition="p", max_concurrency=1, max_pending=5) as first,
            Activity(partition="p", max_concurrency=1, max_pending=5) as second,
        ):
            running = await first.asynchronous_call(gate.wait)
            queued = await second.asynchronous_call(anyio.lowlevel.checkpoint)
            assert queued.status is CallStatus.PENDING
            gate.set()
            await running
            await queued
        assert_balanced(first.statistics())
        assert_balanced(second.statistics())

    async def test_cancelling_one_member_leaves_the_others_queue_alone(self) -> None:
        gate = anyio.Event()
        async with (
            Activity(partition="q", max_concurrency=1, max_pending=5) as first,
            Activity(partition="q", max_concurrency=1, max_pending=5) as second,
        ):
            # (second is first's child: cancelling it leaves first alone.)
            blocker = await first.asynchronous_call(gate.wait)
            mine = await second.asynchronous_call(gate.wait)
            theirs = await first.asynchronous_call(gate.wait)
            second.cancel("second only")
            assert mine.status is CallStatus.CANCELLED
            assert theirs.status is CallStatus.PENDING
            gate.set()
            await blocker
            await theirs
        assert theirs.done()
        assert not theirs.cancelled()

    async def test_mismatched_limits_are_refused(self) -> None:
        async with Activity(partition="strict", max_concurrency=3):
            other = Activity(partition="strict", max_concurrency=4)
            with pytest.raises(InvalidArgumentError, match="max_concurrency=3"):
                async with other:
                    pass


class TestEntryFromThreads:
    async def test_calls_from_a_plain_thread(self) -> None:
        async def double(x: int) -> int:
            await anyio.lowlevel.checkpoint()
            return x * 2

        def who() -> str | None:
            act = current_activity()
            return None if act is None else act.name

        async with Activity(name="entry") as act:

            def from_thread() -> tuple[int, int, str | None]:
                future = act.asynchronous_call_from_thread(double, 21)
                assert isinstance(future, concurrent.futures.Future)
                return (
                    future.result(timeout=10),
                    act.synchronous_call_from_thread(double, 5),
                    act.synchronous_call_from_thread(who),
                )

            assert await anyio.to_thread.run_sync(from_thread) == (42, 10, "entry")

    async def test_same_admission_rules_and_errors(self) -> None:
        gate = anyio.Event()

        async def failing() -> None:
            raise KeyError("from the loop")

        async with Activity(max_concurrency=1, max_pending=0) as act:
            await act.asynchronous_call(gate.wait)

            def rejected() -> str:
                try:
                    act.asynchronous_call_from_thread(anyio.lowlevel.checkpoint)
                except AsyncWorkRejectedError as exc:
                    return type(exc).__name__
                return "accepted"

            assert await anyio.to_thread.run_sync(rejected) == "AsyncWorkRejectedError"
            gate.set()
            await act.wait_idle()

            def fails() -> BaseException | None:
                future = act.asynchronous_call_from_thread(failing)
                return future.exception(timeout=10)  # observes the failure

            assert isinstance(await anyio.to_thread.run_sync(fails), KeyError)
            with pytest.raises(WrongThreadError, match="own"):
                act.synchronous_call_from_thread(anyio.lowlevel.checkpoint)

        def after_exit() -> str:
            with pytest.raises(ActivityClosedError) as info:
                act.synchronous_call_from_thread(len, "")
            return str(info.value)

        assert "closed" in await anyio.to_thread.run_sync(after_exit)


class TestServiceDomain:
    async def test_the_block_holds_the_domain(self) -> None:
        tenant = ActivityLocal[str]("tenant", default="none")
        ran: list[str] = []

        async def later() -> str:
            ran.append("async")
            return tenant.get()

        async with service_domain(name="dom", synchronization=Synchronization.NEW) as dom:
            assert current_activity() is dom
            tenant.set("inside")
            queued = await dom.asynchronous_call(later)
            for _ in range(5):
                await anyio.lowlevel.checkpoint()
            assert ran == []  # waits for the block to leave the domain
            assert await dom.synchronous_call(tenant.get) == "inside"  # the block's own chain
        assert await queued == "inside"
        assert ran == ["async"]
        assert current_activity() is None

    async def test_each_entry_gets_its_own_domain(self) -> None:
        inside = 0
        peak = 0
        both_in = anyio.Event()

        async def enter() -> None:
            nonlocal inside, peak
            async with service_domain(synchronization=Synchronization.NEW):
                inside += 1
                peak = max(peak, inside)
                if inside == 2:
                    both_in.set()
                await both_in.wait()
                inside -= 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(enter)
            tg.start_soon(enter)
        assert peak == 2

    async def test_joining_the_enclosing_domain_inside_a_call(self) -> None:
        async with Activity(synchronization=Synchronization.NEW) as outer:

            async def body() -> bool:
                async with service_domain(inheritance=Inheritance.INHERIT) as dom:
                    return dom.synchronization_domain is outer.synchronization_domain

            assert await outer.synchronous_call(body) is True
