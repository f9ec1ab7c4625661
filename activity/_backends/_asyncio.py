"""The asyncio backend: native tasks and a share of the worker pool.

``AsyncioDispatcher`` (asyncio and uvloop) is the hot path. A coroutine call
runs on a runner task (see ``_runner``), which drives it in the call's own
context and runs the call that takes its place next: there is no anyio task
group, whose per-task cancel scope costs several times a native task, and no
task per call under load. A blocking call is
one work item on the process-wide pool of worker threads (never asyncio's
default executor), taken under the activity's own share of it,
:class:`Workers`, which lets at most the activity's ``thread_limit`` of its
items hold a thread at once; the work item's done callback asks the loop to
finish the call, with no task and no asyncio future in between. A call
cancelled while its thread runs is finished at once, abandoned: the thread
cannot be stopped, and its result is ignored. The pool is shared by every
activity whatever its limit, so a server that opens an activity per request
does not start threads per request; a thread idle for
:data:`WORKER_IDLE_TIMEOUT` seconds ends. Calls that need more (a
synchronization domain to enter, an STA thread, the loop thread after
``bind_to_current_thread()``) run in one wrapper task each.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import sys
import types
from typing import TYPE_CHECKING, Any, Final, cast

import anyio

from .._call import BLOCKING, CANCELLED, COROUTINE, FAILED, RUNNING
from .._workers import WorkItem, borrow_workers, stop_iteration_error
from ._common import (
    CHECKED_RESULTS,
    cancelled_outcome,
    context_run,
    coroutine_send,
    drive_in_context,
    host_of,
    hosting,
    is_coroutine,
    outcome_of_result,
    reentry_host,
    run_here,
)
from ._runner import Runner

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Generator
    from contextvars import Context

    from .._apartment import Apartment
    from .._call import BaseCall, Event
    from .._context import Frame
    from .._workers import Workers
    from ._common import DispatchHost, Outcome, ReentryHost

__all__ = ["AsyncioDispatcher", "Signal"]

#: A coroutine's type: one identity test, since it cannot be subclassed.
_CoroutineType: Final[type[Any]] = types.CoroutineType


def _signal_from_thread(
    loop: asyncio.AbstractEventLoop, ended: asyncio.Future[None], _: object
) -> None:
    """A work item's done callback: mark ``ended`` on its loop (from any thread)."""
    try:
        loop.call_soon_threadsafe(_mark_ended, ended)
    except RuntimeError:  # the loop is closed: nobody is left to tell
        return


def _mark_ended(ended: asyncio.Future[None]) -> None:
    if not ended.done():  # else the waiter was cancelled
        ended.set_result(None)


async def _result_of_work(future: WorkItem, ended: asyncio.Future[None]) -> Any:
    """Wait for ``ended``, then return the work's result or raise its exception.

    The loop's future only signals the end, and the outcome is read from the
    work item: a future refuses StopIteration, with which ``wrap_future`` never
    completes. Cancelled, the work item is cancelled too (if it has not started).
    """
    try:
        await ended
    except asyncio.CancelledError:
        future.cancel()
        raise
    return future.result()


class Broadcast:
    """An event that any number of tasks may wait on: ``asyncio.Event``, bound when made.

    ``asyncio.Event`` finds the running loop on every ``wait()``, and
    ``_get_running_loop()`` asks the kernel for the process id on Python 3.11,
    once per awaited call. This one is made by the dispatcher for its loop. A
    waiter cancelled while it waits leaves the others waiting.
    """

    __slots__ = ("_loop", "_set", "_waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._set = False
        self._waiters: list[asyncio.Future[bool]] = []

    def set(self) -> None:
        """Set the event, waking every waiter."""
        if not self._set:
            self._set = True
            for future in self._waiters:
                if not future.done():
                    future.set_result(True)

    def is_set(self) -> bool:
        """Whether the event was set."""
        return self._set

    async def wait(self) -> bool:
        """Wait until the event is set (at once, if it is)."""
        if self._set:
            return True
        future: asyncio.Future[bool] = self._loop.create_future()
        self._waiters.append(future)
        try:
            return await future
        finally:
            self._waiters.remove(future)


class Signal:
    """An event that one task at a time waits on: ``asyncio.Event`` without its list.

    A parked submitter is its event's only waiter, so the event holds one loop
    future, made when it is first waited on, and ``wait()`` returns that future
    itself: no coroutine, no list of waiters, and none of ``asyncio.Event``'s
    binding to its loop under a lock. A waiter cancelled while it waits cancels
    the future; a later ``wait()`` makes a new one. ``is_set()`` says whether
    ``set()`` was called, whatever became of the future.
    """

    __slots__ = ("_future", "_loop", "_set")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._future: asyncio.Future[bool] | None = None
        self._set = False

    def set(self) -> None:
        """Set the event, waking its waiter if one waits."""
        if not self._set:
            self._set = True
            future = self._future
            if future is not None and not future.done():
                future.set_result(True)

    def is_set(self) -> bool:
        """Whether the event was set."""
        return self._set

    def wait(self) -> asyncio.Future[bool]:
        """A future that is done once the event is set (already, if it is)."""
        future = self._future
        if future is None or future.cancelled():
            future = self._future = self._loop.create_future()
            if self._set:
                future.set_result(True)
        return future


class AsyncioDispatcher:
    """Native asyncio tasks and a share of the worker pool (see the module doc)."""

    __slots__ = (
        "_apartment",
        "_loop",
        "_runner_context",
        "_system_tasks",
        "_thread_limit",
        "_workers",
        "host",
    )

    def __init__(
        self, activity: DispatchHost, loop: asyncio.AbstractEventLoop, apartment: Apartment | None
    ) -> None:
        self.host = activity
        self._loop = loop
        self._apartment = apartment
        self._thread_limit = activity.config.thread_limit
        self._workers: Workers | None = None
        self._system_tasks: set[asyncio.Task[None]] = set()
        #: The runners' own context: each call runs in its own, inside it.
        self._runner_context = contextvars.Context()

    def _lent_workers(self) -> Workers:
        workers = self._workers
        if workers is None:
            workers = self._workers = borrow_workers(self._thread_limit)
        return workers

    async def in_thread(self, run: Callable[..., Any], call: BaseCall[Any]) -> Any:
        """Run a blocking call's body on a worker thread and wait for its result.

        The thread is its chain's host if it has one (see :class:`ReentryHost`).
        """
        loop = self._loop
        ended = loop.create_future()
        host = hosting.get()
        threads = host if host is not None and host.takes(call) else self._lent_workers()
        future = threads.submit(
            run, call.fn, call.args, functools.partial(_signal_from_thread, loop, ended)
        )
        return await _result_of_work(future, ended)

    def new_event(self) -> Event:
        return Broadcast(self._loop)

    def new_signal(self) -> Event:
        return Signal(self._loop)

    def is_cancellation(self, exc: BaseException) -> bool:
        return isinstance(exc, asyncio.CancelledError)

    def start(self, call: BaseCall[Any]) -> None:
        loop = self._loop
        context = call.context
        assert context is not None
        activity = self.host
        plain = activity.domain is None
        if call.kind is BLOCKING:
            if plain and self._apartment is None and not activity.bound_to_loop:
                # No asyncio future in between: the work item's done callback asks
                # the loop to finish the call (thread_done), one hop instead of two.
                try:
                    call.future = self._lent_workers().submit(
                        context.run, call.fn, call.args, call.thread_done
                    )
                except BaseException as exc:  # no worker thread could be started
                    loop.call_soon(activity.finish, call, FAILED, None, exc)
                    return
            else:
                self._start_task(call, self._run_wrapped(call), context)
        elif plain:
            if call.kind is COROUTINE:
                coro = call.fn
            else:
                args = call.args
                try:
                    coro = context.run(call.fn, *args) if args else context.run(call.fn)
                except BaseException as exc:
                    if isinstance(exc, StopIteration):
                        exc = stop_iteration_error(exc)
                    loop.call_soon(activity.finish, call, FAILED, None, exc)
                    return
                if not is_coroutine(coro):
                    loop.call_soon(activity.finish, call, *outcome_of_result(call, coro))
                    return
            runner = Runner(call)
            call.future = runner
            # The runner holds the call from now on (see CoreState.runners).
            activity.runners.add(runner)
            activity.running_calls.discard(call)
            steps = cast("Coroutine[Any, Any, None]", self._task_coroutine(runner, call, coro))
            steps.send(None)  # primed: a cancellation before its first step reaches it
            runner.task = loop.create_task(steps, context=self._runner_context)
        else:
            self._start_task(call, self._run_wrapped(call), context)
        extras = call.extras
        if extras is not None and extras.timeout is not None:
            extras.timer = loop.call_later(extras.timeout, self._on_timeout, call)

    async def _runner(
        self, runner: Runner, call: BaseCall[Any], coro: Coroutine[Any, Any, Any]
    ) -> None:
        """A runner task's coroutine on Python 3.12 and later (see ``_task_coroutine``)."""
        await self._run_calls(runner, call, coro)

    @types.coroutine
    def _run_calls(
        self, runner: Runner, call: BaseCall[Any], coro: Coroutine[Any, Any, Any]
    ) -> Generator[Any, Any, None]:
        """Run ``call``, settle it, and run each call that takes the place it frees.

        Each call's coroutine is driven step by step inside the call's own context,
        as a task drives its coroutine: what the body yields goes up to the loop
        unchanged, and what the loop sends or throws comes back down. A
        cancellation asked through :meth:`Runner.cancel` while the body was not
        waiting is thrown in instead of the next value.
        """
        # No bound method of the host kept in a local: a runner's frame lives as long
        # as the runner, 64 bytes each for every call in flight.
        host = self.host
        run = context_run
        # Unbound: neither a bound method of the context nor one of the coroutine per call.
        send: Callable[[Any, Any], Any] = (
            coroutine_send if type(coro) is _CoroutineType else type(coro).send
        )
        error: BaseException | None = None
        try:
            try:
                # start() primes the generator to here, before it becomes the task's:
                # a task cancelled before its first step has the cancellation thrown
                # in here, and it goes on into the body, which ends the call as
                # cancelled as it would end a task of the call's own (and a coroutine
                # never started does not run).
                yield None
            except GeneratorExit:
                run(call.context, coro.close)
                raise
            except BaseException as exc:
                error = exc
            task: asyncio.Task[None] = runner.task  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
            while True:
                context: Context = call.context  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
                value: Any = None
                if runner.cancel_pending:  # cancelled before its first step
                    runner.cancel_pending = False
                    error = asyncio.CancelledError()
                stopped: BaseException | None = None
                outcome: Outcome | None = None
                while True:
                    try:
                        yielded = (
                            run(context, send, coro, value)
                            if error is None
                            else run(context, coro.throw, error)
                        )
                    except StopIteration as stop:
                        value = stop.value
                        if type(value) in CHECKED_RESULTS:
                            outcome = outcome_of_result(call, value)
                        break
                    except asyncio.CancelledError as exc:
                        if task.cancelling() > runner.requested:
                            # The runner task itself was cancelled, not for the call (the
                            # loop is ending, or the body cancelled its task): the call
                            # ends, and so does the runner.
                            stopped = exc
                            outcome = CANCELLED, None, None
                        else:
                            outcome = cancelled_outcome(call)
                        break
                    except BaseException as exc:
                        outcome = FAILED, None, exc
                        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                            stopped = exc
                        break
                    value = error = None
                    if runner.cancel_pending and yielded is not None:
                        # Asked while the body ran: the future it now waits on is cancelled
                        # as the step ends, as for a task whose cancel() came during its step.
                        runner.cancel_pending = False
                        task.cancel()
                        runner.requested += 1
                    runner.waiting_on = yielded
                    try:
                        value = yield yielded
                    except GeneratorExit:
                        run(context, coro.close)
                        raise
                    except BaseException as exc:
                        error = exc
                    runner.waiting_on = None
                    if runner.cancel_pending:
                        runner.cancel_pending = False
                        if error is None:
                            error = asyncio.CancelledError()
                if runner.requested:
                    runner.undo_requests()
                runner.cancel_pending = False
                extras = call.extras
                if extras is not None and extras.timer is not None:
                    extras.timer.cancel()
                    extras.timer = None
                call.future = None
                if outcome is None:
                    following = host.complete(call, value)
                else:
                    # Settled in the call's context, where a task's done callback would run.
                    following = run(context, host.finish, call, *outcome, stopped is None)
                if stopped is not None:
                    raise stopped
                while following is not None:
                    # The call that took the place: its body runs here, unless it is a
                    # blocking one (start() runs those).
                    call = runner.call = following
                    following = None
                    error = None
                    # (No domain to enter: a runner runs only for an activity without one.)
                    kind = call.kind
                    if kind is BLOCKING:
                        host.running_calls.add(call)  # start() runs it, not a runner
                        self.start(call)
                        return
                    if kind is COROUTINE:
                        coro = call.fn
                        send = coroutine_send if type(coro) is _CoroutineType else type(coro).send
                        break
                    context = call.context  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
                    args = call.args
                    try:
                        # Without arguments: no bound method, no tuple to unpack.
                        coro = context.run(call.fn, *args) if args else context.run(call.fn)
                    except BaseException as exc:
                        if isinstance(exc, StopIteration):
                            exc = stop_iteration_error(exc)
                        following = context.run(host.finish, call, FAILED, None, exc, True)
                        continue
                    if type(coro) is _CoroutineType:
                        send = coroutine_send
                        break
                    following = context.run(host.finish, call, *outcome_of_result(call, coro), True)
                else:
                    return
                call.future = runner
                extras = call.extras
                if extras is not None and extras.timeout is not None:
                    extras.timer = self._loop.call_later(extras.timeout, self._on_timeout, call)
        finally:
            host.runners.discard(runner)

    if sys.version_info >= (3, 12):
        _task_coroutine = _runner
    else:
        # Python 3.11 lets a task drive a generator-based coroutine itself: one
        # frame fewer to resume at each step of the runner. (3.12 takes only
        # coroutines, and the generator needs a coroutine around it.)
        _task_coroutine = _run_calls

    def _start_task(
        self, call: BaseCall[Any], coro: Coroutine[Any, Any, Any], context: contextvars.Context
    ) -> None:
        task = self._loop.create_task(coro, context=context)
        call.future = task
        # A bound method, not a closure: it lives as long as the task, and is smaller.
        task.add_done_callback(call.future_done, context=context)

    async def _run_wrapped(self, call: BaseCall[Any]) -> Any:
        """A call that enters a domain, or runs on an STA thread or on the loop thread."""
        domain = self.host.domain
        if domain is not None:
            try:
                await domain.enter(call.causality, self.host)
            except BaseException:
                # Refused, timed out or cancelled in line: the body never runs.
                if call.kind is COROUTINE:
                    call.fn.close()
                raise
        try:
            if call.kind is BLOCKING:
                # A copy: if this task is cancelled while an abandoned thread still
                # runs in the context, the task must not need to enter it too.
                return await self._blocking(call, contextvars.copy_context().run)
            coro = call.fn if call.kind is COROUTINE else call.fn(*call.args)
            return await coro if is_coroutine(coro) else coro
        finally:
            if domain is not None:
                domain.leave(call.causality)

    async def _blocking(self, call: BaseCall[Any], run: Callable[..., Any]) -> Any:
        if self.host.bound_to_loop:
            return run_here(run, call.fn, call.args)
        apartment = self._apartment
        if apartment is not None and host_of(call) is None:
            loop = self._loop
            ended = loop.create_future()
            future = apartment.submit(
                run, call.fn, call.args, functools.partial(_signal_from_thread, loop, ended)
            )
            try:
                return await _result_of_work(future, ended)
            except asyncio.CancelledError:
                if not future.cancelled():
                    apartment.abandon()
                raise
        return await self.in_thread(run, call)

    def future_done(self, call: BaseCall[Any], future: asyncio.Future[Any] | WorkItem) -> None:
        """The done callback of a call's task or executor future (via ``Call``)."""
        self.host.finish(call, *self._outcome(call, future))

    @staticmethod
    def _outcome(call: BaseCall[Any], future: asyncio.Future[Any] | WorkItem) -> Outcome:
        extras = call.extras
        if extras is not None and extras.timer is not None:
            extras.timer.cancel()
            extras.timer = None
        call.future = None
        if future.cancelled():
            return cancelled_outcome(call)
        exc = future.exception()
        if exc is not None:
            return FAILED, None, exc
        return outcome_of_result(call, future.result())

    def thread_done(self, call: BaseCall[Any], future: WorkItem) -> None:
        """The done callback of a blocking call's work item (via ``Call``).

        It runs in the worker thread, or in the loop's when the work item was
        cancelled before it started. The call is finished on the loop, in its own
        context, which the thread has left by now; a call already finished as
        abandoned (its context is gone) is not finished twice.
        """
        context = call.context
        if context is None:
            return
        try:
            self._loop.call_soon_threadsafe(self.future_done, call, future, context=context)
        except RuntimeError:  # the loop is closed: nobody is left to tell
            return

    def _cancel_future(self, call: BaseCall[Any]) -> None:
        future = call.future
        if future is None or future.cancel():
            return
        if type(future) is WorkItem and not future.done():
            # A thread that runs cannot be stopped: the call ends now, abandoned,
            # and what the thread returns later is ignored.
            self._loop.call_soon(self._abandon, call)

    def _abandon(self, call: BaseCall[Any]) -> None:
        if call.state is RUNNING:
            self.host.finish(call, *cancelled_outcome(call))

    def _on_timeout(self, call: BaseCall[Any]) -> None:
        call.more().timer = None
        # Not after a cancel(): a call that runs in its caller's task must cancel that
        # task once, or the caller is left with a cancellation it never asked for.
        if call.state is RUNNING and call.future is not None and not call.cancel_requested:
            call.timed_out = True
            self._cancel_future(call)

    def cancel_running(self, call: BaseCall[Any]) -> None:
        call.cancel_requested = True
        self._cancel_future(call)

    async def run_inline(self, call: BaseCall[Any]) -> Outcome:
        loop = self._loop
        task = asyncio.current_task(loop)
        assert task is not None
        context = call.context
        assert context is not None
        call.future = task
        extras = call.extras
        if extras is not None and extras.timeout is not None:
            extras.timer = loop.call_later(extras.timeout, self._on_timeout, call)
        domain = self.host.domain
        try:
            if domain is not None:
                try:
                    await domain.enter(call.causality, self.host)
                except BaseException:
                    if call.kind is COROUTINE:
                        call.fn.close()  # the body never runs
                    raise
            try:
                if call.kind is BLOCKING:
                    result = await self._blocking(call, context.run)
                else:
                    coro = call.fn if call.kind is COROUTINE else context.run(call.fn, *call.args)
                    result = await drive_in_context(coro, context) if is_coroutine(coro) else coro
            finally:
                if domain is not None:
                    domain.leave(call.causality)
        except asyncio.CancelledError as exc:
            ours = call.cancel_requested or call.timed_out
            if ours and task.uncancel() == 0:
                return cancelled_outcome(call)
            return CANCELLED, None, exc
        except BaseException as exc:
            return FAILED, None, exc
        finally:
            call.future = None
            if extras is not None and extras.timer is not None:
                extras.timer.cancel()
                extras.timer = None
        if (call.cancel_requested or call.timed_out) and task.cancelling():
            # The body swallowed the cancellation we asked for and returned.
            task.uncancel()
        return outcome_of_result(call, result)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coro)
        self._system_tasks.add(task)
        task.add_done_callback(self._system_tasks.discard)

    async def wait_event(self, event: Event, timeout: float | None) -> bool:
        if timeout is None:
            await event.wait()
            return True
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            return event.is_set()
        return True

    async def wait_event_shielded(self, event: Event) -> None:
        waiter = asyncio.ensure_future(event.wait(), loop=self._loop)
        cancelled: BaseException | None = None
        while not waiter.done():
            try:
                await asyncio.shield(waiter)
            except asyncio.CancelledError as exc:
                cancelled = exc
        if cancelled is not None:
            raise cancelled

    async def aclose(self) -> None:
        workers = self._workers
        if workers is not None:
            self._workers = None
            workers.shutdown()

    def threads_waiting(self) -> int:
        """The calls past the activity's ``thread_limit``: its worker share's gauge."""
        workers = self._workers
        return 0 if workers is None else workers.gauge.waiting

    def reentry_host(self, frame: Frame | None) -> ReentryHost | None:
        """The host the calling thread becomes to call back in from ``frame``, if any.

        Called from that thread (see :class:`ReentryHost`).
        """
        return reentry_host(
            self.host,
            frame,
            self._apartment,
            self._start_task_from_thread,
            asyncio.CancelledError,
        )

    def _start_task_from_thread(
        self, fn: Callable[[], Coroutine[Any, Any, None]], context: contextvars.Context
    ) -> None:
        try:
            self._loop.call_soon_threadsafe(self._start_system_task, fn, context=context)
        except RuntimeError:  # the loop is closed
            raise anyio.RunFinishedError from None

    def _start_system_task(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.spawn(fn())
