"""The trio backend: tasks of a trio nursery, each in its own trio cancel scope.

``TrioDispatcher`` (trio, the other loop anyio runs on) starts each call as
a task of a trio nursery whose only frame, besides the body's, is the one
that runs the body inside a trio cancel scope and then finishes the call.
There is no anyio task group and no anyio cancel scope: each wraps trio's
own and about doubles what a call in flight costs. Blocking calls go through
``anyio.to_thread.run_sync`` (trio's own cache of threads, which also end when
idle) with the activity's ``CapacityLimiter``.
"""

from __future__ import annotations

import contextvars
import functools
import threading
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from .._call import BLOCKING, CANCEL_REQUESTED, CANCELLED, COMPLETED, COROUTINE, FAILED
from .._workers import worker_threads
from ._common import (
    CHECKED_RESULTS,
    drive_in_context,
    host_of,
    is_coroutine,
    outcome_of_result,
    reentry_host,
    run_here,
    timeout_error,
)
from ._runner import Runner

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    import trio

    from .._apartment import Apartment
    from .._call import BaseCall, Event
    from .._context import Frame
    from .._workers import WorkItem
    from ._common import DispatchHost, Outcome, ReentryHost

__all__ = ["TrioDispatcher"]


#: Guards a hand-off's one contested step: its thread starting the body, or the loop
#: abandoning it.
handoff_lock = threading.Lock()


class _Handoff:
    """A blocking body handed to one of anyio's worker threads, which may yet be abandoned.

    anyio gives the body to a thread before that thread starts it. A call cancelled
    (or timed out) in between ends at once, so the body must then never start: its
    activity may have closed by the time the thread gets to it.
    """

    __slots__ = ("abandoned", "started")

    def __init__(self) -> None:
        self.started = False
        self.abandoned = False

    def abandon(self) -> None:
        with handoff_lock:
            if not self.started:
                self.abandoned = True


def _boxed(
    handoff: _Handoff, run: Callable[..., Any], fn: Any, args: tuple[Any, ...]
) -> tuple[Any]:
    """``run(fn, *args)`` in one of anyio's worker threads, its result in a 1-tuple."""
    with handoff_lock:
        if handoff.abandoned:
            return (None,)  # the call has ended already; nobody reads this
        handoff.started = True
    worker_threads.serving = True
    return (run_here(run, fn, args),)


class _NoTicket:
    """No place was taken in the domain's line beforehand."""

    __slots__ = ()


_NO_TICKET = _NoTicket()


class TrioDispatcher:
    """Tasks of a trio nursery, each in its own trio cancel scope (see the module doc)."""

    __slots__ = (
        "_apartment",
        "_current_time",
        "_detached",
        "_event_class",
        "_limiter",
        "_nursery",
        "_nursery_manager",
        "_start_soon",
        "_task_name",
        "_token",
        "_trio_token",
        "cancel_scope",
        "cancelled_exc",
        "host",
    )

    def __init__(self, activity: DispatchHost, apartment: Apartment | None) -> None:
        import trio  # only ever imported on a trio loop

        self.host = activity
        self._apartment = apartment
        self._limiter = anyio.CapacityLimiter(activity.config.thread_limit)
        self._nursery_manager = trio.open_nursery()
        self._nursery: trio.Nursery | None = None
        self.cancel_scope = trio.CancelScope
        #: trio's own event: anyio's wraps it, and costs a layer per call that waits.
        self._event_class = trio.Event
        self._current_time = trio.current_time
        self.cancelled_exc: type[BaseException] = trio.Cancelled
        self._token = anyio.lowlevel.current_token()
        self._trio_token = trio.lowlevel.current_trio_token()
        self._task_name = f"activity {activity.name!r} call"
        self._start_soon: Callable[..., None] | None = None
        #: For a detached nursery (Activity.open()): (close it now, it has closed).
        self._detached: tuple[trio.Event, trio.Event] | None = None

    async def open(self, detached: bool = False) -> None:
        """Open the nursery the calls run in.

        :param detached: whether the nursery belongs to a system task of its own
            (``Activity.open()``, which any task may close later) rather than to
            the opening task (``async with``: trio's nurseries belong to a task)
        """
        if detached:
            import trio

            opened = trio.Event()
            self._detached = (trio.Event(), trio.Event())  # close now, closed
            trio.lowlevel.spawn_system_task(self._hold_nursery, opened, name=self._task_name)
            await opened.wait()
            return
        self._started(await self._nursery_manager.__aenter__())

    def _started(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        # One name for every call task: trio would otherwise format one per task.
        self._start_soon = functools.partial(nursery.start_soon, name=self._task_name)

    async def _hold_nursery(self, opened: trio.Event) -> None:
        """The system task that owns a detached activity's nursery until it closes."""
        import trio

        assert self._detached is not None
        close_now, closed = self._detached
        try:
            async with trio.open_nursery() as nursery:
                self._started(nursery)
                opened.set()
                await close_now.wait()
        finally:
            closed.set()

    def new_event(self) -> Event:
        return self._event_class()

    #: trio's event costs no more with one waiter than a signal of its own would.
    new_signal = new_event

    def is_cancellation(self, exc: BaseException) -> bool:
        return isinstance(exc, self.cancelled_exc)

    def start(self, call: BaseCall[Any]) -> None:
        context = call.context
        assert context is not None
        # trio starts new tasks in no set order: take the call's place in the
        # domain's line now, so the domain stays FIFO in submission order.
        domain = self.host.domain
        ticket = None if domain is None else domain.reserve(call.causality)
        # The new task runs in a copy of the context current at start_soon.
        start_soon = self._start_soon
        assert start_soon is not None, "the dispatcher is not open"
        context.run(start_soon, self._run_calls, call, ticket)

    async def _run_calls(self, call: BaseCall[Any], ticket: Event | None) -> None:
        """A runner task: run ``call``, then each call that settling the last handed over.

        The first call runs as the task's own body, in the task's copy of its
        context; each later one is driven step by step inside its own context,
        in a cancel scope of its own, so that nothing of one call reaches the next.
        """
        host = self.host
        runner = Runner(call)
        # The runner holds the call from now on (see CoreState.runners).
        host.runners.add(runner)
        host.running_calls.discard(call)
        try:
            outcome = await self._run(call, ticket, False, runner)
            while True:
                if outcome[0] is CANCELLED and outcome[2] is not None:
                    raise outcome[2]  # the host's cancellation: the runner ends with its call
                following = runner.next_call
                if following is None:
                    return
                runner.next_call = None
                call = runner.call = following
                if call.kind is BLOCKING or host.domain is not None:
                    # A blocking call's thread may outlive a cancellation inside the
                    # call's own context, which a runner would then enter to settle it;
                    # a call that enters a domain takes its place in the domain's line.
                    host.running_calls.add(call)  # until the runner that start() makes holds it
                    self.start(call)
                    return
                outcome = await self._run(call, None, True, runner)
        finally:
            host.runners.discard(runner)

    async def _blocking(self, call: BaseCall[Any], run: Callable[..., Any]) -> Any:
        if self.host.bound_to_loop:
            return run_here(run, call.fn, call.args)
        host = host_of(call)
        apartment = self._apartment
        if host is not None or apartment is not None:
            ended = anyio.Event()
            thread = host if host is not None else apartment
            assert thread is not None
            future = thread.submit(run, call.fn, call.args, self._waker(ended))
            try:
                await ended.wait()
            except self.cancelled_exc:
                # A host's thread is held by the call waiting for this one anyway.
                if not future.cancel() and host is None and apartment is not None:
                    apartment.abandon()
                raise
            return future.result()
        # Boxed: trio refuses a thread's result that is a coroutine with a TypeError of
        # its own; the activity reports that mistake itself (outcome_of_result).
        handoff = _Handoff()
        try:
            boxed = await anyio.to_thread.run_sync(
                _boxed,
                handoff,
                run,
                call.fn,
                call.args,
                limiter=self._limiter,
                abandon_on_cancel=True,
            )
        except self.cancelled_exc:
            handoff.abandon()
            raise
        return boxed[0]

    def _waker(self, event: Event) -> Callable[[WorkItem], None]:
        """A work item's done callback that sets ``event`` on this loop, from any thread."""
        loop_thread = threading.get_ident()
        token = self._token

        def wake(_: WorkItem) -> None:
            if threading.get_ident() == loop_thread:
                event.set()
                return
            try:
                anyio.from_thread.run_sync(event.set, token=token)
            except Exception:  # the loop has finished: nobody is waiting any more
                return

        return wake

    async def _run(
        self,
        call: BaseCall[Any],
        ticket: Event | _NoTicket | None = _NO_TICKET,
        inline: bool = True,
        runner: Runner | None = None,
    ) -> Outcome:
        """Run a call's body in its own cancel scope; a task also finishes the call.

        One coroutine does it all, the task's only frame besides the body's own:
        a call in flight costs a task, this frame and a cancel scope. ``inline``
        (``synchronous_call``) runs the body in the caller's task instead, each
        step inside the call's context.
        """
        activity = self.host
        domain = activity.domain
        if call.flags & CANCEL_REQUESTED and not inline:
            # Cancelled between start() and the task's first step.
            if call.kind is COROUTINE:
                call.fn.close()  # it never ran: Python must not warn that it was never awaited
            if domain is not None and not isinstance(ticket, _NoTicket):
                domain.abandon(call.causality, ticket)
            activity.finish(call, CANCELLED, None, None)
            return CANCELLED, None, None
        scope = self.cancel_scope()
        extras = call.extras
        if extras is not None and extras.timeout is not None:
            scope.deadline = self._current_time() + extras.timeout
        call.future = scope
        if call.flags & CANCEL_REQUESTED:
            scope.cancel()
        outcome: Outcome
        result: Any = None
        try:
            with scope:
                if domain is not None:
                    try:
                        if isinstance(ticket, _NoTicket):
                            await domain.enter(call.causality, activity)
                        else:
                            await domain.wait_turn(call.causality, ticket, activity)
                    except BaseException:
                        # Refused, timed out or cancelled in line: the body never runs.
                        if call.kind is COROUTINE:
                            call.fn.close()
                        raise
                try:
                    if call.kind is BLOCKING:
                        # A task's body runs in a copy of the context: if the task is
                        # cancelled while an abandoned thread still runs in it, the
                        # call's own context is not entered twice.
                        context = call.context if inline else contextvars.copy_context()
                        assert context is not None
                        result = await self._blocking(call, context.run)
                    elif inline:
                        context = call.context
                        assert context is not None
                        args = call.args
                        if call.kind is COROUTINE:
                            coro = call.fn
                        else:
                            coro = context.run(call.fn, *args) if args else context.run(call.fn)
                        result = (
                            await drive_in_context(coro, context) if is_coroutine(coro) else coro
                        )
                    else:
                        coro = call.fn if call.kind is COROUTINE else call.fn(*call.args)
                        result = await coro if is_coroutine(coro) else coro
                finally:
                    if domain is not None:
                        domain.leave(call.causality)
        except self.cancelled_exc as exc:
            # Cancelled from outside the call's own scope (the host went away).
            outcome = CANCELLED, None, exc
        except BaseException as exc:
            outcome = FAILED, None, exc
        else:
            if scope.cancelled_caught:
                if call.flags & CANCEL_REQUESTED:
                    outcome = CANCELLED, None, None
                else:
                    call.timed_out = True  # what an abandoned thread's check_cancelled() sees
                    outcome = FAILED, None, timeout_error(call)
            elif type(result) in CHECKED_RESULTS:
                outcome = outcome_of_result(call, result)
            else:
                outcome = COMPLETED, result, None
        finally:
            call.future = None
        if runner is not None:
            # A call that ends otherwise than by the host's cancellation frees its
            # place: the call that takes it runs next on this runner.
            status, value, failure = outcome
            if status is COMPLETED:
                runner.next_call = activity.complete(call, value)
            else:
                context = call.context
                assert context is not None
                host_cancelled = status is CANCELLED and failure is not None
                runner.next_call = context.run(
                    activity.finish, call, status, value, failure, not host_cancelled
                )
        return outcome

    def cancel_running(self, call: BaseCall[Any]) -> None:
        call.cancel_requested = True
        scope = call.future
        if scope is not None:
            scope.cancel()

    #: Its defaults run a synchronous call in the caller's task, without a frame more.
    run_inline = _run

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        async def run() -> None:
            await coro

        assert self._nursery is not None
        self._nursery.start_soon(run)

    async def wait_event(self, event: Event, timeout: float | None) -> bool:
        if timeout is None:
            await event.wait()
            return True
        with anyio.move_on_after(timeout):
            await event.wait()
        return event.is_set()

    async def wait_event_shielded(self, event: Event) -> None:
        with anyio.CancelScope(shield=True):
            await event.wait()

    def threads_waiting(self) -> int:
        """The tasks waiting for the activity's thread limiter."""
        for _ in range(3):
            try:
                return self._limiter.statistics().tasks_waiting
            except RuntimeError:  # read from another thread as its borrowers changed
                continue
        return 0

    def reentry_host(self, frame: Frame | None) -> ReentryHost | None:
        """The host the calling thread becomes to call back in from ``frame``, if any.

        Called from that thread (see :class:`ReentryHost`).
        """
        return reentry_host(
            self.host,
            frame,
            self._apartment,
            self._start_task_from_thread,
            self.cancelled_exc,
        )

    def _start_task_from_thread(
        self, fn: Callable[[], Coroutine[Any, Any, None]], context: contextvars.Context
    ) -> None:
        import trio

        try:
            self._trio_token.run_sync_soon(self._start_system_task, fn, context)
        except trio.RunFinishedError:
            raise anyio.RunFinishedError from None

    @staticmethod
    def _start_system_task(
        fn: Callable[[], Coroutine[Any, Any, None]], context: contextvars.Context
    ) -> None:
        import trio

        # A system task, as trio.from_thread.run starts: the activity's nursery may
        # be closing while the thread's own call still runs.
        trio.lowlevel.spawn_system_task(fn, context=context)

    async def aclose(self) -> None:
        if self._detached is not None:
            close_now, closed = self._detached
            close_now.set()
            with anyio.CancelScope(shield=True):
                await closed.wait()
            return
        try:
            await self._nursery_manager.__aexit__(None, None, None)
        except BaseExceptionGroup as group:
            # No call task raises; only the host's own cancellation can arrive here.
            cancelled, rest = group.split(self.cancelled_exc)
            if rest is not None or cancelled is None:
                raise
            raise cancelled.exceptions[0] from None
