"""Calls run one after another in one task keep apart: context, cancellation, timeouts.

Under load a task that ran a call goes on with the next queued call instead
of ending (see ``activity._backends._runner``). These tests hold what each
call may still assume: its own context, its own cancellation and timeout,
its own failure, and exact counters.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import pytest

from activity import (
    Activity,
    Call,
    CallCancelledError,
    CallStatus,
    CallTimeoutError,
    HResult,
    Overflow,
)
from activity.pytest_plugin import assert_balanced

pytestmark = pytest.mark.anyio

LIMIT = 10
seen: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="unset")


async def settle(calls: list[Call[Any]]) -> None:
    with anyio.fail_after(LIMIT):
        for call in calls:
            await call.wait()


class TestBackToBack:
    async def test_each_call_keeps_its_own_context(self) -> None:
        async def body(i: int) -> tuple[str, str]:
            before = seen.get()
            seen.set(f"call-{i}")
            await anyio.lowlevel.checkpoint()
            return before, seen.get()

        async with Activity(max_concurrency=1) as act:
            seen.set("block")
            calls = [await act.asynchronous_call(body, i) for i in range(50)]
            await settle(calls)
            assert [c.result() for c in calls] == [("block", f"call-{i}") for i in range(50)]
            assert seen.get() == "block"
            assert_balanced(act.statistics())

    async def test_a_call_cancelled_while_queued_behind_a_running_one_never_runs(
        self,
    ) -> None:
        started: list[int] = []

        async def body(i: int) -> int:
            started.append(i)
            await anyio.lowlevel.checkpoint()
            return i

        async with Activity(max_concurrency=1) as act:
            calls = [await act.asynchronous_call(body, i) for i in range(3)]
            # When the first ends, the second would start in its task: cancel it then.
            calls[0].add_done_callback(lambda _: calls[1].cancel("not wanted"))
            await settle(calls)
        assert calls[0].result() == 0
        assert calls[1].status is CallStatus.CANCELLED
        assert calls[2].result() == 2
        assert 1 not in started or calls[1].status is CallStatus.CANCELLED

    async def test_cancelling_one_call_leaves_the_next_alone(self) -> None:
        gate = anyio.Event()

        async def slow() -> str:
            await gate.wait()
            return "slow"

        async def quick(i: int) -> int:
            await anyio.lowlevel.checkpoint()
            return i

        async with Activity(max_concurrency=1) as act:
            first = await act.asynchronous_call(slow)
            rest = [await act.asynchronous_call(quick, i) for i in range(5)]
            await anyio.lowlevel.checkpoint()
            assert first.cancel("enough")
            await settle([first, *rest])
            assert first.status is CallStatus.CANCELLED
            assert isinstance(first.exception(), CallCancelledError)
            assert [c.result() for c in rest] == list(range(5))
            assert_balanced(act.statistics())

    async def test_a_call_that_cancels_itself_ends_cancelled_and_the_next_runs(
        self,
    ) -> None:
        handle: list[Call[Any]] = []

        async def self_cancelling() -> None:
            handle[0].cancel("by itself")
            await anyio.sleep_forever()

        async def after() -> str:
            await anyio.lowlevel.checkpoint()
            return "after"

        async with Activity(max_concurrency=1) as act:
            call = await act.asynchronous_call(self_cancelling)
            handle.append(call)
            nxt = await act.asynchronous_call(after)
            await settle([call, nxt])
            assert call.status is CallStatus.CANCELLED
            assert nxt.result() == "after"

    async def test_a_timeout_ends_its_call_only(self) -> None:
        async def sleeper() -> None:
            await anyio.sleep_forever()

        async def quick(i: int) -> int:
            await anyio.lowlevel.checkpoint()
            return i

        async with Activity(max_concurrency=1) as act:
            timed = await act.asynchronous_call(sleeper, timeout=0.05)
            rest = [await act.asynchronous_call(quick, i) for i in range(3)]
            await settle([timed, *rest])
            assert isinstance(timed.exception(), CallTimeoutError)
            assert [c.result() for c in rest] == [0, 1, 2]

    async def test_a_cancel_scope_inside_a_call_stays_inside_it(self) -> None:
        async def scoped() -> bool:
            with anyio.move_on_after(0.01) as scope:
                await anyio.sleep_forever()
            return scope.cancelled_caught

        async def after() -> str:
            await anyio.lowlevel.checkpoint()
            await anyio.lowlevel.checkpoint()
            return "after"

        async with Activity(max_concurrency=1) as act:
            calls = [await act.asynchronous_call(scoped), await act.asynchronous_call(after)]
            await settle(calls)
            assert calls[0].result() is True
            assert calls[1].result() == "after"

    async def test_failures_stay_with_their_call(self) -> None:
        async def body(i: int) -> int:
            await anyio.lowlevel.checkpoint()
            if i % 3 == 0:
                raise ValueError(i)
            return i

        async with Activity(max_concurrency=2, max_pending=100) as act:
            calls = [await act.asynchronous_call(body, i) for i in range(30)]
            await settle(calls)
            for i, call in enumerate(calls):
                if i % 3 == 0:
                    assert isinstance(call.exception(), ValueError)
                else:
                    assert call.result() == i
            stats = act.statistics()
            assert (stats.completed, stats.failed) == (20, 10)
            assert_balanced(act.statistics())

    async def test_waiting_admission_runs_every_call_once(self) -> None:
        ran: list[int] = []

        async def body(i: int) -> None:
            ran.append(i)
            await anyio.lowlevel.checkpoint()

        async with Activity(max_concurrency=4, max_pending=4, overflow=Overflow.WAIT) as act:
            calls = [await act.asynchronous_call(body, i) for i in range(200)]
            await settle(calls)
            assert sorted(ran) == list(range(200))
            assert act.statistics().completed == 200
            assert_balanced(act.statistics())

    async def test_the_activity_s_cancel_reaches_the_call_a_runner_took_over(self) -> None:
        # The second call runs on the task that ran the first, handed over with
        # no entry of its own in the activity's set of running calls: the
        # activity's cancel() finds it through the runner.
        first_done = anyio.Event()
        started: list[int] = []

        async def body(i: int) -> int:
            started.append(i)
            if i == 0:
                return i
            first_done.set()
            await anyio.sleep_forever()
            return i  # pragma: no cover

        async with Activity(max_concurrency=1, max_pending=10) as act:
            calls = [await act.asynchronous_call(body, i) for i in range(3)]
            with anyio.fail_after(LIMIT):
                await first_done.wait()
            assert started == [0, 1]
            act.cancel("enough")
            await settle(calls)
            statuses = [c.status for c in calls]
            assert statuses == [CallStatus.COMPLETED, CallStatus.CANCELLED, CallStatus.CANCELLED]
            assert started == [0, 1]  # the queued third never ran
            stats = act.statistics()
            assert (stats.running, stats.pending, stats.cancelled) == (0, 0, 2)
            assert_balanced(stats)

    async def test_the_activity_s_cancel_reaches_a_blocking_call_a_runner_handed_on(
        self,
    ) -> None:
        # A runner hands a blocking call on to a thread and ends: the call is
        # back in the activity's set of running calls, and cancel() ends it.
        release = anyio.Event()
        entered = anyio.Event()
        gate = threading.Event()

        async def first() -> str:
            await release.wait()
            return "first"

        def blocking() -> str:
            entered_from_thread()
            gate.wait(LIMIT)
            return "blocking"

        token = anyio.lowlevel.current_token()

        def entered_from_thread() -> None:
            anyio.from_thread.run_sync(entered.set, token=token)

        async with Activity(max_concurrency=1, max_pending=10) as act:
            calls = [
                await act.asynchronous_call(first),
                await act.asynchronous_call(blocking),
            ]
            release.set()
            with anyio.fail_after(LIMIT):
                await entered.wait()
            assert calls[1].status is CallStatus.RUNNING
            act.cancel("enough")
            try:
                await settle(calls)
            finally:
                gate.set()
            assert [c.status for c in calls] == [CallStatus.COMPLETED, CallStatus.CANCELLED]
            assert_balanced(act.statistics())

    async def test_the_freed_place_goes_to_any_kind_of_call_in_order(self) -> None:
        # The call that takes a runner's place may be a coroutine function, a
        # coroutine object, a coroutine function that fails before its first
        # step, a blocking callable (run elsewhere), a callable object, or a
        # failing HResult.
        order: list[str] = []

        async def coroutine(tag: str) -> str:
            order.append(tag)
            await anyio.lowlevel.checkpoint()
            return tag

        def blocking(tag: str) -> str:
            order.append(tag)
            return tag

        class Callable:
            async def __call__(self, tag: str) -> str:
                order.append(tag)
                return tag

        async def fails_by_hresult(tag: str) -> HResult:
            order.append(tag)
            await anyio.lowlevel.checkpoint()
            return HResult.E_FAIL

        too_many: Any = functools.partial(coroutine, "d")  # called with one more: TypeError
        async with Activity(max_concurrency=1, max_pending=100) as act:
            calls = [
                await act.asynchronous_call(coroutine, "a"),
                await act.asynchronous_call(coroutine("b")),
                await act.asynchronous_call(too_many, "extra"),
                await act.asynchronous_call(blocking, "c"),
                await act.asynchronous_call(Callable(), "e"),
                await act.asynchronous_call(fails_by_hresult, "f"),
                await act.asynchronous_call(coroutine, "g"),
            ]
            await settle(calls)
            assert order == ["a", "b", "c", "e", "f", "g"]
            assert [calls[i].result() for i in (0, 1, 3, 4, 6)] == ["a", "b", "c", "e", "g"]
            assert isinstance(calls[2].exception(), TypeError)
            assert calls[5].hresult == HResult.E_FAIL
            assert calls[5].exception() is not None  # observed: not raised at the exit
            stats = act.statistics()
            assert (stats.completed, stats.failed) == (5, 2)
            assert_balanced(stats)


@pytest.mark.parametrize(
    "anyio_backend",
    [
        pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    ],
)
class TestTheTaskItRunsIn:
    async def test_cancelling_the_current_task_ends_the_call_and_not_the_next(self) -> None:
        async def cancels_its_task() -> None:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            await asyncio.sleep(0)

        async def after() -> str:
            await asyncio.sleep(0)
            return "after"

        async with Activity(max_concurrency=1) as act:
            first = await act.asynchronous_call(cancels_its_task)
            nxt = await act.asynchronous_call(after)
            await settle([first, nxt])
            assert first.status is CallStatus.CANCELLED
            assert nxt.result() == "after"
            assert_balanced(act.statistics())

    async def test_a_runner_task_cancelled_before_its_first_step_ends_its_call(self) -> None:
        # Code that cancels every task (a shutdown's sweep) may reach a runner
        # before its first step: the call ends cancelled without running, as a
        # task of its own would, the calls queued behind it still run, and the
        # activity can close.
        ran: list[str] = []

        async def body(tag: str) -> str:
            ran.append(tag)
            await asyncio.sleep(0)
            return tag

        async with Activity(max_concurrency=1, max_pending=10) as act:
            before = asyncio.all_tasks()
            first = await act.asynchronous_call(body, "first")
            behind = await act.asynchronous_call(body, "behind")
            started = asyncio.all_tasks() - before
            assert len(started) == 1  # the runner of the first call, not yet stepped
            for task in started:
                task.cancel()
            await settle([first, behind])
            assert first.status is CallStatus.CANCELLED
            assert behind.result() == "behind"
            assert ran == ["behind"]
            assert_balanced(act.statistics())

    async def test_asyncio_timeout_inside_a_call_stays_inside_it(self) -> None:
        async def timed() -> bool:
            try:
                async with asyncio.timeout(0.01):
                    await asyncio.sleep(LIMIT)
            except TimeoutError:
                return True
            return False

        async def after() -> str:
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            return "after"

        async with Activity(max_concurrency=1) as act:
            calls = [await act.asynchronous_call(timed), await act.asynchronous_call(after)]
            await settle(calls)
            assert calls[0].result() is True
            assert calls[1].result() == "after"


@pytest.mark.parametrize("scope_first", [True, False], ids=["scope-first", "call-first"])
async def test_a_cancel_that_meets_a_cancel_scope_of_the_body_is_not_swallowed(
    scope_first: bool,
) -> None:
    # A cancel scope inside the body that is cancelled in the same step as the
    # call (its deadline passing as Call.cancel() comes) must not take the call's
    # cancellation for its own: the call ends CANCELLED instead of running on.
    scopes: list[anyio.CancelScope] = []
    inside = anyio.Event()
    rounds = 0

    async def body() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            with anyio.CancelScope() as scope:
                scopes.append(scope)
                inside.set()
                await anyio.Event().wait()

    async with Activity(name="race", shutdown_timeout=1) as act:
        call = act.asynchronous_call_nowait(body)
        with anyio.fail_after(LIMIT):
            await inside.wait()
        if scope_first:
            scopes[-1].cancel()
            call.cancel()
        else:
            call.cancel()
            scopes[-1].cancel()
        with anyio.fail_after(LIMIT):
            await call.wait()
        assert call.status is CallStatus.CANCELLED
        assert rounds == 1
        # The runner took back its request: the next call is not cancelled.
        assert await act.synchronous_call(asyncio_free_answer) == 42
        assert_balanced(act.statistics())


async def asyncio_free_answer() -> int:
    await anyio.lowlevel.checkpoint()
    return 42
