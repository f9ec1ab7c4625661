"""KeyedActivity: one call at a time per key, keys side by side, on asyncio, uvloop and trio."""

# Names bound inside `with pytest.raises(...)` blocks are read after them.
# pyright: reportPossiblyUnboundVariable=false

from __future__ import annotations

import random
import threading
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest

from activity import (
    Activity,
    ActivityClosedError,
    ActivityConfig,
    ActivityError,
    ActivityLocal,
    AsyncWorkRejectedError,
    Call,
    CallCancelledError,
    CallStatus,
    CallTimeoutError,
    InvalidArgumentError,
    KeyedActivity,
    Overflow,
    current_activity,
)
from activity.pytest_plugin import assert_balanced

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable

pytestmark = pytest.mark.anyio

#: How long a test may wait for something that must happen.
DEADLINE = 10.0


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until ``condition()`` holds (the test fails after DEADLINE)."""
    with anyio.fail_after(DEADLINE):
        while not condition():  # noqa: ASYNC110 - the condition is the activity's state
            await anyio.sleep(0.001)


def check_balanced(stats: Any) -> None:
    """Every accepted call is pending, waiting for a thread, running, or ended one way."""
    assert_balanced(stats)


class Serial:
    """Records the calls of each key, and fails if two of one key overlap."""

    def __init__(self) -> None:
        self.active: dict[Hashable, int] = {}
        self.order: dict[Hashable, list[int]] = {}
        self.overlaps = 0

    async def job(self, key: Hashable, seq: int, steps: int = 2, fail: bool = False) -> int:
        self.active[key] = self.active.get(key, 0) + 1
        if self.active[key] > 1:
            self.overlaps += 1
        try:
            for _ in range(steps):
                await anyio.lowlevel.checkpoint()
            self.order.setdefault(key, []).append(seq)
            if fail:
                raise ValueError(f"{key} {seq} fails")
            return seq
        finally:
            self.active[key] -= 1


# -- order and concurrency ------------------------------------------------------------------


async def test_calls_of_one_key_run_one_at_a_time_in_submission_order() -> None:
    serial = Serial()
    async with KeyedActivity(max_concurrency=10) as keyed:
        calls: list[Call[int]] = []
        for seq in range(20):
            if seq % 3 == 0:
                calls.append(await keyed.asynchronous_call("k", serial.job, "k", seq))
            else:
                calls.append(keyed.asynchronous_call_nowait("k", serial.job, "k", seq))
        last = await keyed.synchronous_call("k", serial.job, "k", 20)
        assert [await call for call in calls] == list(range(20))
        assert last == 20
    assert serial.order["k"] == list(range(21))
    assert serial.overlaps == 0


async def test_different_keys_run_at_the_same_time() -> None:
    a_started, b_started = anyio.Event(), anyio.Event()

    async def meet(mine: anyio.Event, theirs: anyio.Event) -> str:
        mine.set()
        await theirs.wait()  # only returns if the other key's call runs meanwhile
        return "met"

    async with KeyedActivity(max_concurrency=2) as keyed:
        with anyio.fail_after(DEADLINE):
            a = await keyed.asynchronous_call("a", meet, a_started, b_started)
            b = await keyed.asynchronous_call("b", meet, b_started, a_started)
            assert (await a, await b) == ("met", "met")


async def test_the_parents_max_concurrency_bounds_the_keys_running_at_once() -> None:
    gate = anyio.Event()
    started: list[str] = []

    async def hold(key: str) -> str:
        started.append(key)
        await gate.wait()
        return key

    async with KeyedActivity(max_concurrency=2, name="bounded") as keyed:
        calls = [await keyed.asynchronous_call(key, hold, key) for key in "abc"]
        # c's turn came in its key; it waits for a place in the parent.
        await until(lambda: keyed.activity.statistics().pending == 1)
        assert keyed.activity.statistics().running == 2
        assert started == ["a", "b"]
        c = keyed.key_statistics("c")
        assert c is not None
        assert c.running == 1
        gate.set()
        assert [await call for call in calls] == ["a", "b", "c"]
    assert started == ["a", "b", "c"]


async def test_the_body_runs_in_the_keys_activity_with_its_own_locals() -> None:
    tenant = ActivityLocal[str]("tenant", default="none")

    async def remember(value: str) -> tuple[str, str | None]:
        seen = tenant.get()
        tenant.set(value)
        act = current_activity()
        return seen, None if act is None else act.name

    def blocking_read() -> tuple[str, str | None]:
        act = current_activity()
        return tenant.get(), None if act is None else act.name

    async with KeyedActivity(name="shop") as keyed:
        assert await keyed.synchronous_call("a", remember, "alice") == ("none", "shop['a']")
        assert await keyed.synchronous_call("b", remember, "bob") == ("none", "shop['b']")
        assert await keyed.synchronous_call("a", remember, "again") == ("alice", "shop['a']")
        assert await keyed.synchronous_call("b", blocking_read) == ("bob", "shop['b']")
        a = keyed.activity_of("a")
        assert a is not None
        assert a.parent is keyed.activity
        assert sorted(map(str, keyed.keys())) == ["a", "b"]


async def test_blocking_calls_keep_the_keys_order_and_run_in_worker_threads() -> None:
    loop_thread = threading.get_ident()
    seen: list[tuple[int, bool]] = []
    lock = threading.Lock()
    active = [0]

    def work(seq: int) -> int:
        with lock:
            active[0] += 1
            assert active[0] == 1
        seen.append((seq, threading.get_ident() != loop_thread))
        with lock:
            active[0] -= 1
        return seq

    async with KeyedActivity(max_concurrency=4) as keyed:
        calls = [await keyed.asynchronous_call("k", work, seq) for seq in range(10)]
        assert [await call for call in calls] == list(range(10))
    assert seen == [(seq, True) for seq in range(10)]


async def test_a_call_of_the_same_chain_runs_within_its_callers_place() -> None:
    # One place in the parent: a nested call that waited for another would deadlock.
    async def inner(value: int) -> int:
        await anyio.lowlevel.checkpoint()
        return value + 1

    def blocking_inner(value: int) -> int:
        return value * 10

    async with KeyedActivity(max_concurrency=1) as keyed:

        async def outer() -> tuple[int, int, int]:
            same = await keyed.synchronous_call("k", inner, 1)
            other = await keyed.synchronous_call("other", inner, 2)
            threaded = await keyed.synchronous_call("k", blocking_inner, 3)
            return same, other, threaded

        with anyio.fail_after(DEADLINE):
            assert await keyed.synchronous_call("k", outer) == (2, 3, 30)
            call = await keyed.asynchronous_call("k", outer)
            assert await call == (2, 3, 30)


async def test_an_asynchronous_call_made_by_a_key_takes_a_place_of_its_own() -> None:
    gate = anyio.Event()
    order: list[str] = []

    async with KeyedActivity(max_concurrency=1) as keyed:

        async def second() -> None:
            order.append("second")

        async def first() -> Call[None]:
            call = await keyed.asynchronous_call("other", second)
            await gate.wait()
            order.append("first")
            return call

        outer = await keyed.asynchronous_call("k", first)
        await until(lambda: keyed.activity.statistics().pending == 1)
        assert order == []  # "other" waits for the place that "k" holds
        gate.set()
        await (await outer)
    assert order == ["first", "second"]


# -- bounds ---------------------------------------------------------------------------------


async def test_a_hot_key_is_rejected_alone() -> None:
    gate = anyio.Event()
    async with KeyedActivity(per_key=ActivityConfig(max_pending=1), name="hot") as keyed:
        await keyed.asynchronous_call("hot", gate.wait)
        await keyed.asynchronous_call("hot", gate.wait)
        with pytest.raises(AsyncWorkRejectedError, match=r"max_pending=1"):
            await keyed.asynchronous_call("hot", gate.wait)
        with pytest.raises(AsyncWorkRejectedError):
            keyed.asynchronous_call_nowait("hot", gate.wait)
        cold = await keyed.asynchronous_call("cold", gate.wait)
        hot = keyed.key_statistics("hot")
        assert hot is not None
        assert (hot.accepted, hot.rejected, hot.running, hot.pending) == (2, 2, 1, 1)
        total = keyed.statistics()
        assert (total.accepted, total.rejected, total.running, total.pending) == (3, 2, 2, 1)
        check_balanced(total)
        gate.set()
        await cold
    total = keyed.statistics()
    assert (total.accepted, total.rejected, total.completed) == (3, 2, 3)


async def test_a_key_waits_for_room_with_overflow_wait() -> None:
    gate = anyio.Event()
    per_key = ActivityConfig(max_pending=0, overflow=Overflow.WAIT)
    async with KeyedActivity(per_key=per_key, idle_timeout=0.001) as keyed:
        first = await keyed.asynchronous_call("k", gate.wait)
        async with anyio.create_task_group() as group:
            group.start_soon(keyed.asynchronous_call, "k", gate.wait)
            await until(lambda: keyed.activity.statistics().running == 1)
            await anyio.sleep(0.01)  # past idle_timeout: the key is busy, and kept
            assert keyed.keys() == ["k"]
            gate.set()
        await first
    assert keyed.statistics().completed == 2


async def test_max_keys_rejects_when_every_key_is_busy_and_evicts_an_idle_one() -> None:
    gate = anyio.Event()
    async with KeyedActivity(max_keys=2, idle_timeout=None, name="few") as keyed:
        await keyed.synchronous_call("idle", anyio.lowlevel.checkpoint)
        idle = keyed.activity_of("idle")
        busy = await keyed.asynchronous_call("busy", gate.wait)
        assert keyed.keys() == ["idle", "busy"]
        # A new key evicts the key that is idle.
        await keyed.synchronous_call("new", anyio.lowlevel.checkpoint)
        assert keyed.keys() == ["busy", "new"]
        assert idle is not None
        await until(lambda: "closed" in repr(idle))
        with pytest.raises(ActivityClosedError):
            await idle.asynchronous_call(anyio.lowlevel.checkpoint)
        # With both keys busy, a third is refused at once, by all three methods.
        new = await keyed.asynchronous_call("new", gate.wait)
        with pytest.raises(AsyncWorkRejectedError, match=r"max_keys=2"):
            await keyed.asynchronous_call("third", anyio.lowlevel.checkpoint)
        with pytest.raises(AsyncWorkRejectedError, match=r"max_keys=2"):
            keyed.asynchronous_call_nowait("third", anyio.lowlevel.checkpoint)
        with pytest.raises(AsyncWorkRejectedError, match=r"max_keys=2"):
            await keyed.synchronous_call("third", anyio.lowlevel.checkpoint)
        assert keyed.keys() == ["busy", "new"]
        total = keyed.statistics()
        assert (total.accepted, total.rejected, total.running, total.completed) == (4, 3, 2, 2)
        check_balanced(total)
        gate.set()
        await busy
        await new
    total = keyed.statistics()
    assert (total.accepted, total.rejected, total.completed) == (4, 3, 4)


async def test_the_key_idle_the_longest_is_evicted_first() -> None:
    async with KeyedActivity(max_keys=3, idle_timeout=None) as keyed:
        for key in ("a", "b", "c"):
            await keyed.synchronous_call(key, anyio.lowlevel.checkpoint)
        await keyed.synchronous_call("a", anyio.lowlevel.checkpoint)  # b is now the oldest
        await keyed.synchronous_call("d", anyio.lowlevel.checkpoint)
        assert keyed.keys() == ["c", "a", "d"]


async def test_an_idle_key_is_closed_after_idle_timeout_and_made_again() -> None:
    mark = ActivityLocal[str]("mark", default="fresh")

    async def set_mark() -> str:
        seen = mark.get()
        mark.set("set")
        return seen

    async with KeyedActivity(idle_timeout=0.02) as keyed:
        assert await keyed.synchronous_call("k", set_mark) == "fresh"
        first = keyed.activity_of("k")
        assert first is not None
        await until(lambda: keyed.keys() == [])
        await until(lambda: "closed" in repr(first))
        assert keyed.key_statistics("k") is None
        assert await keyed.synchronous_call("k", set_mark) == "fresh"
        second = keyed.activity_of("k")
        assert second is not None
        assert second is not first
        total = keyed.statistics()
        assert (total.accepted, total.completed) == (2, 2)


async def test_a_busy_key_is_not_closed_however_long_it_runs() -> None:
    gate = anyio.Event()
    async with KeyedActivity(idle_timeout=0.001) as keyed:
        call = await keyed.asynchronous_call("k", gate.wait)
        child = keyed.activity_of("k")
        await anyio.sleep(0.02)
        assert keyed.keys() == ["k"]
        assert keyed.activity_of("k") is child
        gate.set()
        await call
        await until(lambda: keyed.keys() == [])


async def test_nothing_accepted_is_lost_when_eviction_races_with_new_calls() -> None:
    rng = random.Random(17)
    serial = Serial()
    sequence: dict[str, int] = {}
    accepted: dict[str, list[int]] = {}
    calls: list[Call[int]] = []
    rejected = 0
    keys = ["a", "b", "c", "d"]
    async with KeyedActivity(max_keys=2, idle_timeout=0.0005, max_concurrency=3) as keyed:
        for _ in range(400):
            key = rng.choice(keys)
            seq = sequence[key] = sequence.get(key, -1) + 1
            how = rng.randrange(4)
            try:
                if how == 0:
                    calls.append(await keyed.asynchronous_call(key, serial.job, key, seq, 0))
                elif how == 1:
                    calls.append(keyed.asynchronous_call_nowait(key, serial.job, key, seq, 1))
                elif how == 2:
                    await keyed.synchronous_call(key, serial.job, key, seq, 1)
                else:
                    await anyio.sleep(0.0005 * rng.random())  # let idle keys be retired
                    continue
            except AsyncWorkRejectedError:
                rejected += 1  # max_keys: both live keys busy
                continue
            accepted.setdefault(key, []).append(seq)
        with anyio.fail_after(DEADLINE):
            for call in calls:
                await call
        total = keyed.statistics()
        count = sum(map(len, accepted.values()))
        assert (total.accepted, total.completed, total.rejected) == (count, count, rejected)
        check_balanced(total)
    assert serial.overlaps == 0
    assert {k: v for k, v in serial.order.items() if v} == accepted
    assert rejected > 0  # the race was run with keys busy, too


async def test_a_call_for_a_key_whose_activity_is_closing_gets_a_new_one() -> None:
    for _ in range(50):
        async with KeyedActivity(max_keys=1, idle_timeout=None) as keyed:
            await keyed.synchronous_call("a", anyio.lowlevel.checkpoint)
            old = keyed.activity_of("a")
            # "b" evicts "a", whose activity is closed in the background...
            await keyed.synchronous_call("b", anyio.lowlevel.checkpoint)
            # ...while "a" is called again at once: a new activity takes it.
            await keyed.synchronous_call("a", anyio.lowlevel.checkpoint)
            assert keyed.activity_of("a") is not old
            call = keyed.asynchronous_call_nowait("a", anyio.lowlevel.checkpoint)
            assert keyed.activity_of("a") is not old
            await call
            assert call.status is CallStatus.COMPLETED
        assert keyed.statistics().completed == 4


# -- cancellation and failures ------------------------------------------------------------


async def test_cancelled_calls_leave_the_key_going_and_the_counts_exact() -> None:
    gate = anyio.Event()
    ran: list[str] = []

    async def step(name: str) -> str:
        ran.append(name)
        return name

    async with KeyedActivity(name="c") as keyed:
        running = await keyed.asynchronous_call("k", gate.wait)
        pending = await keyed.asynchronous_call("k", step, "pending")
        coroutine = await keyed.asynchronous_call("k", step("coroutine object"))
        after = await keyed.asynchronous_call("k", step, "after")
        pending.cancel("changed my mind")
        coroutine.cancel()
        running.cancel()
        with pytest.raises(CallCancelledError):
            await running
        assert await after == "after"
        assert pending.status is CallStatus.CANCELLED
        assert coroutine.status is CallStatus.CANCELLED
        assert ran == ["after"]
        # A synchronous caller cancelled while it waits for its turn.
        blocker = await keyed.asynchronous_call("k", gate.wait)
        with anyio.move_on_after(0.01):
            await keyed.synchronous_call("k", step, "never")
        gate.set()
        await blocker
        assert await keyed.synchronous_call("k", step, "last") == "last"
        stats = keyed.key_statistics("k")
        assert stats is not None
        assert (stats.accepted, stats.completed, stats.cancelled) == (7, 3, 4)
        check_balanced(stats)
    assert ran == ["after", "last"]


async def test_unobserved_failures_are_raised_at_exit_even_from_closed_keys() -> None:
    async def fail(message: str) -> None:
        await anyio.lowlevel.checkpoint()
        raise ValueError(message)

    with pytest.raises(ExceptionGroup) as caught:
        async with KeyedActivity(max_keys=1, idle_timeout=None, name="f") as keyed:
            call = await keyed.asynchronous_call("a", fail, "evicted key")
            await until(call.done)
            await keyed.synchronous_call("b", anyio.lowlevel.checkpoint)  # evicts "a"
            await keyed.asynchronous_call("b", fail, "live key")
            observed = await keyed.asynchronous_call("b", fail, "observed")
            with pytest.raises(ValueError, match="observed"):
                await observed
    messages = sorted(str(error) for error in caught.value.exceptions)
    assert messages == ["evicted key", "live key"]
    assert keyed.statistics().failed == 3


async def test_a_failure_of_a_synchronous_call_is_raised_to_its_caller() -> None:
    def fail() -> None:
        raise KeyError("nope")

    async with KeyedActivity() as keyed:
        with pytest.raises(KeyError):
            await keyed.synchronous_call("k", fail)
        assert keyed.statistics().failed == 1


async def test_the_block_raising_cancels_the_keys_work() -> None:
    gate = anyio.Event()
    with pytest.raises(RuntimeError, match="block"):
        async with KeyedActivity() as keyed:
            call = await keyed.asynchronous_call("k", gate.wait)
            raise RuntimeError("block")
    assert call.status is CallStatus.CANCELLED


# -- the API around ------------------------------------------------------------------------


async def test_open_and_aclose_outside_a_block() -> None:
    keyed = await KeyedActivity(name="opened").open()
    assert await keyed.synchronous_call(("user", 7), len, "abc") == 3
    with pytest.raises(ActivityError):
        await keyed.open()
    await keyed.aclose()
    await keyed.aclose()  # closing twice does nothing
    with pytest.raises(ActivityClosedError):
        await keyed.synchronous_call("k", anyio.lowlevel.checkpoint)
    with pytest.raises(ActivityClosedError):
        keyed.asynchronous_call_nowait("k", anyio.lowlevel.checkpoint)
    assert "closed" in repr(keyed)


async def test_the_parent_is_a_child_of_the_current_activity() -> None:
    async with Activity(name="app") as app, KeyedActivity(name="sessions") as keyed:
        assert keyed.activity.parent is app
        assert keyed.name == "sessions"
        await keyed.synchronous_call("s", anyio.lowlevel.checkpoint)
        child = keyed.activity_of("s")
        assert child is not None
        assert child in keyed.activity.children


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"max_keys": 0}, "max_keys"),
        ({"max_keys": True}, "max_keys"),
        ({"idle_timeout": 0}, "idle_timeout"),
        ({"idle_timeout": float("inf")}, "idle_timeout"),
        ({"idle_timeout": "1"}, "idle_timeout"),
        ({"per_key": {"max_concurrency": 2}}, "max_concurrency"),
        ({"per_key": {"synchronization": "none"}}, "synchronization"),
        ({"per_key": {"partition": "p"}}, "partition"),
        ({"per_key": 3}, "per_key"),
        ({"max_concurrency": 0}, "max_concurrency"),
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        KeyedActivity(**options)
    assert caught.value.field == field


async def test_bad_work_is_refused_before_a_key_is_made() -> None:
    class WithOnError:
        async def on_call(self) -> None: ...

        def on_error(self, exc: BaseException) -> None: ...

    async with KeyedActivity() as keyed:
        with pytest.raises(InvalidArgumentError):
            await keyed.asynchronous_call("k", 42)  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue, reportArgumentType]
        with pytest.raises(InvalidArgumentError, match="on_error"):
            await keyed.asynchronous_call("k", WithOnError())
        with pytest.raises(TypeError):
            await keyed.synchronous_call(["unhashable"], anyio.lowlevel.checkpoint)  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue, reportArgumentType]
        assert keyed.keys() == []


async def test_service_objects_and_awaitables_run_as_calls_of_the_key() -> None:
    class Service:
        async def on_call(self) -> str:
            return "async on_call"

    class BlockingService:
        def on_call(self) -> str:
            return "blocking on_call"

    async with KeyedActivity() as keyed:
        assert await keyed.synchronous_call("k", Service()) == "async on_call"
        assert await keyed.synchronous_call("k", BlockingService()) == "blocking on_call"
        call = await keyed.asynchronous_call("k", Service())
        assert await call == "async on_call"
        assert call.name.endswith("Service")


async def test_nowait_on_a_new_key(anyio_backend: Any) -> None:
    async with KeyedActivity() as keyed:
        if anyio_backend[0] == "trio":
            with pytest.raises(AsyncWorkRejectedError, match="needs an await"):
                keyed.asynchronous_call_nowait("new", anyio.lowlevel.checkpoint)
            assert keyed.statistics().rejected == 1
        else:
            call = keyed.asynchronous_call_nowait("new", anyio.lowlevel.checkpoint)
            await call
            assert keyed.statistics().completed == 1


async def test_calls_from_another_thread_are_refused() -> None:
    async with KeyedActivity() as keyed:

        def from_thread() -> None:
            keyed.asynchronous_call_nowait("k", anyio.lowlevel.checkpoint)

        with pytest.raises(ActivityError, match="another thread"):
            await anyio.to_thread.run_sync(from_thread)


async def test_a_storm_of_ten_thousand_calls_over_a_hundred_keys_keeps_each_keys_order() -> None:
    await storm(10_000)


async def storm(count: int) -> None:
    """Calls over 100 keys, some failing, some cancelled: each key's order, exact counts."""
    rng = random.Random(1717)
    serial = Serial()
    calls: list[tuple[str, int, Call[int]]] = []
    sequence: dict[str, int] = {}
    async with KeyedActivity(max_keys=100, max_concurrency=20) as keyed:
        for _ in range(count):
            key = f"key-{rng.randrange(100)}"
            seq = sequence[key] = sequence.get(key, -1) + 1
            fail = rng.random() < 0.05
            steps = rng.randrange(3)
            call = await keyed.asynchronous_call(key, serial.job, key, seq, steps, fail)
            calls.append((key, seq, call))
            if rng.random() < 0.05:
                call.cancel()
        with anyio.fail_after(DEADLINE * 3):
            for _, _, call in calls:
                await call.wait()
        ran = {
            key: [
                seq
                for k, seq, call in calls
                if k == key and call.status in (CallStatus.COMPLETED, CallStatus.FAILED)
            ]
            for key in sequence
        }
        statuses = [call.status for _, _, call in calls]
        total = keyed.statistics()
        assert (total.accepted, total.pending, total.running) == (count, 0, 0)
        assert total.completed == statuses.count(CallStatus.COMPLETED)
        assert total.failed == statuses.count(CallStatus.FAILED) > 0
        assert total.cancelled == statuses.count(CallStatus.CANCELLED) > 0
        check_balanced(total)
        for _, _, call in calls:
            if call.status is CallStatus.FAILED:
                assert isinstance(call.exception(), ValueError)  # observed
    assert serial.overlaps == 0
    assert serial.order == {k: v for k, v in ran.items() if v}


async def test_a_call_times_out_and_its_key_goes_on() -> None:
    gate = anyio.Event()
    async with KeyedActivity() as keyed:
        slow = await keyed.asynchronous_call("k", gate.wait, timeout=0.01)
        after = await keyed.asynchronous_call("k", len, "after")
        with pytest.raises(CallTimeoutError):
            await slow
        assert await after == 5
        with pytest.raises(CallTimeoutError):
            await keyed.synchronous_call("k", gate.wait, timeout=0.01)
        stats = keyed.key_statistics("k")
        assert stats is not None
        assert (stats.failed, stats.completed) == (2, 1)


async def test_a_call_cancelled_while_it_waits_for_a_place_in_the_parent() -> None:
    gate = anyio.Event()
    ran: list[str] = []

    async def mark(name: str) -> None:
        ran.append(name)

    async with KeyedActivity(max_concurrency=1) as keyed:
        holder = await keyed.asynchronous_call("a", gate.wait)
        waiting = await keyed.asynchronous_call("b", mark, "b")
        await until(lambda: keyed.activity.statistics().pending == 1)
        waiting.cancel()
        with pytest.raises(CallCancelledError):
            await waiting
        assert keyed.activity.statistics().pending == 0
        gate.set()
        await holder
        await keyed.synchronous_call("b", mark, "b again")
    assert ran == ["b again"]
    assert keyed.statistics().cancelled == 1
