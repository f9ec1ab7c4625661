"""Steps 1 and 2 of a call: validate it, then admit it, queue it or refuse it.

:class:`Submitting` extends the core's state with submission: checking what
is submitted (through ``_validate``), making the :class:`~activity.Call` and
its copy of the submitter's context, and the admission policy over the
budget of ``_admission`` (run now, queue, wait for room, reject), launching
an admitted call on the backend, and pumping the queue when a place frees.
"""

from __future__ import annotations

from asyncio import _get_running_loop  # pyright: ignore[reportPrivateUsage]  # in asyncio.events.__all__
from contextvars import copy_context
from threading import get_ident
from time import perf_counter_ns
from types import CodeType, FunctionType
from typing import Any

from . import _tracking
from ._admission import Waiter
from ._call import (
    BLOCKING,
    COROUTINE_FUNCTION,
    HOLDS_SLOT,
    PENDING,
    RUNNING,
    SYNCHRONOUS,
    BaseCall,
    Kind,
)
from ._config import Overflow
from ._context import Frame, call_values, frame_var, get_frame, set_frame, visible_values
from ._core import OPEN, CoreState, task_of
from ._errors import ActivityClosedError, AsyncWorkRejectedError
from ._tracking import LONG, LONG_BUCKETS, SHORT, SHORT_BUCKETS, EventKind, bucket_of
from ._validate import (
    CO_COROUTINE,
    CO_GENERATORS,
    check_name,
    check_timeout,
    classify,
    refuse_coroutine,
)

__all__ = ["Submitting"]


class Submitting(CoreState):
    """Validation, admission and launching of calls."""

    __slots__ = ()

    async def submit(
        self, fn: Any, args: tuple[Any, ...], name: str | None, timeout: float | None
    ) -> BaseCall[Any]:
        """``asynchronous_call``: accept, queue, wait for room or reject."""
        call = self.make_call(fn, args, name, timeout)
        if not self.admit(call):
            if self.overflow is Overflow.WAIT:
                await self.wait_for_admission(call, self.config.admission_timeout)
            else:
                self.reject(call, fn)
        return call

    def submit_nowait(
        self, fn: Any, args: tuple[Any, ...], name: str | None, timeout: float | None
    ) -> BaseCall[Any]:
        """``asynchronous_call_nowait``: accept, queue or reject, at once."""
        call = self.make_call(fn, args, name, timeout)
        if not self.admit(call):
            self.reject(call, fn)
        return call

    def make_call(self, fn: Any, args: tuple[Any, ...], name: Any, timeout: Any) -> BaseCall[Any]:
        """Check a submission and make its call, or raise before anything is accepted."""
        if (
            self.fast_submit
            and type(fn) is FunctionType
            and name is None
            and timeout is None
            and self.state is OPEN
            # On its thread, in a task of its loop (see task_of); trio has no loop.
            and get_ident() == self.thread_id
            and (
                task_of(loop) is not None
                if (loop := self.loop) is not None
                else _get_running_loop() is None
            )
            and _tracking.hook is None
        ):
            # The common case, validate() and new_call() in one: a function
            # (coroutine or plain) without options, on the activity's own thread
            # while it is open, and no call-local values to copy.
            code = fn.__code__
            kind = self.last_kind if code is self.last_code else self.kind_of_code(code)
            if kind is not None:  # else a generator function: validate() says why not
                frame = get_frame()
                new_submitted = self.new_submitted  # a slot: called as a method, not specialized
                return new_submitted(
                    self,
                    kind,
                    fn,
                    args,
                    None if frame is None else frame.origin if frame.host is self else frame.host,
                    copy_context(),  # the frame is set when the call starts (launch)
                    perf_counter_ns(),  # its wait is timed from here (see CoreState.waits)
                )
        kind, body, target, call_timeout = self.validate(fn, args, timeout, name)
        return self.new_call(kind, body, args, target, name, call_timeout, frame_var.get(), False)

    def kind_of_code(self, code: CodeType) -> Kind | None:
        """How a plain function of ``code`` runs (``None``: a generator function).

        Remembered for the fast paths of submission, which read a function's
        flags only for a code object other than the last one: the same function
        is most often submitted again.
        """
        flags = code.co_flags
        if flags & CO_COROUTINE:
            kind = COROUTINE_FUNCTION
        elif flags & CO_GENERATORS:
            return None
        else:
            kind = BLOCKING
        self.last_code = code
        self.last_kind = kind
        return kind

    def admit(self, call: BaseCall[Any]) -> bool:
        """Start ``call`` now or queue it, if that overtakes no one; else return ``False``.

        ``Admission.can_run_now()`` and ``can_queue()``, inlined.
        """
        admission = self.admission
        if admission.waiters:
            return False
        if admission.slots < admission.max_concurrency and not admission.pending:
            admission.accept_running(call)
            self.waits.counts[0] += 1  # it waited for nothing
            if _tracking.hook is not None:
                _tracking.hook.started(self, call, 0)
            self.launch(call)
            return True
        if admission.pending < admission.max_pending:
            # accept_pending(), inlined: the call is this activity's own.
            counters = self.counters
            counters.accepted += 1
            admission.pending += 1
            admission.queue.append(call)
            return True
        return False

    def validate(
        self, fn: Any, args: tuple[Any, ...], timeout: Any, name: Any
    ) -> tuple[Kind, Any, Any, float | None]:
        """Check a submission before anything is accepted: (kind, body, on_error target, timeout).

        A refused coroutine object is closed, so Python never warns it was not awaited.
        """
        if (
            type(fn) is FunctionType
            and timeout is None
            and name is None
            and self.state is OPEN
            and self.on_own_loop()
        ):
            # The common cases: a function (coroutine or plain) without per-call
            # options, on the activity's own thread while it is open.
            flags = fn.__code__.co_flags
            if flags & CO_COROUTINE:
                return COROUTINE_FUNCTION, fn, None, self.timeout
            if not flags & CO_GENERATORS:
                return BLOCKING, fn, None, self.timeout
        try:
            self.check_open()
            kind, body, target = classify(fn, args)
            call_timeout = self.timeout if timeout is None else check_timeout(timeout, None)
            if name is not None:
                check_name(name)
        except BaseException as error:
            refuse_coroutine(fn)
            if _tracking.hook is not None and isinstance(error, ActivityClosedError):
                _tracking.hook.rejected(self, None, "closing")
            raise
        return kind, body, target, call_timeout

    def new_call(
        self,
        kind: Kind,
        body: Any,
        args: tuple[Any, ...],
        target: Any,
        name: str | None,
        timeout: float | None,
        frame: Frame | None,
        synchronous: bool,
    ) -> BaseCall[Any]:
        """Make a call and the copy of the submitter's context it will run in."""
        call = self.call_class.create(
            self,
            kind,
            body,
            args,
            self.origin_of(frame),
            synchronous,
            PENDING,
            False,
            target,
            name,
            timeout,
        )
        if synchronous and frame is not None and frame.causality is not None:
            # The caller waits for this call, so the call continues the caller's chain.
            call.causality = frame.causality
        if not synchronous:
            # The frame is set when the call starts (_launch): a queued call holds
            # no context node of its own (120 bytes, and one object fewer for the
            # garbage collector to traverse while the backlog waits).
            context = call.context = copy_context()
        else:
            # Set, copy, reset: the copy sees the call as its frame, the submitter
            # does not, and it costs half of setting the variable through Context.run().
            token = frame_var.set(call)
            context = call.context = copy_context()
            frame_var.reset(token)
        if self.calls_own_locals:
            # LocalScope.CALL: the call starts a table of values of its own, a copy of
            # what its submitter sees (as a task starts with a copy of the context).
            context.run(call_values.set, (self, visible_values(frame, self)))
        # Its wait is timed from here (see CoreState.waits).
        call.stamp = perf_counter_ns()
        if _tracking.hook is not None:
            _tracking.hook.accepted(self, call)
        return call

    def origin_of(self, frame: Frame | None) -> Any:
        """Where a call submitted from ``frame`` looks for locals its activity lacks."""
        if frame is None:
            return None
        activity = frame.host
        return frame.origin if activity is self else activity

    async def wait_for_admission(self, call: BaseCall[Any], timeout: float | None) -> None:
        """Park until the queue has room for ``call``, which is then accepted."""
        dispatcher = self.dispatcher
        assert dispatcher is not None
        event = dispatcher.new_signal()
        waiter = Waiter(call, event)
        self.admission.waiters.append(waiter)
        try:
            admitted = await dispatcher.wait_event(event, timeout)
        except BaseException:
            if not event.is_set():
                self.admission.waiters.remove(waiter)
                refuse_coroutine(call.fn)
            # else: the call was accepted before the cancellation arrived; it runs.
            raise
        if waiter.refused is not None:
            refuse_coroutine(call.fn)
            if _tracking.hook is not None:
                _tracking.hook.rejected(self, call, "closing")
            raise waiter.refused
        if not admitted:
            self.admission.waiters.remove(waiter)
            self.reject(call, call.fn, waited=timeout)

    def reject(self, call: BaseCall[Any], fn: Any, waited: float | None = None) -> None:
        self.counters.rejected += 1
        refuse_coroutine(fn)
        if _tracking.hook is not None:
            _tracking.hook.rejected(self, call, "full")
        if _tracking.listeners:
            _tracking.emit(EventKind.CALL_REJECTED, self, call)
        a = self.admission
        how = f" after waiting {waited} s" if waited is not None else ""
        where = f" in partition {a.partition!r}" if a.partition is not None else ""
        raise AsyncWorkRejectedError(
            f"activity {self.name!r} rejected {call.name!r}{how}: {a.slots} running "
            f"(max_concurrency={a.max_concurrency}) and {a.pending} pending "
            f"(max_pending={a.max_pending}){where}"
        )

    def launch(self, call: BaseCall[Any]) -> None:
        """Hand a call that was just counted as running to the dispatcher."""
        self.running_calls.add(call)
        if not call.flags & SYNCHRONOUS:
            call.context.run(set_frame, call)  # type: ignore[union-attr]
        self.dispatcher.start(call)  # type: ignore[union-attr]

    def pump(self, now: int = 0, take: bool = False) -> BaseCall[Any] | None:
        """Start queued calls while slots are free, then let waiters in.

        In a partition the queue is shared, so the next call may be another
        activity's: each call is launched by its own activity. With ``take``
        (a runner whose call just ended), the first call started that is this
        activity's own is returned, counted as running, instead of launched:
        the runner runs it next, in the same task.
        """
        admission = self.admission
        taken: BaseCall[Any] | None = None
        queue = admission.queue
        while True:
            if queue and admission.slots < admission.max_concurrency:
                # The oldest live call takes the place.
                call = queue.popleft()
                if call.state is not PENDING:
                    continue  # cancelled while it waited: a tombstone
                host: Submitting = call.host  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
                admission.slots += 1
                if not now:
                    now = perf_counter_ns()
                # The runner that asked starts the first of its activity's calls (and
                # holds it: not in running_calls, see CoreState.runners).
                taking = take and taken is None and host is self
                host.started_from_queue(call, now, taking)
                if taking:
                    taken = call
                else:
                    host.launch(call)
                continue
            if not admission.waiters:
                return taken
            waiter = admission.pop_waiter()
            if waiter is None:
                return taken
            call = waiter.call
            # Not can_run_now(): the waiters behind this one are no reason to queue it.
            if admission.slots < admission.max_concurrency and not admission.pending:
                admission.accept_running(call)
                self.started_queued(call, now)
            else:
                admission.accept_pending(call)
            waiter.event.set()

    def started_from_queue(self, call: BaseCall[Any], now: int, taken: bool) -> None:
        """Count a call of this activity that left the queue for a place, at ``now``.

        The caller took the call out of the queue and gave it a place; its
        wait ends and its run begins (``Admission``'s and the counters' part of
        starting it, and the wait's histogram). ``taken``: a runner runs it next,
        so its frame is set here (``launch()`` sets it otherwise).
        """
        self.counters.started += 1
        self.admission.pending -= 1
        call.flags |= HOLDS_SLOT
        call.state = RUNNING
        waited = now - call.stamp
        call.stamp = now
        waits = self.waits
        if waited < SHORT:  # Histogram.add(), inlined: the queue's hot path
            waits.counts[SHORT_BUCKETS[waited >> 8]] += 1
        elif waited < LONG:
            waits.counts[LONG_BUCKETS[waited >> 16]] += 1
        else:
            waits.counts[bucket_of(waited)] += 1
        if waited > waits.max:  # noqa: PLR1730  # max() is a call
            waits.max = waited
        if _tracking.hook is not None:
            _tracking.hook.started(self, call, waited)
        if taken and not call.flags & SYNCHRONOUS:
            call.context.run(set_frame, call)  # type: ignore[union-attr]

    @staticmethod
    def started_queued(call: BaseCall[Any], now: int) -> None:
        """Launch a call that waited (parked): its wait ends, its run begins."""
        host: Submitting = call.host  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
        if not now:
            now = perf_counter_ns()
        since = call.stamp
        waited = now - since if since else 0
        call.stamp = now
        host.waits.add(waited)
        if _tracking.hook is not None:
            _tracking.hook.started(host, call, waited)
        host.launch(call)

    def refuse_waiters(self, error: BaseException) -> None:
        for waiter in self.admission.take_waiters_of(self):
            waiter.refused = error
            waiter.event.set()
