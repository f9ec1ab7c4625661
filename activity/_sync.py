"""``synchronous_call``: the caller waits for its call, which may run in the caller's task.

:class:`Synchronous` extends settling with the synchronous call. Its common
case (a function that may start at once, with no domain to enter and no
timer to arm) runs inline, in the caller's own task, with one path per
backend: on asyncio a coroutine body's frame is a light ``InlineCall``, made
a call only if it ends otherwise than completed; on trio the body runs in a
cancel scope of its own; a plain function goes to the worker threads. Every
other case makes a call and has the backend run it inline (``run_inline``),
or waits in line for a place.
"""

from __future__ import annotations

import asyncio
from asyncio import (
    _get_running_loop,  # pyright: ignore[reportPrivateUsage]  # in asyncio.events.__all__
)
from contextvars import copy_context
from threading import get_ident
from types import FunctionType
from typing import TYPE_CHECKING, Any, cast

from . import _tracking
from ._backends._common import CHECKED_RESULTS, drive_in_context, outcome_of_result
from ._call import (
    BLOCKING,
    CANCELLED,
    COMPLETED,
    COROUTINE_FUNCTION,
    FAILED,
    RUNNING,
    BaseCall,
    CallStatus,
    InlineCall,
    new_object,
)
from ._context import begin_wait, check_wait, end_wait, frame_var, get_frame, set_frame
from ._core import task_of
from ._errors import WouldDeadlockError
from ._outcome import Settling

if TYPE_CHECKING:
    from ._backends._asyncio import AsyncioDispatcher
    from ._backends._trio import TrioDispatcher
    from ._core import CoreState

__all__ = ["Synchronous"]


class Synchronous(Settling):
    """The synchronous call, inline where it can be."""

    __slots__ = ()

    @property
    def synchronization_timeout(self) -> float | None:
        """Seconds the activity's call chains wait for their turn in its domain.

        The activity's own ``synchronization_timeout``; when that is ``None`` and the
        activity joined its parent's domain, the value of the activity that made the
        domain (the nearest ancestor whose parent is not in it). Read only when a
        chain has to wait, so a free domain costs nothing more.
        """
        own = self.config.synchronization_timeout
        if own is not None:
            return own
        domain = self.domain
        maker: CoreState = self
        parent = self.parent
        while domain is not None and parent is not None and parent.domain is domain:
            maker = parent
            parent = parent.parent
        return maker.config.synchronization_timeout

    async def synchronous_call(self, fn: Any, args: tuple[Any, ...], timeout: float | None) -> Any:
        """Run ``fn(*args)`` in the activity; return its result (``Activity.synchronous_call``)."""
        task: asyncio.Task[Any] | None = None  # the caller's, found on asyncio below
        if (
            self.fast_sync
            and type(fn) is FunctionType
            and timeout is None
            # On its thread, in a task of its loop (see task_of); trio has no loop.
            and get_ident() == self.thread_id
            and (
                (task := task_of(loop)) is not None
                if (loop := self.loop) is not None
                else _get_running_loop() is None
            )
            and (
                (
                    kind := self.last_kind
                    if (code := fn.__code__) is self.last_code
                    else self.kind_of_code(code)
                )
                is COROUTINE_FUNCTION
                or (kind is BLOCKING and not (self.apartment or self.bound_to_loop))
            )
        ):
            # The common cases, inline: a coroutine function, or a plain function for
            # the worker threads, that may start at once, with no domain to enter and
            # no timeout to arm. The steps of the general path below, without the
            # branches that cannot apply.
            blocking = kind is BLOCKING
            frame = get_frame()
            admission = self.admission
            if frame is None:
                reentrant = False
                origin = None
            else:
                reentrant = frame.host is self
                origin = frame.origin if reentrant else frame.host
                reentrant = reentrant and frame.is_call
            if reentrant or (
                admission.slots < admission.max_concurrency
                and not admission.pending
                and not admission.waiters
            ):
                counters = self.counters
                counters.accepted += 1
                counters.started += 1
                if not reentrant:
                    admission.slots += 1
                if not blocking:
                    # A coroutine: its frame is an InlineCall, which becomes a Call
                    # only if the call ends otherwise than completed, unobserved.
                    causality = None if frame is None else frame.causality
                    if loop is None:
                        # trio: the body runs in a cancel scope of its own, which is
                        # what the activity cancels.
                        trio_dispatcher = cast("TrioDispatcher", self.dispatcher)
                        scope = trio_dispatcher.cancel_scope()
                        inline = InlineCall(self, origin, causality, scope)
                        inline_calls = self.inline_calls
                        inline_calls.add(inline)
                        result = None  # unless the scope catches the cancellation
                        try:
                            # The frame goes into the body's copy of the context by a
                            # call from C to C, cheaper than a first step in Python.
                            context = copy_context()
                            context.run(set_frame, inline)
                            with scope:
                                coro = fn(*args) if args else fn()
                                result = await drive_in_context(coro, context)
                        except BaseException as error:
                            call = self.promote(inline, fn, args, reentrant)
                            if isinstance(error, trio_dispatcher.cancelled_exc):
                                self.finish(call, CANCELLED, None, None)  # from outside
                            else:
                                self.finish(call, FAILED, None, error)
                            raise
                        if scope.cancelled_caught:
                            call = self.promote(inline, fn, args, reentrant)
                            return self.end_inline(call, CANCELLED, None, None)
                    else:
                        # The caller's task is what the activity's cancel() cancels.
                        # InlineCall(self, origin, causality, task), without the
                        # __init__ frame (about 600 instructions).
                        inline = new_object(InlineCall)
                        inline.host = self
                        inline.origin = origin
                        inline.causality = inline if causality is None else causality
                        inline.task = task
                        inline.cancel_requested = False
                        inline.cancel_reason = None
                        inline_calls = self.inline_calls
                        inline_calls.add(inline)
                        try:
                            context = copy_context()
                            context.run(set_frame, inline)
                            result = await drive_in_context(fn(*args) if args else fn(), context)
                        except asyncio.CancelledError:
                            call = self.promote(inline, fn, args, reentrant)
                            self.finish(call, CANCELLED, None, None)
                            if call.cancel_requested and task.uncancel() == 0:  # type: ignore[union-attr]
                                raise self.cancelled_error(call) from None
                            raise
                        except BaseException as error:
                            self.finish(
                                self.promote(inline, fn, args, reentrant), FAILED, None, error
                            )
                            raise
                        if inline.cancel_requested and task.cancelling():  # type: ignore[union-attr]
                            task.uncancel()  # type: ignore[union-attr]
                    inline.task = None
                    if _tracking.listeners or type(result) in CHECKED_RESULTS:
                        call = self.promote(inline, fn, args, reentrant)
                        return self.end_inline(call, *outcome_of_result(call, result))
                    inline.causality = None  # itself, when it started the chain
                    inline_calls.discard(inline)
                else:
                    # A plain function, for the worker threads.
                    call = self.call_class.create(
                        self, BLOCKING, fn, args, origin, True, RUNNING, not reentrant
                    )
                    call.observed = True  # its caller is told of its failure
                    if frame is not None and frame.causality is not None:
                        call.causality = frame.causality
                    token = frame_var.set(call)
                    context = call.context = copy_context()
                    frame_var.reset(token)
                    running_calls = self.running_calls
                    running_calls.add(call)
                    if loop is None:
                        # trio: the dispatcher hands it to anyio's worker threads, in a
                        # cancel scope of its own.
                        status, result, failure = await self.dispatcher.run_inline(call)  # type: ignore[union-attr]
                        if (
                            status is not COMPLETED
                            or call.state is not RUNNING
                            or _tracking.listeners
                        ):
                            return self.end_inline(call, status, result, failure)
                    else:
                        # asyncio: the lent thread pool.
                        call.future = task
                        try:
                            dispatcher = cast("AsyncioDispatcher", self.dispatcher)
                            result = await dispatcher.in_thread(context.run, call)
                        except asyncio.CancelledError:
                            call.future = None
                            ours = call.cancel_requested or call.timed_out
                            self.finish(call, CANCELLED, None, None)
                            if ours and task.uncancel() == 0:  # type: ignore[union-attr]
                                raise self.cancelled_error(call) from None
                            raise
                        except BaseException as error:
                            call.future = None
                            self.finish(call, FAILED, None, error)
                            raise
                        call.future = None
                        if call.cancel_requested and task.cancelling():  # type: ignore[union-attr]
                            task.uncancel()  # type: ignore[union-attr]
                        if (
                            call.state is not RUNNING
                            or _tracking.listeners
                            or type(result) in CHECKED_RESULTS
                        ):
                            return self.end_inline(call, *outcome_of_result(call, result))
                    # finish(), minus what a completed call that nobody else holds never needs.
                    call.state = COMPLETED
                    call.context = None  # both refer back to the call, as in finish()
                    call.causality = None
                    if args:
                        call.args = ()
                    running_calls.discard(call)
                    call.holds_slot = False
                counters.completed += 1
                if not reentrant:
                    admission.slots -= 1
                    if admission.pending or admission.waiters:
                        self.pump()
                if self.idle_event is not None:
                    self.signal_if_idle()
                return result
        return await self.synchronous_call_made(fn, args, timeout)

    async def synchronous_call_made(
        self, fn: Any, args: tuple[Any, ...], timeout: float | None
    ) -> Any:
        """The general path of ``synchronous_call``: the call is made, then run inline or queued.

        A coroutine of its own, so that the inline path's frame stays small.
        """
        kind, body, target, call_timeout = self.validate(fn, args, timeout, None)
        frame = frame_var.get()
        call = self.new_call(kind, body, args, target, None, call_timeout, frame, True)
        causality = call.causality
        domain = self.domain
        reentrant = (frame is not None and frame.is_call and frame.host is self) or (
            domain is not None and domain.owner is causality
        )
        admission = self.admission
        if reentrant or admission.can_run_now():
            admission.accept_running(call, hold_slot=not reentrant)
        else:
            return await self.synchronous_call_queued(call)
        self.running_calls.add(call)
        call.observed = True
        status, value, exc = await self.dispatcher.run_inline(call)  # type: ignore[union-attr]
        return self.end_inline(call, status, value, exc)

    async def wait_call(self, call: BaseCall[Any]) -> None:
        """Wait for ``call`` to finish (``await call``, ``call.wait()``, a queued synchronous call).

        A wait made by a call chain is checked against the chains that wait
        already, and recorded while it lasts: if ``call`` needs, directly or through
        other waiting chains, a synchronization domain that the waiting chain holds,
        the wait raises instead of hanging (see ``_context``).

        :raises WouldDeadlockError: if the wait would never end; ``call`` is left as it was
        """
        frame = frame_var.get()
        chain = None if frame is None else frame.causality
        if chain is None:
            await super().wait_call(call)
            return
        check_wait(chain, call)
        begin_wait(chain, call)
        try:
            await super().wait_call(call)
        finally:
            end_wait(chain, call)

    def end_inline(
        self, call: BaseCall[Any], status: CallStatus, value: Any, exc: BaseException | None
    ) -> Any:
        """Record how a synchronous call run inline ended; return its value or raise."""
        if status is CANCELLED:
            self.finish(call, CANCELLED, None, None)
            if exc is not None:  # the caller itself was cancelled
                raise exc
            raise self.cancelled_error(call)
        self.finish(call, status, value, exc)
        if exc is not None:
            raise exc
        return value

    def promote(
        self, inline: InlineCall, fn: Any, args: tuple[Any, ...], reentrant: bool
    ) -> BaseCall[Any]:
        """The Call of an inline call that ends otherwise than completed and unobserved."""
        call = self.call_class.create(
            self, COROUTINE_FUNCTION, fn, args, inline.origin, True, RUNNING, not reentrant
        )
        call.observed = True  # its caller is told of its failure
        call.cancel_requested = inline.cancel_requested
        call.note_cancel_reason(inline.cancel_reason)
        inline.task = None
        inline.causality = None
        self.inline_calls.discard(inline)
        self.running_calls.add(call)
        return call

    async def synchronous_call_queued(self, call: BaseCall[Any]) -> Any:
        """The slow path of ``synchronous_call``: wait in line, then await the call's task."""
        admission = self.admission
        if admission.can_queue():
            admission.accept_pending(call)
        else:
            await self.wait_for_admission(call, None)
        try:
            await call.wait()
        except WouldDeadlockError:
            self.cancel_call(call, "its caller's wait for it would deadlock")
            raise
        except BaseException:
            self.cancel_call(call, "the caller of synchronous_call was cancelled")
            raise
        return call.result()
