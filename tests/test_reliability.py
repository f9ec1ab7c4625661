"""Promises that must hold when an activity is used the hard way.

Each class holds one promise that an attack once broke: admission under
``Overflow.WAIT``, an exit that always ends, cancellation from anywhere and of
anything exactly once, the drain that keeps the work it drains, failures that
always reach someone, and limits on what an activity holds. On asyncio, uvloop
and trio wherever the path exists there.
"""

# Names bound inside `with pytest.raises(...)` blocks are read after them.
# pyright: reportPossiblyUnboundVariable=false

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import time
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest

from activity import (
    Activity,
    ActivityClosedError,
    ActivityError,
    AsyncWorkRejectedError,
    CallCancelledError,
    CallStatus,
    CallTimeoutError,
    FailurePolicy,
    InvalidArgumentError,
    Overflow,
    WrongThreadError,
    cancel_requested,
    check_cancelled,
    current_activity,
)
from activity._context import frame_var
from activity._core import MAX_KEPT_FAILURES
from activity.pytest_plugin import assert_balanced

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from activity._lifecycle import Core

pytestmark = pytest.mark.anyio

#: Bounds every wait below: a broken promise fails the test instead of hanging it.
LIMIT = 20


async def echo(value: Any) -> Any:
    await anyio.lowlevel.checkpoint()
    return value


async def boom() -> None:
    await anyio.lowlevel.checkpoint()
    raise ValueError("boom")


def core_of(act: Activity) -> Core:
    """The core of ``act``; call it in ``act``'s own block, where the core is the frame."""
    frame = frame_var.get()
    assert frame is not None, "not in any activity"
    assert frame.host.activity is act, "not in the activity's block"
    return cast("Core", frame.host)


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until ``condition()`` holds (bounded by the test's limit)."""
    with anyio.fail_after(LIMIT):
        while not condition():  # noqa: ASYNC110 - the condition is the activity's state
            await anyio.sleep(0.001)


def exceptions_of(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    return list(group.exceptions)


class TestWaitingAdmission:
    """A slot that frees admits the oldest parked submitter to run, not to a queue."""

    async def test_two_parked_asynchronous_calls_both_run(self) -> None:
        gate = anyio.Event()
        calls: dict[int, Any] = {}
        async with Activity(max_concurrency=1, max_pending=0, overflow=Overflow.WAIT) as act:
            blocker = await act.asynchronous_call(gate.wait)

            async def submit(value: int) -> None:
                calls[value] = await act.asynchronous_call(echo, value)

            async with anyio.create_task_group() as tg:
                tg.start_soon(submit, 1)
                tg.start_soon(submit, 2)
                await until(lambda: len(core_of(act).admission.waiters) == 2)
                gate.set()
            with anyio.fail_after(LIMIT):
                assert await calls[1] == 1
                assert await calls[2] == 2
            await blocker
        stats = act.statistics()
        assert (stats.accepted, stats.completed, stats.cancelled) == (3, 3, 0)
        assert_balanced(stats)

    async def test_queued_synchronous_calls_all_run(self) -> None:
        gate = anyio.Event()
        results: list[int] = []
        async with Activity(max_concurrency=1, max_pending=0) as act:
            blocker = await act.asynchronous_call(gate.wait)

            async def run(value: int) -> None:
                results.append(await act.synchronous_call(echo, value))

            with anyio.fail_after(LIMIT):
                async with anyio.create_task_group() as tg:
                    for value in range(3):
                        tg.start_soon(run, value)
                    await until(lambda: len(core_of(act).admission.waiters) == 3)
                    gate.set()
            await blocker
        assert sorted(results) == [0, 1, 2]
        assert act.statistics().completed == 4


class TestExitAlwaysEnds:
    """An async error handler that never returns cannot hold the exit past shutdown_timeout."""

    async def test_hung_handler_is_cancelled_and_reported(self) -> None:
        seen: list[BaseException] = []

        async def handler(call: Any, exc: BaseException) -> None:
            seen.append(exc)
            await anyio.sleep_forever()

        with anyio.fail_after(LIMIT), pytest.raises(ExceptionGroup) as info:
            async with Activity(error_handler=handler, shutdown_timeout=0.05) as act:
                await act.asynchronous_call(boom)
        assert [type(e) for e in seen] == [ValueError]
        (error,) = exceptions_of(info.value)
        assert isinstance(error, ActivityError)
        assert "cancelled before it finished" in str(error)
        assert error.__cause__ is seen[0]  # the failure it was handling still reaches the exit
        assert_balanced(act.statistics())

    async def test_hung_handler_after_the_block_raised(self) -> None:
        async def handler(call: Any, exc: BaseException) -> None:
            await anyio.sleep_forever()

        with anyio.fail_after(LIMIT), pytest.raises(ExceptionGroup) as info:
            async with Activity(error_handler=handler, shutdown_timeout=0.05) as act:
                call = await act.asynchronous_call(boom)
                await call.wait()
                raise RuntimeError("the block failed")
        kinds = [type(e) for e in exceptions_of(info.value)]
        assert kinds == [RuntimeError, ActivityError]

    async def test_handler_that_finishes_in_time_is_not_reported(self) -> None:
        done = anyio.Event()

        async def handler(call: Any, exc: BaseException) -> None:
            await anyio.lowlevel.checkpoint()
            done.set()

        async with Activity(error_handler=handler, shutdown_timeout=LIMIT) as act:
            await act.asynchronous_call(boom)
        assert done.is_set()


class TestCancelFromAnotherThread:
    """cancel() from a foreign thread runs on the activity's loop, which is woken for it."""

    async def test_call_cancel_from_a_thread(self) -> None:
        gate = anyio.Event()
        asked = threading.Event()
        answers: list[bool] = []
        loop_thread = threading.get_ident()
        finished_on: list[int] = []
        async with Activity(max_concurrency=1) as act:
            blocker = await act.asynchronous_call(gate.wait)
            queued = await act.asynchronous_call(echo, 1)
            queued.add_done_callback(lambda call: finished_on.append(threading.get_ident()))

            def other() -> None:
                time.sleep(0.1)  # let the loop go idle: only the cancellation may wake it
                answers.append(queued.cancel("from a thread"))
                asked.set()

            thread = threading.Thread(target=other)
            thread.start()
            # No timer of ours runs meanwhile: only the cancellation can wake this wait.
            with anyio.fail_after(LIMIT):
                await queued.wait()
            thread.join(LIMIT)
            gate.set()
            await blocker
        assert answers == [True]
        assert queued.status is CallStatus.CANCELLED
        assert finished_on == [loop_thread]
        assert "from a thread" in str(queued.exception())

    async def test_activity_cancel_from_a_thread(self) -> None:
        started = anyio.Event()

        async def forever() -> None:
            started.set()
            await anyio.sleep_forever()

        loop_thread = threading.get_ident()
        finished_on: list[int] = []
        async with Activity() as act:
            call = await act.asynchronous_call(forever)
            call.add_done_callback(lambda call: finished_on.append(threading.get_ident()))
            await started.wait()

            def other() -> None:
                time.sleep(0.1)  # let the loop go idle: only the cancellation may wake it
                act.cancel("stop")

            thread = threading.Thread(target=other)
            thread.start()
            with anyio.fail_after(LIMIT):
                await call.wait()
            thread.join(LIMIT)
            assert call.status is CallStatus.CANCELLED
            assert finished_on == [loop_thread]
            with pytest.raises(ActivityClosedError, match="cancelled"):
                await act.asynchronous_call(echo, 1)

    async def test_cancel_of_a_finished_call_from_a_thread(self) -> None:
        async with Activity() as act:
            call = await act.asynchronous_call(echo, 1)
            await call.wait()
            answers: list[bool] = []
            thread = threading.Thread(target=lambda: answers.append(call.cancel()))
            thread.start()
            thread.join(LIMIT)
        assert answers == [False]
        assert call.status is CallStatus.COMPLETED


class TestOneLoop:
    """An activity refuses a second event loop of its own thread instead of hanging it."""

    def test_second_loop_of_the_same_thread_is_refused(self) -> None:
        act = Activity()
        first = asyncio.new_event_loop()
        second = asyncio.new_event_loop()
        try:
            first.run_until_complete(act.__aenter__())

            async def use() -> None:
                with pytest.raises(WrongThreadError, match="another event loop"):
                    await act.asynchronous_call(echo, 1)
                with pytest.raises(WrongThreadError, match="another event loop"):
                    await act.synchronous_call(echo, 1)
                with pytest.raises(WrongThreadError, match="another event loop"):
                    await act.wait_idle()

            second.run_until_complete(use())

            async def still_works() -> int:
                return await act.synchronous_call(echo, 7)

            assert first.run_until_complete(still_works()) == 7
            first.run_until_complete(act.__aexit__(None, None, None))
        finally:
            first.close()
            second.close()
        assert act.statistics().completed == 1


class TestDrain:
    """Work that is being drained keeps running, nested calls included, and fail-fast holds."""

    async def test_nested_calls_of_running_work_are_part_of_the_drain(self) -> None:
        gate = anyio.Event()
        refused: list[BaseException] = []

        async def work(act: Activity, value: int) -> int:
            await gate.wait()  # set as the block's last step: this runs during the drain
            doubled = await act.synchronous_call(echo, value * 2)
            inner = await act.asynchronous_call(echo, doubled + 1)
            return await inner  # type: ignore[no-any-return]

        async def outsider(act: Activity) -> None:
            await gate.wait()
            try:
                await act.asynchronous_call(echo, 0)
            except ActivityClosedError as exc:
                refused.append(exc)

        async with anyio.create_task_group() as tg, Activity() as act:
            tg.start_soon(outsider, act)
            calls = [await act.asynchronous_call(work, act, value) for value in range(3)]
            gate.set()
        assert [call.result() for call in calls] == [1, 3, 5]
        assert len(refused) == 1
        assert "draining" in str(refused[0])
        stats = act.statistics()
        assert (stats.completed, stats.failed) == (9, 0)
        assert_balanced(stats)

    async def test_fail_fast_during_the_drain(self) -> None:
        gate = anyio.Event()

        async def fail_later() -> None:
            await gate.wait()
            raise ValueError("boom")

        with anyio.fail_after(LIMIT), pytest.raises(ExceptionGroup) as info:
            async with Activity(
                failure_policy=FailurePolicy.FAIL_FAST, shutdown_timeout=LIMIT * 2
            ) as act:
                await act.asynchronous_call(fail_later)
                slow = await act.asynchronous_call(anyio.sleep_forever)
                gate.set()
        assert [type(e) for e in exceptions_of(info.value)] == [ValueError]
        assert slow.status is CallStatus.CANCELLED
        assert "fail-fast" in str(slow.exception())
        assert_balanced(act.statistics())


class TestFailuresReachSomeone:
    async def test_done_callback_that_raises_after_the_exit(self) -> None:
        async with Activity() as act:
            call = await act.asynchronous_call(echo, 1)

        def callback(call: Any) -> None:
            raise RuntimeError("callback failed")

        with pytest.raises(RuntimeError, match="callback failed"):
            call.add_done_callback(callback)

    async def test_async_done_callback_after_the_exit(self) -> None:
        async with Activity() as act:
            call = await act.asynchronous_call(echo, 1)
        made: list[Awaitable[None]] = []

        def callback(call: Any) -> Awaitable[None]:
            coro = anyio.lowlevel.checkpoint()
            made.append(coro)
            return coro

        with pytest.raises(ActivityClosedError, match="nothing is left to await it"):
            call.add_done_callback(callback)
        (coro,) = made
        assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED  # type: ignore[arg-type]

    async def test_done_callback_that_raises_while_open_is_raised_at_exit(self) -> None:
        def callback(call: Any) -> None:
            raise RuntimeError("callback failed")

        with pytest.raises(ExceptionGroup) as info:
            async with Activity() as act:
                call = await act.asynchronous_call(echo, 1)
                await call.wait()
                call.add_done_callback(callback)
        assert [type(e) for e in exceptions_of(info.value)] == [RuntimeError]


class TestCancelledOnce:
    """However often the activity cancels a synchronous call, its caller hears it once."""

    @pytest.mark.parametrize("second", ["block raises", "cancel again"])
    async def test_twice_cancelled_synchronous_call(self, second: str) -> None:
        started = anyio.Event()
        heard: list[BaseException] = []

        async def forever() -> None:
            started.set()
            await anyio.sleep_forever()

        async def caller(act: Activity) -> None:
            try:
                await act.synchronous_call(forever)
            except CallCancelledError as exc:
                heard.append(exc)

        async with anyio.create_task_group() as tg:
            with contextlib.suppress(RuntimeError):
                async with Activity() as act:
                    tg.start_soon(caller, act)
                    await started.wait()
                    act.cancel("stop")
                    if second == "block raises":
                        raise RuntimeError("bail out")
                    act.cancel("again")
                    act.cancel()
        assert len(heard) == 1
        assert "stop" in str(heard[0])
        assert act.statistics().cancelled == 1

    async def test_synchronous_call_cancelled_then_timed_out(self) -> None:
        started = anyio.Event()
        timeout = 0.05

        async def slow_to_stop() -> None:
            started.set()
            try:
                await anyio.sleep_forever()
            finally:
                # Still cleaning up when the timeout comes due (its deadline was set
                # when the call started, before the cancellation): the timer must not
                # cancel the caller's task a second time.
                with anyio.CancelScope(shield=True):
                    await anyio.sleep(timeout * 4)

        heard: list[BaseException] = []
        async with Activity() as act, anyio.create_task_group() as tg:

            async def cancel_when_started() -> None:
                await started.wait()
                act.cancel("stop")

            tg.start_soon(cancel_when_started)
            try:
                await act.synchronous_call(slow_to_stop, timeout=timeout)
            except CallCancelledError as exc:
                heard.append(exc)
            await anyio.lowlevel.checkpoint()  # a leaked cancellation would land here
        assert len(heard) == 1
        assert act.statistics().cancelled == 1


class TestNeverStartedCoroutines:
    """A coroutine object accepted and cancelled before it started is closed, not leaked."""

    async def test_cancelled_while_pending(self) -> None:
        gate = anyio.Event()
        async with Activity(max_concurrency=1) as act:
            blocker = await act.asynchronous_call(gate.wait)
            first = echo(1)
            second = echo(2)
            by_call = await act.asynchronous_call(first)
            by_activity = await act.asynchronous_call(second)
            assert by_call.cancel()
            act.cancel("stop")
            gate.set()
        assert blocker.status is CallStatus.CANCELLED
        assert by_call.status is CallStatus.CANCELLED
        assert by_activity.status is CallStatus.CANCELLED
        assert inspect.getcoroutinestate(first) == inspect.CORO_CLOSED
        assert inspect.getcoroutinestate(second) == inspect.CORO_CLOSED

    async def test_cancelled_after_launch_before_its_first_step(self) -> None:
        coro = echo(1)
        async with Activity() as act:
            call = await act.asynchronous_call(coro)
            assert not call.done()
            assert call.cancel("now")
            await act.wait_idle()
        assert call.status is CallStatus.CANCELLED
        assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED


class TestLimits:
    async def test_cancel_of_a_deep_tree(self) -> None:
        depth = 3 * 1000  # well past the default recursion limit
        async with contextlib.AsyncExitStack() as stack:
            acts = [await stack.enter_async_context(Activity()) for _ in range(depth)]
            acts[0].cancel("stop")
            for act in (acts[1], acts[depth // 2], acts[-1]):
                with pytest.raises(ActivityClosedError, match="was cancelled"):
                    await act.asynchronous_call(echo, 1)

    async def test_exit_without_enter(self) -> None:
        act = Activity(name="never")
        with pytest.raises(ActivityError, match="never entered"):
            await act.__aexit__(None, None, None)

    async def test_exit_twice(self) -> None:
        act = Activity()
        await act.__aenter__()
        await act.__aexit__(None, None, None)
        with pytest.raises(ActivityError, match="left already"):
            await act.__aexit__(None, None, None)

    @pytest.mark.parametrize("name", ["", "x" * 201, 3])
    async def test_bad_call_name(self, name: Any) -> None:
        async with Activity() as act:
            coro = echo(1)
            with pytest.raises(InvalidArgumentError, match="name") as info:
                await act.asynchronous_call(coro, name=name)
            assert info.value.field == "name"
            assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
            assert act.statistics().accepted == 0

    async def test_unobserved_failures_are_kept_up_to_a_bound(self) -> None:
        kept = MAX_KEPT_FAILURES
        extra = 30
        with pytest.raises(ExceptionGroup) as info:
            async with Activity() as act:
                calls = [await act.asynchronous_call(boom) for _ in range(kept + extra)]
                await act.wait_idle()
                assert len(core_of(act).unobserved) == kept
                # Observing one that was only counted takes it off the count.
                assert isinstance(calls[-1].exception(), ValueError)
        errors = exceptions_of(info.value)
        assert len(errors) == kept + 1
        assert all(type(e) is ValueError for e in errors[:kept])
        summary = errors[-1]
        assert isinstance(summary, ActivityError)
        assert f"{extra - 1} more unobserved failure(s)" in str(summary)
        assert f"ValueError x {extra - 1}" in str(summary)


class TestAbandonedBeforeItStarts:
    """A blocking call that ends before its worker thread starts it never runs."""

    @pytest.mark.parametrize("anyio_backend", ["trio"])
    async def test_cancelled_between_hand_off_and_start(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from activity._backends import _trio

        loop_thread = threading.current_thread()
        at_door = threading.Event()
        go = threading.Event()
        passed = threading.Event()
        real = _trio.handoff_lock

        class SlowDoor:
            """Holds the worker thread at the hand-off until the call was cancelled."""

            def __enter__(self) -> None:
                if threading.current_thread() is not loop_thread:
                    at_door.set()
                    go.wait(LIMIT)
                real.acquire()

            def __exit__(self, *exc_info: object) -> None:
                real.release()
                if threading.current_thread() is not loop_thread:
                    passed.set()

        monkeypatch.setattr(_trio, "handoff_lock", SlowDoor())
        ran: list[int] = []
        async with Activity() as act:
            call = await act.asynchronous_call(ran.append, 1)
            await until(at_door.is_set)
            assert call.cancel()
            with anyio.fail_after(LIMIT):
                await call.wait()
        go.set()
        await until(passed.is_set)
        assert ran == []
        assert call.status is CallStatus.CANCELLED
        assert_balanced(act.statistics())


class TestNowait:
    """asynchronous_call_nowait() accepts or refuses before it returns, whatever the overflow."""

    async def test_accepts_runs_and_queues(self) -> None:
        gate = anyio.Event()
        async with Activity(max_concurrency=1, max_pending=1) as act:
            blocker = act.asynchronous_call_nowait(gate.wait)
            queued = act.asynchronous_call_nowait(echo, 2, name="second")
            assert (blocker.status, queued.status) == (CallStatus.RUNNING, CallStatus.PENDING)
            assert queued.name == "second"
            gate.set()
            with anyio.fail_after(LIMIT):
                assert await queued == 2
        stats = act.statistics()
        assert (stats.accepted, stats.completed) == (2, 2)

    @pytest.mark.parametrize("overflow", [Overflow.REJECT, Overflow.WAIT])
    async def test_refuses_at_once_when_full(self, overflow: Overflow) -> None:
        gate = anyio.Event()
        async with Activity(max_concurrency=1, max_pending=0, overflow=overflow) as act:
            act.asynchronous_call_nowait(gate.wait)
            coro = echo(1)
            with pytest.raises(AsyncWorkRejectedError):
                act.asynchronous_call_nowait(coro)
            assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
            gate.set()
        stats = act.statistics()
        assert (stats.accepted, stats.rejected, stats.completed) == (1, 1, 1)

    async def test_bad_input_and_a_closed_activity(self) -> None:
        async with Activity() as act:
            with pytest.raises(InvalidArgumentError):
                act.asynchronous_call_nowait(42)  # type: ignore[call-overload]
            with pytest.raises(InvalidArgumentError):
                act.asynchronous_call_nowait(echo, 1, timeout=-1)
        with pytest.raises(ActivityClosedError):
            act.asynchronous_call_nowait(echo, 1)
        assert act.statistics().accepted == 0

    async def test_from_another_thread_is_refused(self) -> None:
        async with Activity() as act:
            with pytest.raises(WrongThreadError):
                await anyio.to_thread.run_sync(act.asynchronous_call_nowait, echo, 1)


class Patient:
    """A blocking body that runs until check_cancelled() stops it."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.left = threading.Event()
        self.seen: list[BaseException] = []

    def __call__(self) -> None:
        self.started.set()
        try:
            while True:
                check_cancelled()
                time.sleep(0.001)
        except BaseException as exc:
            self.seen.append(exc)
            raise
        finally:
            self.left.set()


class TestCooperativeCancellation:
    """A blocking body can see that its call was asked to stop, and stop."""

    async def test_check_cancelled_ends_a_cancelled_blocking_body(self) -> None:
        patient = Patient()
        async with Activity() as act:
            call = await act.asynchronous_call(patient)
            await until(patient.started.is_set)
            assert not call.done()
            call.cancel("enough")
            with anyio.fail_after(LIMIT):
                await call.wait()
            await until(patient.left.is_set)
        assert call.status is CallStatus.CANCELLED
        (exc,) = patient.seen
        assert isinstance(exc, CallCancelledError)
        assert "enough" in str(exc)
        stats = act.statistics()
        assert (stats.cancelled, stats.failed) == (1, 0)

    async def test_check_cancelled_after_a_timeout(self) -> None:
        patient = Patient()
        async with Activity() as act:
            call = await act.asynchronous_call(patient, timeout=0.01)
            with anyio.fail_after(LIMIT):
                await call.wait()
            await until(patient.left.is_set)
            assert isinstance(call.exception(), CallTimeoutError)
        (exc,) = patient.seen
        assert isinstance(exc, CallTimeoutError)

    async def test_cancel_requested(self) -> None:
        answers: list[bool] = []
        gate = threading.Event()

        def look() -> None:
            answers.append(cancel_requested())
            gate.wait(LIMIT)
            answers.append(cancel_requested())

        assert not cancel_requested()
        async with Activity() as act:
            assert not cancel_requested()  # the block is no call
            check_cancelled()
            call = await act.asynchronous_call(look)
            await until(lambda: len(answers) == 1)
            call.cancel()
            gate.set()
            await until(lambda: len(answers) == 2)
        assert answers == [False, True]

    async def test_in_a_coroutine_body(self) -> None:
        seen: list[bool] = []

        async def body() -> None:
            seen.append(cancel_requested())
            act = current_activity()
            assert act is not None
            act.cancel("stop")
            seen.append(cancel_requested())
            check_cancelled()  # a coroutine is cancelled at its next await instead
            await anyio.lowlevel.checkpoint()

        async with Activity() as act:
            with pytest.raises(CallCancelledError, match="stop"):
                await act.synchronous_call(body)
        assert seen == [False, True]
