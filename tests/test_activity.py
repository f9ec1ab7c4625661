"""The contract of docs/design.md, on asyncio, uvloop and trio."""

# Names bound inside `with pytest.raises(...)` blocks are read after them.
# pyright: reportPossiblyUnboundVariable=false

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
import random
import sys
import threading
import warnings
import weakref
from typing import Any

import anyio
import anyio.abc
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
    FailurePolicy,
    HResult,
    InvalidArgumentError,
    Overflow,
    WrongThreadError,
    create_activity,
    current_activity,
)
from activity._backends import _asyncio
from activity._context import frame_var
from activity._workers import Workers
from activity.pytest_plugin import assert_balanced

pytestmark = pytest.mark.anyio


async def noop() -> None:
    pass


async def echo(value: Any) -> Any:
    await anyio.lowlevel.checkpoint()
    return value


async def boom(message: str = "boom") -> None:
    await anyio.lowlevel.checkpoint()
    raise ValueError(message)


class Gate:
    """Calls that park until the test opens the gate; no sleeps involved."""

    def __init__(self) -> None:
        self.opened = anyio.Event()
        self.entered = 0

    async def wait(self, value: Any = None) -> Any:
        self.entered += 1
        await self.opened.wait()
        return value

    def open(self) -> None:
        self.opened.set()


class ThreadGate:
    """Blocking calls that park their worker thread until the test opens the gate."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.opened = threading.Event()
        self.finished = threading.Event()
        self.returned: list[Any] = []

    def park(self, value: Any = None) -> Any:
        self.started.set()
        self.opened.wait(30)
        self.returned.append(value)
        self.finished.set()
        return value

    async def wait_started(self) -> None:
        await anyio.to_thread.run_sync(self.started.wait)

    async def wait_finished(self) -> None:
        assert await anyio.to_thread.run_sync(self.finished.wait, 30)

    def open(self) -> None:
        self.opened.set()


class TestCreation:
    def test_options_and_config(self) -> None:
        act = Activity(max_concurrency=3, name="x")
        assert act.config.max_concurrency == 3
        assert act.name == "x"
        config = ActivityConfig(max_pending=7)
        act2 = create_activity(config, max_concurrency=2)
        assert (act2.config.max_pending, act2.config.max_concurrency) == (7, 2)
        assert Activity({"max_pending": 4}).config.max_pending == 4
        assert act.id != act2.id
        assert Activity().name.startswith("activity-")

    def test_bad_option_names_the_field(self) -> None:
        with pytest.raises(InvalidArgumentError, match="max_concurrency") as info:
            Activity(max_concurrency=0)
        assert info.value.hresult is HResult.E_INVALIDARG
        with pytest.raises(InvalidArgumentError, match="max_concurency"):
            Activity(max_concurency=3)
        with pytest.raises(InvalidArgumentError, match="config"):
            Activity(42)  # type: ignore[arg-type]

    async def test_not_open_yet(self) -> None:
        act = Activity()
        with pytest.raises(ActivityClosedError, match="not open yet"):
            await act.asynchronous_call(noop)

    async def test_entered_only_once(self) -> None:
        act = Activity()
        async with act:
            pass
        with pytest.raises(ActivityError, match="only once"):
            async with act:
                pass

    async def test_closed_after_exit(self) -> None:
        async with Activity() as act:
            pass
        with pytest.raises(ActivityClosedError, match="closed"):
            await act.asynchronous_call(noop)
        coro = echo(1)
        with pytest.raises(ActivityClosedError):
            await act.synchronous_call(coro)


class TestAdmission:
    async def test_rejects_at_exactly_concurrency_plus_pending(self) -> None:
        gate = Gate()
        async with Activity(max_concurrency=3, max_pending=4) as act:
            calls = [await act.asynchronous_call(gate.wait, i) for i in range(7)]
            stats = act.statistics()
            assert (stats.accepted, stats.running, stats.pending) == (7, 3, 4)
            with pytest.raises(AsyncWorkRejectedError) as info:
                await act.asynchronous_call(gate.wait, 7)
            assert info.value.hresult is HResult.CO_E_ASYNC_WORK_REJECTED
            stats = act.statistics()
            assert (stats.accepted, stats.rejected) == (7, 1)
            gate.open()
            assert [await c for c in calls] == list(range(7))
        assert act.statistics().completed == 7

    async def test_zero_pending_rejects_when_all_run(self) -> None:
        gate = Gate()
        async with Activity(max_concurrency=1, max_pending=0) as act:
            call = await act.asynchronous_call(gate.wait)
            with pytest.raises(AsyncWorkRejectedError):
                await act.asynchronous_call(gate.wait)
            gate.open()
            await call

    async def test_fifo_start_order(self) -> None:
        started: list[int] = []
        gate = Gate()

        async def record(i: int) -> None:
            started.append(i)
            await gate.wait()

        async with Activity(max_concurrency=1, max_pending=50) as act:
            for i in range(40):
                await act.asynchronous_call(record, i)
            gate.open()
        assert started == list(range(40))

    async def test_fifo_slots_go_to_the_oldest_pending(self) -> None:
        gates = [Gate() for _ in range(12)]
        async with Activity(max_concurrency=3, max_pending=50) as act:
            calls = [await act.asynchronous_call(g.wait, i) for i, g in enumerate(gates)]
            for done in range(len(calls)):
                running = [i for i, c in enumerate(calls) if c.status is CallStatus.RUNNING]
                assert running == list(range(done, min(done + 3, len(calls))))
                gates[done].open()
                await calls[done]

    async def test_rejected_coroutine_object_is_closed(self) -> None:
        gate = Gate()
        async with Activity(max_concurrency=1, max_pending=0) as act:
            await act.asynchronous_call(gate.wait)
            coro = echo(1)
            with pytest.raises(AsyncWorkRejectedError):
                await act.asynchronous_call(coro)
            assert (
                inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
            )  # closed: no "never awaited" warning
            gate.open()
        gc.collect()

    async def test_wait_overflow_admits_in_order(self) -> None:
        gate = Gate()
        async with Activity(max_concurrency=1, max_pending=1, overflow=Overflow.WAIT) as act:
            first = await act.asynchronous_call(gate.wait, "a")
            second = await act.asynchronous_call(gate.wait, "b")
            admitted: list[str] = []

            async def submit(value: str) -> None:
                call = await act.asynchronous_call(gate.wait, value)
                admitted.append(value)
                assert await call == value

            async with anyio.create_task_group() as tg:
                tg.start_soon(submit, "c")
                await anyio.lowlevel.checkpoint()
                tg.start_soon(submit, "d")
                await anyio.lowlevel.checkpoint()
                assert admitted == []
                assert act.statistics().accepted == 2
                gate.open()
            assert admitted == ["c", "d"]
            assert await first == "a"
            assert await second == "b"

    async def test_wait_overflow_rejects_after_admission_timeout(self) -> None:
        gate = Gate()
        async with Activity(
            max_concurrency=1, max_pending=0, overflow=Overflow.WAIT, admission_timeout=0.01
        ) as act:
            await act.asynchronous_call(gate.wait)
            coro = echo(1)
            with pytest.raises(AsyncWorkRejectedError, match="after waiting"):
                await act.asynchronous_call(coro)
            assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
            stats = act.statistics()
            assert (stats.accepted, stats.rejected) == (1, 1)
            gate.open()

    async def test_waiters_refused_when_activity_closes(self) -> None:
        gate = Gate()
        errors: list[BaseException] = []
        async with Activity(max_concurrency=1, max_pending=0, overflow=Overflow.WAIT) as act:
            await act.asynchronous_call(gate.wait)

            async def submit() -> None:
                try:
                    await act.asynchronous_call(gate.wait)
                except ActivityClosedError as exc:
                    errors.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(submit)
                await anyio.lowlevel.checkpoint()
                act.cancel("closing")
        assert len(errors) == 1
        assert act.statistics().accepted == 1

    async def test_a_submitter_cancelled_while_parked_leaves_the_line(self) -> None:
        gate = Gate()
        async with Activity(max_concurrency=1, max_pending=0, overflow=Overflow.WAIT) as act:
            first = await act.asynchronous_call(gate.wait, "first")
            cancelled_coro = echo("never")
            admitted: list[Call[Any]] = []

            async def submit_behind() -> None:
                admitted.append(await act.asynchronous_call(gate.wait, "behind"))

            async with anyio.create_task_group() as tg:
                with anyio.CancelScope() as scope:
                    tg.start_soon(submit_behind)  # parks too, once this task waits
                    scope.cancel()
                    await act.asynchronous_call(cancelled_coro)
                assert scope.cancelled_caught
                gate.open()
            assert inspect.getcoroutinestate(cancelled_coro) == inspect.CORO_CLOSED
            assert await first == "first"
            assert [await call for call in admitted] == ["behind"]
            stats = act.statistics()
            assert (stats.accepted, stats.rejected, stats.completed) == (2, 0, 2)
            assert_balanced(stats)

    def test_a_parked_submitters_signal_outlives_a_cancelled_wait(self) -> None:
        async def main() -> None:
            loop = asyncio.get_running_loop()
            signal = _asyncio.Signal(loop)
            waiting = asyncio.ensure_future(signal.wait())
            await asyncio.sleep(0)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert not signal.is_set()
            signal.set()
            assert signal.is_set()
            assert await signal.wait() is True  # a new future, already done
            early = _asyncio.Signal(loop)
            early.set()
            early.set()  # twice is once
            assert await early.wait() is True

        asyncio.run(main())

    async def test_synchronous_call_waits_its_turn(self) -> None:
        gate = Gate()
        async with Activity(max_concurrency=1, max_pending=0) as act:
            running = await act.asynchronous_call(gate.wait, "first")
            results: list[Any] = []

            async def sync() -> None:
                results.append(await act.synchronous_call(echo, "second"))

            async with anyio.create_task_group() as tg:
                tg.start_soon(sync)
                await anyio.lowlevel.checkpoint()
                assert results == []
                gate.open()
            assert results == ["second"]
            assert await running == "first"
            assert act.statistics().rejected == 0


class TestSynchronousCallLifecycle:
    """A synchronous call of a coroutine function, from start to end, as the caller sees it."""

    async def test_counted_while_it_runs(self) -> None:
        async with Activity() as act:

            async def look() -> tuple[int, int]:
                await anyio.lowlevel.checkpoint()
                stats = act.statistics()
                assert_balanced(stats)
                return stats.accepted, stats.running

            assert await act.synchronous_call(look) == (1, 1)
            stats = act.statistics()
            assert (stats.accepted, stats.running, stats.completed) == (1, 0, 1)

    async def test_cancelled_by_the_activity(self) -> None:
        started = anyio.Event()
        outcome: list[BaseException] = []

        async def caller(act: Activity) -> None:
            async def park() -> None:
                started.set()
                await anyio.sleep_forever()

            try:
                await act.synchronous_call(park)
            except CallCancelledError as exc:
                outcome.append(exc)
            # The caller's own task was not left cancelled: it goes on.
            await anyio.lowlevel.checkpoint()
            outcome.append(KeyboardInterrupt())  # a marker, never raised

        async with Activity() as act, anyio.create_task_group() as tg:
            tg.start_soon(caller, act)
            await started.wait()
            act.cancel("stop")
        assert [type(exc) for exc in outcome] == [CallCancelledError, KeyboardInterrupt]
        assert "stop" in str(outcome[0])
        stats = act.statistics()
        assert_balanced(stats)
        assert (stats.accepted, stats.cancelled) == (1, 1)

    async def test_cancelled_by_the_activity_while_a_nested_call_runs(self) -> None:
        # Both calls run in the caller's task: each is cancelled, each is counted
        # once, and the caller gets the outer call's CallCancelledError.
        started = anyio.Event()
        outcome: list[BaseException] = []

        async def caller(act: Activity) -> None:
            async def inner() -> None:
                started.set()
                await anyio.sleep_forever()

            async def outer() -> None:
                await act.synchronous_call(inner)

            try:
                await act.synchronous_call(outer)
            except CallCancelledError as exc:
                outcome.append(exc)
            await anyio.lowlevel.checkpoint()  # not left cancelled

        async with Activity() as act, anyio.create_task_group() as tg:
            tg.start_soon(caller, act)
            await started.wait()
            assert act.statistics().running == 2
            act.cancel("stop")
        assert [type(exc) for exc in outcome] == [CallCancelledError]
        assert "outer" in str(outcome[0])
        stats = act.statistics()
        assert_balanced(stats)
        assert (stats.accepted, stats.cancelled, stats.running) == (2, 2, 0)

    async def test_a_blocking_call_cancelled_by_the_activity(self) -> None:
        gate = ThreadGate()
        outcome: list[BaseException] = []

        async def caller(act: Activity) -> None:
            try:
                await act.synchronous_call(gate.park)
            except CallCancelledError as exc:
                outcome.append(exc)

        try:
            async with Activity() as act, anyio.create_task_group() as tg:
                tg.start_soon(caller, act)
                await gate.wait_started()
                act.cancel("stop")
        finally:
            gate.open()
        assert [type(exc) for exc in outcome] == [CallCancelledError]
        stats = act.statistics()
        assert_balanced(stats)
        assert (stats.accepted, stats.cancelled, stats.completed) == (1, 1, 0)

    async def test_a_blocking_call_sees_its_activity(self) -> None:
        tenant = ActivityLocal[str]("tenant")

        def look() -> tuple[Activity | None, str, str]:
            return current_activity(), tenant.get(), threading.current_thread().name

        async with Activity() as act:
            tenant.set("acme")
            seen, value, thread = await act.synchronous_call(look)
        assert (seen, value) == (act, "acme")
        assert thread != threading.current_thread().name
        assert act.statistics().completed == 1

    async def test_a_plain_function_that_returns_a_coroutine_fails(self) -> None:
        def make() -> Any:
            return echo(1)  # never awaited: the activity closes it

        async with Activity() as act:
            with pytest.raises(InvalidArgumentError, match="returned a coroutine"):
                await act.synchronous_call(make)
            call = await act.asynchronous_call(make)
            await call.wait()
            assert isinstance(call.exception(), InvalidArgumentError)
        stats = act.statistics()
        assert_balanced(stats)
        assert (stats.accepted, stats.failed) == (2, 2)

    async def test_the_callers_cancellation_propagates(self) -> None:
        started = anyio.Event()
        async with Activity() as act:

            async def park() -> None:
                started.set()
                await anyio.sleep_forever()

            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(functools.partial(act.synchronous_call, park))
                    await started.wait()
                    scope.cancel()
            assert scope.cancelled_caught
            stats = act.statistics()
            assert_balanced(stats)
            assert (stats.accepted, stats.cancelled, stats.failed) == (1, 1, 0)
            # The activity is still open for business.
            assert await act.synchronous_call(echo, "after") == "after"

    async def test_idle_waiters_are_told(self) -> None:
        gate = Gate()
        async with Activity() as act:
            idle: list[int] = []

            async def wait_idle() -> None:
                await act.wait_idle()
                idle.append(act.statistics().completed)

            async def through_the_gate() -> None:
                await act.synchronous_call(gate.wait)

            async with anyio.create_task_group() as tg:
                tg.start_soon(through_the_gate)
                await anyio.lowlevel.checkpoint()
                tg.start_soon(wait_idle)
                await anyio.lowlevel.checkpoint()
                assert idle == []
                gate.open()
            assert idle == [1]

    async def test_context_changes_stay_in_the_call(self) -> None:
        import contextvars

        var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
        var.set("caller")
        async with Activity() as act:

            async def change() -> tuple[str, Activity | None]:
                seen = var.get()
                var.set("call")
                await anyio.lowlevel.checkpoint()
                return seen, current_activity()

            assert await act.synchronous_call(change) == ("caller", act)
            assert var.get() == "caller"

    async def test_nothing_is_kept_after_the_call(self) -> None:
        # Without the garbage collector, the call and its context must go as soon as
        # the result is returned: no reference cycle between the call and its context.
        async def work(payload: object) -> int:
            await anyio.lowlevel.checkpoint()
            return 1

        payload = Gate()
        fn_ref = weakref.ref(work)
        payload_ref = weakref.ref(payload)
        async with Activity() as act:
            gc.disable()
            try:
                assert await act.synchronous_call(work, payload) == 1
                del work, payload
                assert fn_ref() is None
                assert payload_ref() is None
            finally:
                gc.enable()

    async def test_its_frame_is_freed_once_it_returns(self) -> None:
        # What the body sees as its frame starts its own call chain (it is its own
        # causality): that reference is dropped at the end, so no cycle is left.
        frames: list[weakref.ref[Any]] = []

        async def work() -> None:
            frame = frame_var.get()
            assert frame is not None
            frames.append(weakref.ref(frame))
            await anyio.lowlevel.checkpoint()

        async with Activity() as act:
            gc.disable()
            try:
                await act.synchronous_call(work)
                assert frames[0]() is None
            finally:
                gc.enable()

    async def test_an_asynchronous_call_is_freed_once_dropped(self) -> None:
        async def work() -> int:
            await anyio.lowlevel.checkpoint()
            return 1

        fn_ref = weakref.ref(work)
        async with Activity() as act:
            gc.disable()
            try:
                call = await act.asynchronous_call(work)
                assert await call == 1
                del work, call
                await anyio.lowlevel.checkpoint()  # the task's last callbacks run
                assert fn_ref() is None
            finally:
                gc.enable()


class TestCalls:
    async def test_kinds_of_work(self) -> None:
        class AsyncWork:
            async def on_call(self) -> str:
                await anyio.lowlevel.checkpoint()
                return "async on_call"

        class SyncWork:
            def on_call(self) -> str:
                return threading.current_thread().name

        async def keyword(a: int, *, b: int) -> int:
            return a + b

        async with Activity(name="kinds") as act:
            assert await act.synchronous_call(echo, 1) == 1
            assert await act.synchronous_call(echo(2)) == 2
            assert await act.synchronous_call(lambda: 3) == 3
            assert await act.synchronous_call(functools.partial(keyword, 1, b=3)) == 4
            assert await act.synchronous_call(AsyncWork()) == "async on_call"
            thread_name = await act.synchronous_call(SyncWork())
            assert thread_name != threading.current_thread().name
            assert await (await act.asynchronous_call(echo, 5)) == 5
            assert await (await act.asynchronous_call(echo(6))) == 6
            assert await (await act.asynchronous_call(sum, [3, 4])) == 7
            assert await (await act.asynchronous_call(AsyncWork())) == "async on_call"

    async def test_a_cancelled_waiter_leaves_the_others_waiting(self) -> None:
        gate = Gate()
        results: list[Any] = []
        cancelled: list[bool] = []
        async with Activity() as act:
            call = await act.asynchronous_call(gate.wait, "done")

            async def wait_for_call() -> None:
                results.append(await call)

            async def wait_cancelled(
                *, task_status: anyio.abc.TaskStatus[anyio.CancelScope] = anyio.TASK_STATUS_IGNORED
            ) -> None:
                with anyio.CancelScope() as scope:
                    task_status.started(scope)
                    await call
                cancelled.append(scope.cancelled_caught)

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait_for_call)
                scope = await tg.start(wait_cancelled)
                tg.start_soon(wait_for_call)
                await anyio.wait_all_tasks_blocked()  # all three wait for the call
                scope.cancel()
                await anyio.wait_all_tasks_blocked()
                assert cancelled == [True]
                assert results == []
                gate.open()
            assert results == ["done", "done"]
            assert call.status is CallStatus.COMPLETED
            assert await call == "done"

    @pytest.mark.parametrize(
        "anyio_backend",
        [("asyncio", {"use_uvloop": False}), ("asyncio", {"use_uvloop": True})],
        ids=["asyncio", "uvloop"],
    )
    async def test_calls_on_the_loop_find_it_by_its_task(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # asyncio's _get_running_loop() asks the kernel for the process id on
        # Python 3.11; a task of the activity's loop, running on its thread, is
        # proof enough that the call is made in that loop.
        from activity import _core, _submit, _sync

        looked_up: list[int] = []
        real = asyncio.events._get_running_loop  # pyright: ignore[reportPrivateUsage]

        def counted() -> asyncio.AbstractEventLoop | None:
            looked_up.append(1)
            return real()

        for module in (_core, _submit, _sync, asyncio.events, asyncio):
            monkeypatch.setattr(module, "_get_running_loop", counted)
        async with Activity(max_concurrency=2) as act:
            looked_up.clear()  # opening an activity may look
            assert await (await act.asynchronous_call(echo, 1)) == 1
            assert await (await act.asynchronous_call(echo, 2, timeout=5, name="named")) == 2
            assert await (await act.asynchronous_call(abs, -3)) == 3
            assert await act.synchronous_call(echo, 4) == 4
            assert await act.synchronous_call(echo, 5, timeout=5) == 5
            assert await act.synchronous_call(abs, -6) == 6
            assert await act.asynchronous_call_nowait(echo, 7) == 7
            assert looked_up == []
            with pytest.raises(WrongThreadError):  # the checks still refuse another thread
                await anyio.to_thread.run_sync(act.asynchronous_call_nowait, echo, 8)

    async def test_call_ids_are_unique_and_kept_once_given(self) -> None:
        async with Activity(max_concurrency=1) as act:
            calls = [await act.asynchronous_call(echo, n) for n in range(5)]
            ids = [call.id for call in reversed(calls)]  # asked in the other order
            assert len(set(ids)) == 5
            assert [call.id for call in reversed(calls)] == ids
            assert [await call for call in calls] == list(range(5))
            assert [call.id for call in reversed(calls)] == ids  # finished, the same
            assert all(call.name.endswith(f"#{call.id}") for call in calls)

    async def test_a_queued_call_stays_within_two_cache_lines(self) -> None:
        # The garbage collector walks every queued call at each full collection,
        # and one of more than 128 bytes (twelve fields) costs it about half as
        # much again: a new field belongs in the call's flags or extras.
        gate = Gate()
        async with Activity(max_concurrency=1) as act:
            first = await act.asynchronous_call(gate.wait)
            queued = await act.asynchronous_call(echo, 1)
            assert queued.status is CallStatus.PENDING
            assert sys.getsizeof(queued) <= 128
            gate.open()
            assert await queued == 1
            await first

    @pytest.mark.parametrize(
        ("fn", "args", "field"),
        [
            (42, (), "fn"),
            ("not callable", (), "fn"),
            (None, (), "fn"),
        ],
    )
    async def test_bad_fn_is_refused_before_acceptance(
        self, fn: Any, args: tuple[Any, ...], field: str
    ) -> None:
        async with Activity() as act:
            with pytest.raises(InvalidArgumentError) as info:
                await act.asynchronous_call(fn, *args)
            assert info.value.field == field
            with pytest.raises(InvalidArgumentError):
                await act.synchronous_call(fn, *args)
            assert act.statistics().accepted == 0

    @pytest.mark.parametrize("timeout", [-1, 0, float("nan"), "1", True])
    async def test_bad_timeout_is_refused(self, timeout: Any) -> None:
        async with Activity() as act:
            coro = echo(1)
            with pytest.raises(InvalidArgumentError, match="timeout"):
                await act.asynchronous_call(coro, timeout=timeout)
            assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
            assert act.statistics().accepted == 0

    async def test_coroutine_object_with_args_is_refused(self) -> None:
        async with Activity() as act:
            coro = echo(1)
            with pytest.raises(InvalidArgumentError, match="no arguments"):
                await act.asynchronous_call(coro, 2)  # type: ignore[call-overload]
            assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED

    async def test_generator_function_is_refused(self) -> None:
        async def agen() -> Any:
            yield 1

        async with Activity() as act:
            with pytest.raises(InvalidArgumentError, match="generator"):
                await act.asynchronous_call(agen)

    async def test_a_function_whose_code_changed_is_read_anew(self) -> None:
        # The fast paths remember the last function's code object and its kind:
        # a function given other code is classified by its new code. A plain
        # function runs on a worker thread, a coroutine function on the loop's.
        async def coroutine() -> int:
            return threading.get_ident()

        def plain() -> int:
            return threading.get_ident()

        async def agen() -> Any:
            yield 1

        def target() -> int:
            return threading.get_ident()

        def give(code: Any) -> None:
            # Python 3.13 deprecates giving a function code of another kind: that
            # is what this test does on purpose.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                target.__code__ = code

        loop_thread = threading.get_ident()
        async with Activity() as act:
            assert await act.synchronous_call(target) != loop_thread
            assert await (await act.asynchronous_call(target)) != loop_thread
            give(coroutine.__code__)
            assert await act.synchronous_call(target) == loop_thread
            assert await (await act.asynchronous_call(target)) == loop_thread
            give(agen.__code__)
            with pytest.raises(InvalidArgumentError, match="generator"):
                await act.asynchronous_call(target)
            with pytest.raises(InvalidArgumentError, match="generator"):
                await act.synchronous_call(target)
            give(plain.__code__)
            assert await act.synchronous_call(target) != loop_thread
            assert await (await act.asynchronous_call(target)) != loop_thread
            assert_balanced(act.statistics())

    async def test_synchronous_call_raises_own_exception_with_traceback(self) -> None:
        async with Activity() as act:
            with pytest.raises(ValueError, match="boom") as info:
                await act.synchronous_call(boom)
            assert any(entry.name == "boom" for entry in info.traceback)

            def sync_boom() -> None:
                raise KeyError("sync")

            with pytest.raises(KeyError) as kinfo:
                await act.synchronous_call(sync_boom)
            assert any(entry.name == "sync_boom" for entry in kinfo.traceback)
        stats = act.statistics()
        assert stats.failed == 2

    async def test_failing_hresult_is_a_failure(self) -> None:
        async def returns_denied() -> HResult:
            return HResult.E_ACCESSDENIED

        async def returns_ok() -> HResult:
            return HResult.S_FALSE

        async with Activity() as act:
            with pytest.raises(PermissionError) as info:
                await act.synchronous_call(returns_denied)
            assert isinstance(info.value, ActivityError)
            assert info.value.hresult is HResult.E_ACCESSDENIED
            assert await act.synchronous_call(returns_ok) is HResult.S_FALSE
            call = await act.asynchronous_call(lambda: HResult.E_FAIL)
            await call.wait()
            assert call.status is CallStatus.FAILED
            assert call.hresult is HResult.E_FAIL
            assert call.exception() is not None

    async def test_timeout_fails_the_call(self) -> None:
        async with Activity() as act:
            call = await act.asynchronous_call(anyio.sleep_forever, timeout=0.01)
            with pytest.raises(CallTimeoutError) as info:
                await call
            assert call.status is CallStatus.FAILED
            assert call.hresult is HResult.E_TIMEOUT
            assert isinstance(info.value, TimeoutError)
            with pytest.raises(CallTimeoutError):
                await act.synchronous_call(anyio.sleep_forever, timeout=0.01)
        stats = act.statistics()
        assert (stats.failed, stats.cancelled) == (2, 0)

    async def test_config_default_timeout(self) -> None:
        async with Activity(timeout=0.01) as act:
            with pytest.raises(CallTimeoutError):
                await act.synchronous_call(anyio.sleep_forever)

    async def test_body_timeout_error_is_not_ours(self) -> None:
        async def own_timeout() -> None:
            raise TimeoutError("the body's own")

        async with Activity() as act:
            with pytest.raises(TimeoutError, match="the body's own") as info:
                await act.synchronous_call(own_timeout, timeout=5)
            assert not isinstance(info.value, CallTimeoutError)

    async def test_reentrant_synchronous_call_does_not_deadlock(self) -> None:
        async with Activity(max_concurrency=1, max_pending=0) as act:

            async def outer() -> int:
                inner: int = await act.synchronous_call(echo, 20)
                return inner + await act.synchronous_call(lambda: 1)

            assert await act.synchronous_call(outer) == 21
            call = await act.asynchronous_call(outer)
            assert await call == 21
        stats = act.statistics()
        assert (stats.accepted, stats.completed) == (6, 6)

    async def test_cancel_running_and_pending(self) -> None:
        gate = Gate()
        async with Activity(max_concurrency=1) as act:
            running = await act.asynchronous_call(gate.wait)
            pending = await act.asynchronous_call(gate.wait)
            assert pending.cancel("no longer needed")
            assert pending.status is CallStatus.CANCELLED
            await anyio.lowlevel.checkpoint()
            assert running.cancel()
            await running.wait()
            assert running.status is CallStatus.CANCELLED
            assert running.hresult is HResult.E_ABORT
            with pytest.raises(CallCancelledError, match="no longer needed"):
                await pending
            with pytest.raises(CallCancelledError):
                running.result()
            assert not running.cancel()
        stats = act.statistics()
        assert (stats.cancelled, stats.failed) == (2, 0)

    async def test_activity_cancel_stops_everything(self) -> None:
        gate = Gate()
        async with Activity(max_concurrency=2) as act:
            calls = [await act.asynchronous_call(gate.wait) for _ in range(5)]
            act.cancel("enough")
            await act.wait_idle()
            assert all(c.status is CallStatus.CANCELLED for c in calls)
            with pytest.raises(ActivityClosedError, match="enough"):
                await act.asynchronous_call(noop)
        stats = act.statistics()
        assert (stats.accepted, stats.cancelled) == (5, 5)

    async def test_blocking_call_cancelled_is_abandoned(self) -> None:
        release = threading.Event()
        async with Activity() as act:
            call = await act.asynchronous_call(release.wait)
            await anyio.lowlevel.checkpoint()
            call.cancel()
            await call.wait()
            assert call.status is CallStatus.CANCELLED
            release.set()

    async def test_wait_idle(self) -> None:
        async with Activity(max_concurrency=2) as act:
            await act.wait_idle()
            calls = [await act.asynchronous_call(echo, i) for i in range(10)]
            await act.wait_idle()
            assert all(c.done() for c in calls)
            assert act.statistics().completed == 10


class TestFailures:
    async def test_unobserved_failure_surfaces_at_exit(self) -> None:
        with pytest.RaisesGroup(pytest.RaisesExc(ValueError, match="lost?")):
            async with Activity() as act:
                await act.asynchronous_call(boom, "lost?")
        assert act.statistics().failed == 1

    async def test_observed_failure_does_not_surface(self) -> None:
        async with Activity() as act:
            call = await act.asynchronous_call(boom)
            with pytest.raises(ValueError, match="boom"):
                await call
            other = await act.asynchronous_call(boom)
            await other.wait()
            assert isinstance(other.exception(), ValueError)

    async def test_failures_are_isolated(self) -> None:
        gate = Gate()
        async with Activity() as act:
            slow = await act.asynchronous_call(gate.wait, "alive")
            failing = await act.asynchronous_call(boom)
            await failing.wait()
            assert slow.status is CallStatus.RUNNING
            gate.open()
            assert await slow == "alive"
            assert failing.exception() is not None

    async def test_fail_fast_cancels_the_rest(self) -> None:
        gate = Gate()
        with pytest.RaisesGroup(ValueError):
            async with Activity(failure_policy=FailurePolicy.FAIL_FAST) as act:
                others = [await act.asynchronous_call(gate.wait) for _ in range(3)]
                await act.asynchronous_call(boom)
                await act.wait_idle()
                assert all(c.status is CallStatus.CANCELLED for c in others)
        assert act.statistics().cancelled == 3

    async def test_error_handler_and_on_error_observe(self) -> None:
        seen: list[tuple[str, str]] = []

        def handler(call: Call[Any], exc: BaseException) -> None:
            seen.append(("handler", str(exc)))

        class Work:
            async def on_call(self) -> None:
                raise RuntimeError("from on_call")

            def on_error(self, exc: BaseException) -> None:
                seen.append(("on_error", str(exc)))

        async with Activity(error_handler=handler) as act:
            await act.asynchronous_call(boom, "x")
            await act.asynchronous_call(Work())
            await act.wait_idle()
        assert sorted(seen) == [
            ("handler", "from on_call"),
            ("handler", "x"),
            ("on_error", "from on_call"),
        ]

    async def test_async_error_handler(self) -> None:
        seen: list[str] = []

        async def handler(call: Call[Any], exc: BaseException) -> None:
            await anyio.lowlevel.checkpoint()
            seen.append(call.name)

        async with Activity(error_handler=handler) as act:
            await act.asynchronous_call(boom, name="named")
        assert seen == ["named"]

    async def test_failing_error_handler_is_never_swallowed(self) -> None:
        def handler(call: Call[Any], exc: BaseException) -> None:
            raise LookupError("handler broke")

        with pytest.RaisesGroup(pytest.RaisesExc(LookupError, match="handler broke")):
            async with Activity(error_handler=handler) as act:
                await act.asynchronous_call(boom)
                await act.wait_idle()
        assert act.statistics().failed == 1

    async def test_body_exception_cancels_work_and_propagates(self) -> None:
        gate = Gate()
        with pytest.raises(KeyError, match="body"):
            async with Activity() as act:
                calls = [await act.asynchronous_call(gate.wait) for _ in range(3)]
                raise KeyError("body")
        assert all(c.status is CallStatus.CANCELLED for c in calls)
        assert act.statistics().cancelled == 3

    async def test_body_exception_and_unobserved_failure_both_raised(self) -> None:
        with pytest.RaisesGroup(KeyError, ValueError):
            async with Activity() as act:
                call = await act.asynchronous_call(boom)
                await call.wait()
                raise KeyError("body")


class TestShutdown:
    async def test_drains_accepted_work(self) -> None:
        async with Activity(max_concurrency=2) as act:
            calls = [await act.asynchronous_call(echo, i) for i in range(20)]
        assert [c.result() for c in calls] == list(range(20))
        with pytest.raises(ActivityClosedError):
            await act.asynchronous_call(noop)

    async def test_stuck_calls_are_cancelled_and_reported(self) -> None:
        finished: list[Call[Any]] = []
        from activity import tracking

        def listen(event: tracking.TrackingEvent) -> None:
            if event.kind is tracking.EventKind.CALL_FINISHED and event.activity is act:
                assert event.call is not None
                finished.append(event.call)

        stuck: list[Call[Any]] = []
        remove = tracking.add_listener(listen)
        try:
            async with Activity(max_concurrency=5, shutdown_timeout=0.05) as act:
                stuck += [await act.asynchronous_call(anyio.sleep_forever) for _ in range(4)]
                quick = await act.asynchronous_call(echo, "ok")
        finally:
            remove()
        assert quick.result() == "ok"
        assert all(c.status is CallStatus.CANCELLED for c in stuck)
        assert set(finished) == {*stuck, quick}
        stats = act.statistics()
        assert (stats.completed, stats.cancelled, stats.failed) == (1, 4, 0)
        assert_balanced(stats)
        with pytest.raises(CallCancelledError, match="shutdown_timeout"):
            stuck[0].result()

    async def test_host_cancelled_while_draining(self) -> None:
        with anyio.move_on_after(0.05) as scope:
            async with Activity(shutdown_timeout=None) as act:
                stuck = await act.asynchronous_call(anyio.sleep_forever)
        assert scope.cancelled_caught
        assert stuck.status is CallStatus.CANCELLED
        assert_balanced(act.statistics())


class TestContext:
    async def test_current_activity(self) -> None:
        assert current_activity() is None
        async with Activity() as act:
            assert current_activity() is act
            assert await act.synchronous_call(current_activity) is act

            async def inside() -> Activity | None:
                return current_activity()

            assert await act.synchronous_call(inside) is act
            assert await (await act.asynchronous_call(inside)) is act
        assert current_activity() is None

    async def test_locals_in_coroutines_and_threads(self) -> None:
        tenant = ActivityLocal[str]("tenant", default="nobody")

        def in_thread() -> tuple[str, str]:
            return tenant.get(), threading.current_thread().name

        async with Activity(name="locals") as act:
            tenant.set("acme")
            value, thread_name = await act.synchronous_call(in_thread)
            assert value == "acme"
            assert thread_name != threading.current_thread().name
            assert (await (await act.asynchronous_call(in_thread)))[0] == "acme"
            assert await act.synchronous_call(tenant.get) == "acme"
        assert tenant.get() == "nobody"

    async def test_concurrent_activities_never_cross(self) -> None:
        tenant = ActivityLocal[str]("tenant")
        crossings: list[tuple[str, str]] = []

        async def check(expected: str) -> None:
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
                if tenant.get() != expected:
                    crossings.append((expected, tenant.get()))

        def check_sync(expected: str) -> None:
            if tenant.get() != expected:
                crossings.append((expected, tenant.get()))

        async def request(name: str) -> None:
            async with Activity(name=name, max_concurrency=5) as act:
                tenant.set(name)
                for _ in range(20):
                    await act.asynchronous_call(check, name)
                    await act.asynchronous_call(check_sync, name)
                    await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(request, f"tenant-{i}")
        assert crossings == []

    async def test_calls_carry_their_submitters_locals(self) -> None:
        tenant = ActivityLocal[str]("tenant", default="none")
        shared = ActivityLocal[str]("shared", default="none")

        async def read() -> tuple[str, str]:
            await anyio.lowlevel.checkpoint()
            return tenant.get(), shared.get()

        async with Activity(name="app") as app:
            shared.set("app-wide")
            calls: list[Call[tuple[str, str]]] = []

            async def request(name: str) -> None:
                async with Activity(name=name) as req:
                    tenant.set(name)
                    calls.append(await app.asynchronous_call(read))
                    assert await req.synchronous_call(read) == (name, "none")

            async with anyio.create_task_group() as tg:
                for i in range(5):
                    tg.start_soon(request, f"r{i}")
            seen = sorted([await call for call in calls])
        assert seen == [(f"r{i}", "app-wide") for i in range(5)]
        assert tenant.get() == "none"

    async def test_call_context_is_a_copy(self) -> None:
        import contextvars

        var = contextvars.ContextVar("var", default="outer")

        async def writes() -> str:
            var.set("inner")
            await anyio.lowlevel.checkpoint()
            return var.get()

        async with Activity() as act:
            assert await act.synchronous_call(writes) == "inner"
            assert var.get() == "outer"
            assert await (await act.asynchronous_call(writes)) == "inner"
            assert var.get() == "outer"


class TestThreads:
    async def test_wrong_thread_error_from_foreign_thread(self) -> None:
        errors: list[BaseException] = []

        async with Activity(name="bound") as act:

            def foreign() -> None:
                async def submit() -> None:
                    coro = echo(1)
                    try:
                        await act.asynchronous_call(coro)
                    except WrongThreadError as exc:
                        errors.append(exc)
                        assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
                    try:
                        await act.synchronous_call(noop)
                    except WrongThreadError as exc:
                        errors.append(exc)

                anyio.run(submit)

            thread = threading.Thread(target=foreign)
            thread.start()
            await anyio.to_thread.run_sync(thread.join)
        assert len(errors) == 2
        assert isinstance(errors[0], RuntimeError)
        assert errors[0].hresult is HResult.RPC_E_WRONG_THREAD  # type: ignore[attr-defined]
        assert "synchronous_call_from_thread" in str(errors[0])
        assert act.statistics().accepted == 0

    async def test_thread_limit_bounds_blocking_calls(self) -> None:
        lock = threading.Lock()
        count = {"active": 0, "peak": 0}
        started = threading.Semaphore(0)
        release = threading.Event()

        def blocking() -> None:
            with lock:
                count["active"] += 1
                count["peak"] = max(count["peak"], count["active"])
            started.release()
            release.wait(5)
            with lock:
                count["active"] -= 1

        async with Activity(max_concurrency=10, thread_limit=2) as act:
            calls = [await act.asynchronous_call(blocking) for _ in range(6)]
            for _ in range(2):
                await anyio.to_thread.run_sync(started.acquire)
            release.set()
            for call in calls:
                await call
        assert count["peak"] == 2


class TestBlockingCallEnds:
    """A blocking call ends once, however it ends, and its thread's late result is ignored."""

    # On trio, worker threads are anyio's.
    @pytest.mark.parametrize(
        "anyio_backend",
        [("asyncio", {"use_uvloop": False}), ("asyncio", {"use_uvloop": True})],
        ids=["asyncio", "uvloop"],
    )
    async def test_no_thread_can_start(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def refuse(workers: Workers, number: int) -> None:
            raise RuntimeError("can't start new thread")

        # A pool of its own (not one another test handed back, whose threads run).
        monkeypatch.setattr(_asyncio, "borrow_workers", Workers)
        monkeypatch.setattr(Workers, "_start_thread", refuse)
        async with Activity() as act:
            call = await act.asynchronous_call(abs, -1)
            await call.wait()
            assert call.status is CallStatus.FAILED
            assert isinstance(call.exception(), RuntimeError)
            with pytest.raises(RuntimeError, match="new thread"):
                await act.synchronous_call(abs, -2)
        stats = act.statistics()
        assert_balanced(stats)
        assert (stats.accepted, stats.failed, stats.running) == (2, 2, 0)

    async def test_cancelled_while_its_thread_runs(self) -> None:
        gate = ThreadGate()
        try:
            async with Activity() as act:
                call = await act.asynchronous_call(gate.park, "late")
                await gate.wait_started()
                assert call.cancel("stop")
                await call.wait()
                assert call.status is CallStatus.CANCELLED
                gate.open()
        finally:
            gate.open()
        await gate.wait_finished()
        assert gate.returned == ["late"]  # the thread ran on; its result was ignored
        stats = act.statistics()
        assert_balanced(stats)
        assert (stats.accepted, stats.cancelled, stats.completed) == (1, 1, 0)
        assert call.status is CallStatus.CANCELLED
        with pytest.raises(CallCancelledError, match="stop"):
            call.result()

    async def test_timed_out_while_its_thread_runs(self) -> None:
        release = threading.Event()
        try:
            async with Activity() as act:
                call = await act.asynchronous_call(release.wait, 30, timeout=0.05)
                await call.wait()
                assert call.status is CallStatus.FAILED
                assert isinstance(call.exception(), CallTimeoutError)
        finally:
            release.set()
        stats = act.statistics()
        assert_balanced(stats)
        assert (stats.accepted, stats.failed) == (1, 1)

    @pytest.mark.parametrize("thread_pool", ["mta", "sta"])
    async def test_a_thread_that_raises_stop_iteration(self, thread_pool: str) -> None:
        # A future refuses StopIteration: without care the call would never end.
        def stop() -> None:
            raise StopIteration("done")

        async with Activity(thread_pool=thread_pool) as act:
            # What Python makes of a StopIteration leaving a coroutine.
            with pytest.raises(RuntimeError) as raised:
                await act.synchronous_call(stop)
            assert isinstance(raised.value.__cause__, StopIteration)
            call = await act.asynchronous_call(stop)
            await call.wait()
            assert call.status is CallStatus.FAILED
            # The same on every path: no await can carry a StopIteration.
            failure = call.exception()
            assert isinstance(failure, RuntimeError)
            assert isinstance(failure.__cause__, StopIteration)
        stats = act.statistics()
        assert_balanced(stats)
        assert (stats.accepted, stats.failed) == (2, 2)

    async def test_cancelled_before_its_thread_starts(self) -> None:
        gate = ThreadGate()
        try:
            async with Activity(max_concurrency=5, thread_limit=1) as act:
                first = await act.asynchronous_call(gate.park, 1)
                await gate.wait_started()
                second = await act.asynchronous_call(gate.park, 2)  # waits for the only thread
                await anyio.lowlevel.checkpoint()
                second.cancel()
                await second.wait()
                assert second.status is CallStatus.CANCELLED
                gate.open()
                assert await first == 1
        finally:
            gate.open()
        assert gate.returned == [1]
        stats = act.statistics()
        assert_balanced(stats)
        assert (stats.accepted, stats.completed, stats.cancelled) == (2, 1, 1)


class TestThreadReuse:
    # On trio, worker threads are trio's own thread cache's to reuse.
    @pytest.mark.parametrize(
        "anyio_backend",
        [("asyncio", {"use_uvloop": False}), ("asyncio", {"use_uvloop": True})],
        ids=["asyncio", "uvloop"],
    )
    async def test_a_closed_activity_hands_its_threads_to_the_next(self) -> None:
        def pool_name() -> str:
            # The pool names its threads "<pool prefix>_<n>".
            return threading.current_thread().name.rpartition("_")[0]

        pools: list[str] = []
        for name in ("request-1", "request-2"):
            async with Activity(name=name, thread_limit=3) as act:
                pools.append(await act.synchronous_call(pool_name))
        assert pools[0].startswith("activity-worker-")
        assert pools[0] == pools[1]  # the same threads, no new ones per activity

    async def test_a_pool_held_by_an_abandoned_call_is_not_lent_again(self) -> None:
        release = threading.Event()
        async with Activity(thread_limit=1) as first:
            stuck = await first.asynchronous_call(release.wait, 10)
            await anyio.lowlevel.checkpoint()
            stuck.cancel()
        assert stuck.status is CallStatus.CANCELLED
        try:
            async with Activity(thread_limit=1) as second:
                # With the first pool lent again, this would queue behind the stuck thread.
                assert await second.synchronous_call(lambda: "free thread") == "free thread"
        finally:
            release.set()


async def test_storm_of_blocking_and_synchronous_calls_adds_up() -> None:
    """Many callers at once, on few threads: every call ends as its kind says."""
    rng = random.Random(4321)
    done: dict[str, int] = {}
    caller_cancelled = 0

    def blocking(i: int) -> int:
        return i

    def blocking_failure(i: int) -> int:
        raise ValueError(i)

    async with Activity(
        max_concurrency=20, max_pending=5_000, thread_limit=4, shutdown_timeout=30
    ) as act:

        async def caller(calls: int) -> None:
            nonlocal caller_cancelled
            for j in range(calls):
                kind = rng.choice(["coro", "coro fails", "thread", "thread fails", "cancelled"])
                if kind == "coro":
                    assert await act.synchronous_call(echo, j) == j
                elif kind == "coro fails":
                    with pytest.raises(ValueError, match="boom"):
                        await act.synchronous_call(boom)
                elif kind == "thread":
                    assert await act.synchronous_call(blocking, j) == j
                elif kind == "thread fails":
                    with pytest.raises(ValueError, match=f"^{j}$"):
                        await act.synchronous_call(blocking_failure, j)
                else:  # the caller gives up while the call runs
                    with anyio.CancelScope() as scope:
                        scope.cancel()
                        await act.synchronous_call(echo, j)
                    assert scope.cancelled_caught
                    caller_cancelled += 1
                done[kind] = done.get(kind, 0) + 1

        calls: list[tuple[str, Call[Any]]] = []
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(caller, 100)
            for i in range(2_000):
                kind = rng.choice(["ok", "fails", "cancel"])
                call = await act.asynchronous_call(
                    blocking_failure if kind == "fails" else blocking, i
                )
                if kind == "cancel":
                    call.cancel()  # queued, in the pool's queue, or already run
                calls.append((kind, call))
                if i % 50 == 0:
                    await anyio.lowlevel.checkpoint()
                assert_balanced(act.statistics())
        for kind, call in calls:
            await call.wait()
            if kind == "ok":
                assert call.status is CallStatus.COMPLETED
            elif kind == "fails":
                assert isinstance(call.exception(), ValueError)
            else:  # a cancellation that comes after the thread's end is too late
                assert call.status in (CallStatus.CANCELLED, CallStatus.COMPLETED)
    stats = act.statistics()
    assert_balanced(stats)
    assert sum(done.values()) == 1_000
    assert stats.accepted == 3_000
    failed = done.get("coro fails", 0) + done.get("thread fails", 0)
    assert stats.failed == failed + sum(1 for kind, _ in calls if kind == "fails")
    cancelled = sum(1 for _, call in calls if call.status is CallStatus.CANCELLED)
    assert stats.cancelled == caller_cancelled + cancelled
    assert stats.pending == stats.running == 0


async def test_storm_of_mixed_calls_adds_up() -> None:
    """10,000 mixed calls: every accepted one ends as its kind says, and the counters add up."""
    rng = random.Random(1234)
    expected = {CallStatus.COMPLETED: 0, CallStatus.FAILED: 0, CallStatus.CANCELLED: 0}
    kinds: list[tuple[str, Call[Any]]] = []
    rejected = 0

    def blocking(i: int) -> int:
        return i

    async with Activity(max_concurrency=50, max_pending=300, shutdown_timeout=30) as act:
        for i in range(10_000):
            kind = rng.choice(["ok", "ok", "thread", "coro", "fail", "cancel", "timeout"])
            try:
                call: Call[Any]
                if kind == "ok":
                    call = await act.asynchronous_call(echo, i)
                elif kind == "thread":
                    call = await act.asynchronous_call(blocking, i)
                elif kind == "coro":
                    call = await act.asynchronous_call(echo(i))
                elif kind == "fail":
                    call = await act.asynchronous_call(boom)
                elif kind == "cancel":
                    call = await act.asynchronous_call(anyio.sleep_forever)
                    call.cancel()
                else:
                    call = await act.asynchronous_call(anyio.sleep_forever, timeout=0.001)
            except AsyncWorkRejectedError:
                rejected += 1
                continue
            kinds.append((kind, call))
            if i % 97 == 0:
                await anyio.lowlevel.checkpoint()
            stats = act.statistics()
            assert_balanced(stats)
        for kind, call in kinds:
            await call.wait()
            if kind in ("ok", "thread", "coro"):
                assert call.status is CallStatus.COMPLETED, (kind, call)
            elif kind == "cancel":
                assert call.status is CallStatus.CANCELLED, (kind, call)
            else:
                assert call.status is CallStatus.FAILED, (kind, call)
                error = call.exception()
                assert isinstance(error, CallTimeoutError if kind == "timeout" else ValueError)
            expected[call.status] += 1
    stats = act.statistics()
    assert_balanced(stats)
    assert rejected > 0
    assert stats.rejected == rejected
    assert stats.accepted == len(kinds) == 10_000 - rejected
    assert (stats.completed, stats.failed, stats.cancelled) == (
        expected[CallStatus.COMPLETED],
        expected[CallStatus.FAILED],
        expected[CallStatus.CANCELLED],
    )
    assert stats.pending == stats.running == 0
