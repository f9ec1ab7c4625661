"""The end of a call: settle its outcome, route its failure, cancel.

:class:`Settling` extends submission with what happens when a call ends or
is stopped. ``finish`` settles every call, on every path and backend: the
status and result or exception stored once, the counters, whoever waits,
the failure routed (the awaiter, ``on_error``, the ``error_handler``, else
kept for the exit), the done callbacks, the tracking event, the freed place
given to the next call. Cancellation of one call, of all of an activity's
calls, and of an activity and its children are here too, as are the
cooperative checks (:func:`check_cancelled`, :func:`cancel_requested`) of a
call's own body.
"""

from __future__ import annotations

import inspect
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any, cast

import anyio

from . import _tracking
from ._backends._common import timeout_error
from ._call import (
    BLOCKING,
    CANCELLED,
    COMPLETED,
    COROUTINE,
    FAILED,
    HOLDS_SLOT,
    OBSERVED,
    PENDING,
    RUNNING,
    SYNCHRONOUS,
    BaseCall,
    CallStatus,
    InlineCall,
)
from ._context import frame_var
from ._core import MAX_KEPT_FAILURES, OPEN, CoreState, State
from ._errors import ActivityClosedError, ActivityError, CallCancelledError
from ._submit import Submitting
from ._tracking import LONG, LONG_BUCKETS, SHORT, SHORT_BUCKETS, EventKind, bucket_of
from ._validate import refuse_coroutine

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["Settling", "cancel_requested", "check_cancelled"]


class Settling(Submitting):
    """Outcomes, failure routing and cancellation."""

    __slots__ = ()

    def finish(
        self,
        call: BaseCall[Any],
        status: CallStatus,
        result: Any,
        exc: BaseException | None,
        take: bool = False,
    ) -> BaseCall[Any] | None:
        """Record how ``call`` ended, tell whoever waits, route a failure, admit more.

        :param take: asked by the runner that ran ``call``: the call of this
            activity that takes the place it freed is returned (see :meth:`pump`)
        """
        started = call.state
        if started is not RUNNING and started is not PENDING:
            return None  # already finished (a cancellation raced with the end)
        if started is PENDING and call.kind is COROUTINE:
            call.fn.close()  # it never ran: Python must not warn that it was never awaited
        freed = self.admission.finish(call, status)
        self.running_calls.discard(call)
        since = call.stamp  # when it started (see CoreState.waits)
        ran = -1
        end = 0
        if since and started is RUNNING:
            end = perf_counter_ns()
            ran = end - since
            self.runs.add(ran)
        if status is COMPLETED:
            call.outcome = result
        elif status is FAILED:
            call.outcome = exc
        else:
            call.outcome = self.cancelled_error(call)
        call.args = ()
        # Both refer back to the call (its context holds it as the frame; its own
        # chain is itself): cleared, the call is freed by reference counting alone.
        call.context = None
        call.causality = None
        extras = call.extras
        if extras is not None and extras.event is not None:
            extras.event.set()
        if status is FAILED:
            assert exc is not None
            self.on_failure(call, exc)
        if extras is not None and extras.callbacks is not None:
            callbacks = extras.callbacks
            extras.callbacks = None
            for callback in callbacks:
                self.invoke_handler(callback, call)
        if _tracking.hook is not None:
            _tracking.hook.finished(self, call, ran)
        if _tracking.listeners:
            _tracking.emit(EventKind.CALL_FINISHED, self, call)
        admission = self.admission
        taken = None
        if freed and (admission.queue or admission.waiters):
            taken = self.pump(end, take)  # the next call starts when this one ended: one clock read
        if self.idle_event is not None:
            self.signal_if_idle()
        return taken

    def complete(self, call: BaseCall[Any], result: Any) -> BaseCall[Any] | None:
        """A runner's call returned ``result``: settle it, and return the call it runs next.

        :meth:`finish` for the common case, a call that completed and that
        nothing else waits on or listens to (no extras: no done callback, no
        event, no timer); any other goes through :meth:`finish`, in its own
        context. The returned call, if any, took the place this one freed and is
        already counted as running (see :meth:`pump`).
        """
        if call.state is not RUNNING:
            return None  # already finished (a cancellation raced with the end)
        if call.extras is not None or _tracking.hook is not None or _tracking.listeners:
            return call.context.run(self.finish, call, COMPLETED, result, None, True)  # type: ignore[union-attr]
        self.counters.completed += 1
        call.state = COMPLETED
        call.outcome = result
        call.args = ()
        call.context = None  # as in finish(): the call is freed by reference counting alone
        call.causality = None
        end = perf_counter_ns()
        ran = end - call.stamp
        runs = self.runs
        if ran < SHORT:  # Histogram.add(), inlined: the hot path
            runs.counts[SHORT_BUCKETS[ran >> 8]] += 1
        elif ran < LONG:
            runs.counts[LONG_BUCKETS[ran >> 16]] += 1
        else:
            runs.counts[bucket_of(ran)] += 1
        if ran > runs.max:  # noqa: PLR1730  # max() is a call, on the hot path
            runs.max = ran
        taken = None
        flags = call.flags
        if flags & HOLDS_SLOT:
            call.flags = flags ^ HOLDS_SLOT
            admission = self.admission
            queue = admission.queue
            if queue and not admission.waiters:
                # pump(end, True) for the common case: the oldest queued call is
                # this activity's own, and takes the place as it is (no count of
                # places freed, then taken again).
                following = queue[0]
                if following.state is PENDING and following.host is self:
                    queue.popleft()
                    self.started_from_queue(following, end, True)
                    return following
            admission.slots -= 1
            if queue or admission.waiters:
                taken = self.pump(end, True)
        if taken is None and self.idle_event is not None:
            self.signal_if_idle()
        return taken

    def on_failure(self, call: BaseCall[Any], exc: BaseException) -> None:
        """Route a failure: on_error, error_handler; else keep it for the exit."""
        flags = call.flags
        if flags & SYNCHRONOUS:
            if not flags & OBSERVED:
                self.keep_unobserved(call)
            return
        observed = False
        extras = call.extras
        target = None if extras is None else extras.error_target
        if target is not None:
            self.invoke_handler(target.on_error, exc)
            observed = True
        handler = self.config.error_handler
        if handler is not None:
            self.invoke_handler(handler, call, exc)
            observed = True
        if not observed and not call.flags & OBSERVED:
            self.keep_unobserved(call)
        # The drain is where most failures happen: fail-fast holds there too.
        if self.fail_fast and (self.state is OPEN or self.state is State.DRAINING):
            self.cancel(f"fail-fast: call {call.name!r} failed with {type(exc).__name__}")

    def keep_unobserved(self, call: BaseCall[Any]) -> None:
        """Keep a failure nobody observed for the exit; past the bound, only count it."""
        if len(self.unobserved) < MAX_KEPT_FAILURES:
            self.unobserved[call.ident] = call
            return
        dropped = self.dropped_failures
        if dropped is None:
            dropped = self.dropped_failures = (set(), {})
        ids, by_type = dropped
        ids.add(call.ident)
        kind = type(call.error).__qualname__
        by_type[kind] = by_type.get(kind, 0) + 1

    def invoke_handler(self, handler: Callable[..., Any], *args: Any) -> None:
        if self.state is State.CLOSED:
            # Nobody is left to report to at exit: the caller hears of it at once.
            outcome = handler(*args)
            if inspect.isawaitable(outcome):
                refuse_coroutine(outcome)
                raise ActivityClosedError(
                    f"{handler!r} returned an awaitable, but activity {self.name!r} has "
                    "closed and nothing is left to await it"
                )
            return
        try:
            outcome = handler(*args)
        except BaseException as error:
            self.handler_failed(error)
            return
        if inspect.isawaitable(outcome):
            self.handlers_in_flight += 1
            failure = next((a for a in reversed(args) if isinstance(a, BaseException)), None)
            if failure is None and args and isinstance(args[0], BaseCall):
                failure = args[0].error
            self.dispatcher.spawn(self.await_handler(outcome, handler, failure))  # type: ignore[union-attr]

    async def await_handler(
        self, awaitable: Awaitable[Any], handler: object, failure: BaseException | None
    ) -> None:
        # In a scope of its own, so that the exit can stop a handler that never returns.
        scope = anyio.CancelScope()
        self.handler_scopes.add(scope)
        try:
            with scope:
                await awaitable
        except BaseException as error:
            if not self.dispatcher.is_cancellation(error):  # type: ignore[union-attr]
                self.handler_failed(error)
                return
            self.handler_errors.append(self.handler_cut_short(handler, failure))
            raise
        else:
            if scope.cancelled_caught:
                self.handler_errors.append(self.handler_cut_short(handler, failure))
        finally:
            self.handler_scopes.discard(scope)
            self.handlers_in_flight -= 1
            self.signal_if_idle()

    def handler_cut_short(self, handler: object, failure: BaseException | None) -> ActivityError:
        """The report of a handler stopped at exit; the failure it had is its cause."""
        error = ActivityError(
            f"{handler!r} of activity {self.name!r} was cancelled before it finished "
            f"(shutdown_timeout is {self.config.shutdown_timeout} s); the failure it was "
            "handling, its cause, may not have been dealt with"
        )
        error.__cause__ = failure
        return error

    def handler_failed(self, error: BaseException) -> None:
        # COM+ fails fast when OnError fails: the error is never swallowed, and the
        # activity stops taking and running work.
        self.handler_errors.append(error)
        self.cancel(f"an error handler failed with {type(error).__name__}")

    def failure_observed(self, call: BaseCall[Any]) -> None:
        if self.unobserved.pop(call.ident, None) is None and self.dropped_failures is not None:
            ids, by_type = self.dropped_failures
            if call.ident in ids:
                ids.discard(call.ident)
                kind = type(call.error).__qualname__
                by_type[kind] -= 1
                if not by_type[kind]:
                    del by_type[kind]

    # -- cancellation -------------------------------------------------------------------

    def cancel(self, reason: str | None = None) -> None:
        """Cancel every accepted call and stop admission.

        Pending calls end ``CANCELLED`` at once; running calls are cancelled at
        their next checkpoint. Later calls raise :class:`ActivityClosedError`.
        The block's body is not cancelled: ``await wait_idle()`` waits for the
        cancelled calls to end.

        :param reason: said in each call's :class:`CallCancelledError`
        """
        if self.wrong_thread():
            self.call_soon_threadsafe(self.cancel, reason)
            return
        # A loop, not recursion: a tree of activities may be nested arbitrarily deep.
        stack: list[tuple[Settling, str | None]] = [(self, reason)]
        while stack:
            core, why = stack.pop()
            if core.cancel_one(why):
                cause = f"its parent activity {core.name!r} was cancelled"
                stack.extend((cast("Settling", child), cause) for child in core.open_children())

    def cancel_one(self, reason: str | None) -> bool:
        """Cancel this activity's own work; return whether its children are due too."""
        state = self.state
        if state is State.NEW or state is State.CLOSED:
            return False
        if state is OPEN or state is State.DRAINING:
            self.state = State.CANCELLED
            self.fast_sync = False
        if self.cancel_reason is None:
            self.cancel_reason = reason or "the activity was cancelled"
        self.refuse_waiters(self.closed_error())
        self.cancel_all(reason)
        return True

    def cancel_call(self, call: BaseCall[Any], reason: str | None) -> bool:
        status = call.state
        if status is not PENDING and status is not RUNNING:
            return False
        if self.wrong_thread():
            # Asked from another thread: the loop does it, woken to do it now.
            return self.call_soon_threadsafe(self.cancel_call, call, reason)
        if status is PENDING:
            call.note_cancel_reason(reason)
            call.cancel_requested = True
            self.finish(call, CANCELLED, None, None)
            return True
        call.note_cancel_reason(reason)
        if not (call.cancel_requested or call.timed_out):
            # Once only: a second cancellation of a call that runs in its caller's task
            # would cancel that task once more than the call can take back.
            self.dispatcher.cancel_running(call)  # type: ignore[union-attr]
        return True

    def cancel_all(self, reason: str | None) -> None:
        for call in self.admission.take_pending_of(self):
            call.note_cancel_reason(reason)
            call.cancel_requested = True
            self.finish(call, CANCELLED, None, None)
        running = [*self.running_calls, *(runner.call for runner in self.runners)]
        for call in running:
            self.cancel_call(call, reason)  # nothing for a runner's call that has ended
        for inline in list(self.inline_calls):
            inline.cancel(reason)

    def cancelled_error(self, call: BaseCall[Any]) -> CallCancelledError:
        extras = call.extras
        reason = (None if extras is None else extras.cancel_reason) or self.cancel_reason
        because = f": {reason}" if reason else ""
        return CallCancelledError(f"call {call.name!r} was cancelled{because}")


def cancel_requested() -> bool:
    """Return whether the call this code runs in was asked to stop.

    True once the call was cancelled (its ``cancel()``, the activity's
    ``cancel()``, the shutdown) or timed out, even though its body, in a worker
    thread, is still running: a thread cannot be stopped from outside, so a
    long blocking body should look now and then and return early. Outside any
    call (in an activity's block, or outside any activity) it is ``False``.
    Safe to call from any thread.

    .. versionadded:: 0.1
    """
    frame = frame_var.get()
    if isinstance(frame, InlineCall):
        return frame.cancel_requested
    if not isinstance(frame, BaseCall):
        return False
    return frame.cancel_requested or frame.timed_out or frame.state is CANCELLED


def check_cancelled() -> None:
    """In a blocking call, raise its cancellation if it was asked to stop; else return.

    The cooperative check for blocking code, like
    ``anyio.from_thread.check_cancelled()``: a blocking body that calls it
    between steps ends soon after its call was cancelled or timed out, instead
    of running on unseen after the activity has moved on. The call has ended
    already, so what it raises is not reported again. In a coroutine body, and
    outside any call, it returns at once: a coroutine is cancelled at its next
    ``await`` anyway (:func:`cancel_requested` tells it earlier, if it must know).

    :raises CallCancelledError: if the call was cancelled
    :raises CallTimeoutError: if the call ran longer than its timeout

    .. versionadded:: 0.1
    """
    call = cast("BaseCall[Any] | InlineCall | CoreState | None", frame_var.get())
    if not isinstance(call, BaseCall) or call.kind is not BLOCKING:
        return
    if call.timed_out and not call.cancel_requested:
        raise timeout_error(call)
    if call.cancel_requested or call.state is CANCELLED:
        raise cast("Settling", call.host).cancelled_error(call)


cancel_requested.__module__ = "activity"
check_cancelled.__module__ = "activity"
