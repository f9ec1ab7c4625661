"""How one call body runs: a task on the loop, a worker thread, or inline.

Two dispatchers share one small interface, and :class:`Activity` picks one
when it is entered:

``AsyncioDispatcher`` (asyncio and uvloop) is the hot path. A coroutine call
is one native task created with the call's context, finished by a done
callback: there is no wrapper coroutine and no anyio task group, whose
per-task cancel scope costs several times a native task. A blocking call is
one work item on a thread pool lent to the activity alone, whose size is the
activity's ``thread_limit`` (never asyncio's default executor); the work
item's done callback asks the loop to finish the call, with no task and no
asyncio future in between. A call cancelled while its thread runs is
finished at once, abandoned: the thread cannot be stopped, and its result is
ignored. Pools are lent, not made: an activity that closes hands its idle
pool back for the next one with the same limit, so a server that opens an
activity per request does not start threads per request. Calls that need
more (a synchronization domain to enter, an STA thread, the loop thread after
``bind_to_current_thread()``) run in one wrapper task each.

``TrioDispatcher`` (trio, the other loop anyio runs on) starts each call as
a task of a trio nursery whose only frame, besides the body's, is the one
that runs the body inside a trio cancel scope and then finishes the call.
There is no anyio task group and no anyio cancel scope: each wraps trio's
own and about doubles what a call in flight costs. Blocking calls go through
``anyio.to_thread.run_sync`` with the activity's ``CapacityLimiter``.

Both run a ``synchronous_call`` *inline*, in the caller's own task: the body's
coroutine is driven step by step inside the call's context by
:func:`drive_in_context`, so it sees its own copy of the context (and its
``ContextVar`` writes stay there) without the cost of a new task. Its common
case (a function that may start at once, no domain, no timeout) is handled
by ``Activity.synchronous_call`` itself, without the dispatcher's round trip:
the frame of such a coroutine call is a light ``InlineCall``, made a ``Call``
only if the call ends otherwise than completed (on trio the body runs in a
trio cancel scope of its own).

:class:`Apartment` is COM+'s single-threaded apartment: an activity's blocking
calls run one at a time on a thread of its own, started lazily and named after
the activity. Unbound, the apartment moves to a fresh thread when its thread is
held by an abandoned (cancelled or timed-out) call; bound
(``BIND_TO_POOL_THREAD``) it never changes thread, so thread-affine objects made
there stay usable.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import itertools
import math
import os
import queue
import threading
import types
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeGuard

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from ._call import (
    BLOCKING,
    CANCELLED,
    COMPLETED,
    COROUTINE,
    FAILED,
    RUNNING,
    Call,
    CallStatus,
)
from ._errors import CallTimeoutError, InvalidArgumentError, error_from_hresult
from ._hresult import HResult

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Generator

    from ._activity import Activity

__all__ = ["Apartment", "AsyncioDispatcher", "Dispatcher", "Event", "Outcome", "TrioDispatcher"]

#: (status, result, exception) of a finished call.
Outcome = tuple[CallStatus, Any, BaseException | None]


class Event(Protocol):
    """What both ``asyncio.Event`` and ``anyio.Event`` offer."""

    def set(self) -> None: ...
    def is_set(self) -> bool: ...
    async def wait(self) -> Any: ...


class Dispatcher(Protocol):
    """The backend-specific half of an activity."""

    def new_event(self) -> Event: ...
    def start(self, call: Call[Any]) -> None: ...
    def cancel_running(self, call: Call[Any]) -> None: ...
    async def run_inline(self, call: Call[Any]) -> Outcome: ...
    def spawn(self, coro: Coroutine[Any, Any, None]) -> None: ...
    def is_cancellation(self, exc: BaseException) -> bool: ...
    async def wait_event(self, event: Event, timeout: float | None) -> bool: ...
    async def wait_event_shielded(self, event: Event) -> None: ...
    async def aclose(self) -> None: ...


@types.coroutine
def drive_in_context(
    coro: Coroutine[Any, Any, Any], context: contextvars.Context
) -> Generator[Any, Any, Any]:
    """Run ``coro`` to completion in the current task, but inside ``context``.

    Each step of the coroutine runs under ``context.run``; whatever it yields
    (an asyncio future, a trio trap) goes up to the event loop unchanged, and
    whatever the loop sends or throws back goes down unchanged. This is what a
    task does, minus the task: the body gets its own context at the cost of one
    ``Context.run`` per step.
    """
    send = coro.send
    throw = coro.throw
    run = context.run
    try:
        yielded = run(send, None)
    except StopIteration as stop:
        return stop.value
    while True:
        value: Any = None
        error: BaseException | None = None
        try:
            value = yield yielded
        except GeneratorExit:
            run(coro.close)
            raise
        except BaseException as exc:
            error = exc
        try:
            yielded = run(send, value) if error is None else run(throw, error)
        except StopIteration as stop:
            return stop.value


_CoroutineType: Final = types.CoroutineType
#: The types of result that _outcome_of_result may turn into a failure.
_CHECKED_RESULTS: Final = frozenset({HResult, _CoroutineType})


def _is_coroutine(obj: object) -> TypeGuard[Coroutine[Any, Any, Any]]:
    """``inspect.iscoroutine``: the coroutine type cannot be subclassed, so one test."""
    return type(obj) is _CoroutineType


def _outcome_of_result(call: Call[Any], result: Any) -> Outcome:
    """Completed, unless the body returned a failing ``HResult`` or a stray coroutine."""
    if type(result) is HResult and result >= 0x80000000:
        return FAILED, None, error_from_hresult(result)
    if _is_coroutine(result):
        result.close()
        return (
            FAILED,
            None,
            InvalidArgumentError(
                f"{call.name!r} is a plain callable that returned a coroutine; pass the "
                "coroutine function itself (or the coroutine object) so that it runs on the loop"
            ),
        )
    return COMPLETED, result, None


def timeout_error(call: Call[Any]) -> CallTimeoutError:
    """The failure of a call whose run outlived its timeout."""
    extras = call._extras
    timeout = None if extras is None else extras.timeout
    return CallTimeoutError(f"call {call.name!r} did not finish within {timeout} s")


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


def _cancelled_outcome(call: Call[Any]) -> Outcome:
    """A call stopped by its timeout failed; one stopped on purpose was cancelled."""
    if call._timed_out and not call._cancel_requested:
        return FAILED, None, timeout_error(call)
    return CANCELLED, None, None


_PENDING: Final = 0
_RUNNING: Final = 1
_FINISHED: Final = 2
_CANCELLED: Final = 3
#: Guards a work item's one contested step: a thread starting it, or the loop cancelling it.
_claim: Final = threading.Lock()


class WorkItem:
    """A blocking body handed to a thread, and its outcome.

    The part of a ``concurrent.futures.Future`` that the dispatchers use
    (``cancel``, ``cancelled``, ``done``, ``result``, ``exception``) with one
    done callback given up front, and without the future's ``Condition``:
    nobody blocks on a work item, they are told by the callback. Its cycle
    costs a few hundred nanoseconds instead of some three microseconds, which
    a call awaited one at a time pays between the thread's wake-ups.
    """

    __slots__ = ("_args", "_exception", "_fn", "_on_done", "_release", "_result", "_run", "_state")

    def __init__(
        self,
        run: Callable[..., Any],
        fn: Any,
        args: tuple[Any, ...],
        on_done: Callable[[WorkItem], object] | None,
    ) -> None:
        self._run: Callable[..., Any] | None = run
        self._fn = fn
        self._args = args
        self._on_done = on_done
        #: What its pool counts free when the item is cancelled before it starts.
        self._release: Callable[[], None] | None = None
        self._state = _PENDING
        self._result: Any = None
        self._exception: BaseException | None = None

    def execute(self) -> bool:
        """Run the body in this thread, unless it was cancelled first; return whether it ran.

        :meth:`notify` follows, once the thread has counted itself free.
        """
        with _claim:
            started = self._state == _PENDING
            if started:
                self._state = _RUNNING
        if not started:
            return False  # cancelled while queued: cancel() has released it and told on_done
        run, fn, args = self._run, self._fn, self._args
        self._run = self._fn = None
        self._args = ()
        assert run is not None
        try:
            result = run(fn, *args)
        except BaseException as exc:
            self._exception = exc
            self._state = _FINISHED
            # The traceback keeps this frame: it must not keep the item (a cycle
            # through the exception) nor the body and its arguments.
            del self, run, fn, args
            return True
        del run, fn, args
        self._result = result
        self._state = _FINISHED
        return True

    def notify(self) -> None:
        """Tell ``on_done`` (once) that the work has ended."""
        on_done = self._on_done
        if on_done is not None:
            self._on_done = None
            on_done(self)

    def cancel(self) -> bool:
        """Cancel the work if no thread has started it; return whether it is cancelled."""
        with _claim:
            state = self._state
            if state == _PENDING:
                self._state = _CANCELLED
        if state == _PENDING:
            self._run = self._fn = None
            self._args = ()
            release = self._release
            if release is not None:
                release()  # no thread will run it: free its place in the pool's count now
            self.notify()
            return True
        return state == _CANCELLED

    def cancelled(self) -> bool:
        """Whether the work was cancelled before it started."""
        return self._state == _CANCELLED

    def done(self) -> bool:
        """Whether the work has finished or was cancelled."""
        return self._state >= _FINISHED

    def exception(self) -> BaseException | None:
        """What the finished body raised, or ``None``."""
        if self._state == _CANCELLED:
            raise concurrent.futures.CancelledError
        return self._exception

    def result(self) -> Any:
        """What the finished body returned; what it raised is raised."""
        if self._state == _CANCELLED:
            raise concurrent.futures.CancelledError
        exc = self._exception
        if exc is not None:
            try:
                raise exc
            finally:
                del exc, self  # no cycle through the traceback's frame
        return self._result


class _StaThread:
    """One apartment thread: runs submitted work one item at a time, in order."""

    __slots__ = ("queue", "thread")

    def __init__(self, name: str) -> None:
        self.queue: queue.SimpleQueue[WorkItem | None] = queue.SimpleQueue()
        # A daemon: an abandoned call that never returns must not keep the process alive.
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        get = self.queue.get
        while (item := get()) is not None:
            if item.execute():
                item.notify()
            del item

    def stop(self) -> None:
        self.queue.put(None)


class Apartment:
    """The single-threaded apartment of an STA activity (see the module doc)."""

    __slots__ = ("_bound", "_name", "_numbers", "_retired", "_thread")

    def __init__(self, name: str, *, bound: bool) -> None:
        self._name = name
        self._bound = bound
        self._numbers = itertools.count(1)
        self._thread: _StaThread | None = None
        self._retired: list[_StaThread] = []

    @property
    def bound(self) -> bool:
        """Whether the apartment keeps one thread for its whole life."""
        return self._bound

    def submit(
        self,
        run: Callable[..., Any],
        fn: Any,
        args: tuple[Any, ...],
        on_done: Callable[[WorkItem], object] | None = None,
    ) -> WorkItem:
        """Queue ``run(fn, *args)`` on the apartment thread, starting it if need be."""
        thread = self._thread
        if thread is None:
            number = next(self._numbers)
            suffix = "" if number == 1 else f"-{number}"
            thread = self._thread = _StaThread(f"activity-{self._name}-sta{suffix}")
        item = WorkItem(run, fn, args, on_done)
        thread.queue.put(item)
        return item

    def abandon(self) -> None:
        """The thread is held by an abandoned call: unbound, move to a fresh one."""
        if not self._bound and self._thread is not None:
            self._thread.stop()
            self._retired.append(self._thread)
            self._thread = None

    def stop(self) -> list[threading.Thread]:
        """Ask every thread the apartment started to stop; return them, to be joined."""
        threads = [*self._retired, *([self._thread] if self._thread is not None else [])]
        self._retired = []
        self._thread = None
        for sta in threads:
            sta.stop()
        return [sta.thread for sta in threads]


class Workers:
    """A thread pool lent to one activity at a time; its size is the activity's thread limit.

    Threads start as work needs them, up to ``limit``, and then wait on one
    queue. A thread counts itself free before it completes a work item, whose
    done callback tells the loop; after that it only goes back to the queue.
    Between the loop's wake-up and the call's end there is no lock and no
    condition to pass (``ThreadPoolExecutor`` has both, and holds the GIL for
    them while the loop waits to run).
    """

    __slots__ = ("_busy", "_lock", "_name", "_queue", "_threads", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._name = f"activity-worker-{next(_pool_numbers)}"
        self._queue: queue.SimpleQueue[WorkItem | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        #: Work items submitted and not finished (abandoned ones included).
        self._busy = 0
        self._threads = 0

    def submit(
        self,
        run: Callable[..., Any],
        fn: Any,
        args: tuple[Any, ...],
        on_done: Callable[[WorkItem], object] | None = None,
    ) -> WorkItem:
        """Run ``run(fn, *args)`` on a thread of the pool; ``on_done`` is told when it ends."""
        item = WorkItem(run, fn, args, on_done)
        item._release = self._release_one
        with self._lock:
            self._busy += 1
            # While busy <= threads, every queued item has an idle thread to take it.
            number = self._threads + 1 if self._busy > self._threads < self.limit else 0
            if number:
                self._threads = number
        if number:
            try:
                self._start_thread(number)
            except BaseException:
                # No new thread (the system's limit): the pool's others take the
                # item when one is free; with none, nothing is left counted.
                with self._lock:
                    self._threads -= 1
                    alone = self._threads == 0
                    if alone:
                        self._busy -= 1
                if alone:
                    raise
        self._queue.put(item)
        return item

    def _start_thread(self, number: int) -> None:
        thread = threading.Thread(target=self._serve, name=f"{self._name}_{number}")
        # A daemon: an abandoned call that never returns must not keep the process alive.
        thread.daemon = True
        thread.start()

    def _serve(self) -> None:
        get = self._queue.get
        while (item := get()) is not None:
            if item.execute():
                self._release_one()  # counted free first: the loop may return the pool once told
                item.notify()
            del item

    def _release_one(self) -> None:
        with self._lock:
            self._busy -= 1

    @property
    def idle(self) -> bool:
        """Whether no thread of the pool runs anything (no abandoned call holds one)."""
        return self._busy == 0

    def shutdown(self) -> None:
        """Cancel the work no thread has started; each thread ends after its current item."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item.cancel()  # which frees its place in the count, unless it already has
        for _ in range(self._threads):
            self._queue.put(None)


_pool_numbers = itertools.count(1)
_idle_pools: dict[int, list[Workers]] = {}
_idle_pools_lock = threading.Lock()
#: Idle pools kept per thread limit; more are shut down.
_MAX_IDLE_POOLS = 8


def _forget_idle_pools() -> None:
    """In a forked child: the idle pools' threads stayed in the parent."""
    global _idle_pools_lock  # it may have been held at the fork
    _idle_pools_lock = threading.Lock()
    _idle_pools.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_idle_pools)


def borrow_workers(limit: int) -> Workers:
    """Lend a pool of ``limit`` threads: an idle one if there is one, else a new one."""
    with _idle_pools_lock:
        idle = _idle_pools.get(limit)
        if idle:
            return idle.pop()
    return Workers(limit)


def return_workers(workers: Workers) -> None:
    """Take a pool back: keep it for the next activity if it is idle, else shut it down."""
    with _idle_pools_lock:
        idle = _idle_pools.setdefault(workers.limit, [])
        if workers.idle and len(idle) < _MAX_IDLE_POOLS:
            idle.append(workers)
            return
    # Threads abandoned by a cancelled call cannot be stopped; do not wait for them.
    workers.shutdown()


class AsyncioDispatcher:
    """Native asyncio tasks and a lent thread pool (see the module doc)."""

    __slots__ = (
        "_activity",
        "_apartment",
        "_loop",
        "_system_tasks",
        "_thread_limit",
        "_workers",
    )

    def __init__(
        self, activity: Activity, loop: asyncio.AbstractEventLoop, apartment: Apartment | None
    ) -> None:
        self._activity = activity
        self._loop = loop
        self._apartment = apartment
        self._thread_limit = activity.config.thread_limit
        self._workers: Workers | None = None
        self._system_tasks: set[asyncio.Task[None]] = set()

    def _lent_workers(self) -> Workers:
        workers = self._workers
        if workers is None:
            workers = self._workers = borrow_workers(self._thread_limit)
        return workers

    async def _in_thread(self, run: Callable[..., Any], call: Call[Any]) -> Any:
        """Run a blocking call's body on the lent pool and wait for its result."""
        loop = self._loop
        ended = loop.create_future()
        future = self._lent_workers().submit(
            run, call._fn, call._args, functools.partial(_signal_from_thread, loop, ended)
        )
        return await _result_of_work(future, ended)

    def new_event(self) -> Event:
        return asyncio.Event()

    def is_cancellation(self, exc: BaseException) -> bool:
        return isinstance(exc, asyncio.CancelledError)

    def start(self, call: Call[Any]) -> None:
        loop = self._loop
        context = call._context
        assert context is not None
        activity = self._activity
        plain = activity._domain is None
        if call._kind is BLOCKING:
            if plain and self._apartment is None and not activity._bound_to_loop:
                # No asyncio future in between: the work item's done callback asks
                # the loop to finish the call (thread_done), one hop instead of two.
                try:
                    call._future = self._lent_workers().submit(
                        context.run, call._fn, call._args, call._thread_done
                    )
                except BaseException as exc:  # no worker thread could be started
                    loop.call_soon(activity._finish, call, FAILED, None, exc)
                    return
            else:
                self._start_task(call, self._run_wrapped(call), context)
        elif plain:
            if call._kind is COROUTINE:
                coro = call._fn
            else:
                try:
                    coro = context.run(call._fn, *call._args)
                except BaseException as exc:
                    loop.call_soon(activity._finish, call, FAILED, None, exc)
                    return
                if not _is_coroutine(coro):
                    loop.call_soon(activity._finish, call, *_outcome_of_result(call, coro))
                    return
            self._start_task(call, coro, context)
        else:
            self._start_task(call, self._run_wrapped(call), context)
        extras = call._extras
        if extras is not None and extras.timeout is not None:
            extras.timer = loop.call_later(extras.timeout, self._on_timeout, call)

    def _start_task(
        self, call: Call[Any], coro: Coroutine[Any, Any, Any], context: contextvars.Context
    ) -> None:
        task = self._loop.create_task(coro, context=context)
        call._future = task
        # A bound method, not a closure: it lives as long as the task, and is smaller.
        task.add_done_callback(call._future_done, context=context)

    async def _run_wrapped(self, call: Call[Any]) -> Any:
        """A call that enters a domain, or runs on an STA thread or on the loop thread."""
        domain = self._activity._domain
        if domain is not None:
            await domain.enter(call._causality)
        try:
            if call._kind is BLOCKING:
                # A copy: if this task is cancelled while an abandoned thread still
                # runs in the context, the task must not need to enter it too.
                return await self._blocking(call, contextvars.copy_context().run)
            coro = call._fn if call._kind is COROUTINE else call._fn(*call._args)
            return await coro if _is_coroutine(coro) else coro
        finally:
            if domain is not None:
                domain.leave(call._causality)

    async def _blocking(self, call: Call[Any], run: Callable[..., Any]) -> Any:
        if self._activity._bound_to_loop:
            return run(call._fn, *call._args)
        apartment = self._apartment
        if apartment is not None:
            loop = self._loop
            ended = loop.create_future()
            future = apartment.submit(
                run, call._fn, call._args, functools.partial(_signal_from_thread, loop, ended)
            )
            try:
                return await _result_of_work(future, ended)
            except asyncio.CancelledError:
                if not future.cancelled():
                    apartment.abandon()
                raise
        return await self._in_thread(run, call)

    def future_done(self, call: Call[Any], future: asyncio.Future[Any] | WorkItem) -> None:
        """The done callback of a call's task or executor future (via ``Call``)."""
        self._activity._finish(call, *self._outcome(call, future))

    @staticmethod
    def _outcome(call: Call[Any], future: asyncio.Future[Any] | WorkItem) -> Outcome:
        extras = call._extras
        if extras is not None and extras.timer is not None:
            extras.timer.cancel()
            extras.timer = None
        call._future = None
        if future.cancelled():
            return _cancelled_outcome(call)
        exc = future.exception()
        if exc is not None:
            return FAILED, None, exc
        return _outcome_of_result(call, future.result())

    def thread_done(self, call: Call[Any], future: WorkItem) -> None:
        """The done callback of a blocking call's work item (via ``Call``).

        It runs in the worker thread, or in the loop's when the work item was
        cancelled before it started. The call is finished on the loop, in its own
        context, which the thread has left by now; a call already finished as
        abandoned (its context is gone) is not finished twice.
        """
        context = call._context
        if context is None:
            return
        try:
            self._loop.call_soon_threadsafe(self.future_done, call, future, context=context)
        except RuntimeError:  # the loop is closed: nobody is left to tell
            return

    def _cancel_future(self, call: Call[Any]) -> None:
        future = call._future
        if future is None or future.cancel():
            return
        if type(future) is WorkItem and not future.done():
            # A thread that runs cannot be stopped: the call ends now, abandoned,
            # and what the thread returns later is ignored.
            self._loop.call_soon(self._abandon, call)

    def _abandon(self, call: Call[Any]) -> None:
        if call._status is RUNNING:
            self._activity._finish(call, *_cancelled_outcome(call))

    def _on_timeout(self, call: Call[Any]) -> None:
        call._more().timer = None
        # Not after a cancel(): a call that runs in its caller's task must cancel that
        # task once, or the caller is left with a cancellation it never asked for.
        if call._status is RUNNING and call._future is not None and not call._cancel_requested:
            call._timed_out = True
            self._cancel_future(call)

    def cancel_running(self, call: Call[Any]) -> None:
        call._cancel_requested = True
        self._cancel_future(call)

    async def run_inline(self, call: Call[Any]) -> Outcome:
        loop = self._loop
        task = asyncio.current_task(loop)
        assert task is not None
        context = call._context
        assert context is not None
        call._future = task
        extras = call._extras
        if extras is not None and extras.timeout is not None:
            extras.timer = loop.call_later(extras.timeout, self._on_timeout, call)
        domain = self._activity._domain
        try:
            if domain is not None:
                await domain.enter(call._causality)
            try:
                if call._kind is BLOCKING:
                    result = await self._blocking(call, context.run)
                else:
                    coro = (
                        call._fn if call._kind is COROUTINE else context.run(call._fn, *call._args)
                    )
                    result = await drive_in_context(coro, context) if _is_coroutine(coro) else coro
            finally:
                if domain is not None:
                    domain.leave(call._causality)
        except asyncio.CancelledError as exc:
            ours = call._cancel_requested or call._timed_out
            if ours and task.uncancel() == 0:
                return _cancelled_outcome(call)
            return CANCELLED, None, exc
        except BaseException as exc:
            return FAILED, None, exc
        finally:
            call._future = None
            if extras is not None and extras.timer is not None:
                extras.timer.cancel()
                extras.timer = None
        if (call._cancel_requested or call._timed_out) and task.cancelling():
            # The body swallowed the cancellation we asked for and returned.
            task.uncancel()
        return _outcome_of_result(call, result)

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
        waiter = self._loop.create_task(event.wait())
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
            return_workers(workers)


def _boxed(run: Callable[..., Any], fn: Any, args: tuple[Any, ...]) -> tuple[Any]:
    """``run(fn, *args)``, its result in a 1-tuple."""
    return (run(fn, *args),)


class _NoTicket:
    """No place was taken in the domain's line beforehand."""

    __slots__ = ()


_NO_TICKET = _NoTicket()


class TrioDispatcher:
    """Tasks of a trio nursery, each in its own trio cancel scope (see the module doc)."""

    __slots__ = (
        "_activity",
        "_apartment",
        "_cancel_scope",
        "_cancelled_exc",
        "_current_time",
        "_limiter",
        "_nursery",
        "_nursery_manager",
        "_start_soon",
        "_task_name",
        "_token",
    )

    def __init__(self, activity: Activity, apartment: Apartment | None) -> None:
        import trio  # only ever imported on a trio loop

        self._activity = activity
        self._apartment = apartment
        self._limiter = anyio.CapacityLimiter(activity.config.thread_limit)
        self._nursery_manager = trio.open_nursery()
        self._nursery: trio.Nursery | None = None
        self._cancel_scope = trio.CancelScope
        self._current_time = trio.current_time
        self._cancelled_exc: type[BaseException] = trio.Cancelled
        self._token = anyio.lowlevel.current_token()
        self._task_name = f"activity {activity.name!r} call"
        self._start_soon: Callable[..., None] | None = None

    async def open(self) -> None:
        nursery = self._nursery = await self._nursery_manager.__aenter__()
        # One name for every call task: trio would otherwise format one per task.
        self._start_soon = functools.partial(nursery.start_soon, name=self._task_name)

    def new_event(self) -> Event:
        return anyio.Event()

    def is_cancellation(self, exc: BaseException) -> bool:
        return isinstance(exc, self._cancelled_exc)

    def start(self, call: Call[Any]) -> None:
        context = call._context
        assert context is not None
        # trio starts new tasks in no set order: take the call's place in the
        # domain's line now, so the domain stays FIFO in submission order.
        domain = self._activity._domain
        ticket = None if domain is None else domain.reserve(call._causality)
        # The new task runs in a copy of the context current at start_soon.
        start_soon = self._start_soon
        assert start_soon is not None, "the dispatcher is not open"
        context.run(start_soon, self._run, call, ticket, False)

    async def _blocking(self, call: Call[Any], run: Callable[..., Any]) -> Any:
        if self._activity._bound_to_loop:
            return run(call._fn, *call._args)
        apartment = self._apartment
        if apartment is not None:
            ended = anyio.Event()
            future = apartment.submit(run, call._fn, call._args, self._waker(ended))
            try:
                await ended.wait()
            except self._cancelled_exc:
                if not future.cancel():
                    apartment.abandon()
                raise
            return future.result()
        # Boxed: trio refuses a thread's result that is a coroutine with a TypeError of
        # its own; the activity reports that mistake itself (_outcome_of_result).
        boxed = await anyio.to_thread.run_sync(
            _boxed, run, call._fn, call._args, limiter=self._limiter, abandon_on_cancel=True
        )
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
        self, call: Call[Any], ticket: Event | _NoTicket | None = _NO_TICKET, inline: bool = True
    ) -> Outcome:
        """Run a call's body in its own cancel scope; a task also finishes the call.

        One coroutine does it all, the task's only frame besides the body's own:
        a call in flight costs a task, this frame and a cancel scope. ``inline``
        (``synchronous_call``) runs the body in the caller's task instead, each
        step inside the call's context.
        """
        activity = self._activity
        domain = activity._domain
        if call._cancel_requested and not inline:
            # Cancelled between start() and the task's first step.
            if domain is not None and not isinstance(ticket, _NoTicket):
                domain.abandon(call._causality, ticket)
            activity._finish(call, CANCELLED, None, None)
            return CANCELLED, None, None
        scope = self._cancel_scope()
        extras = call._extras
        if extras is not None and extras.timeout is not None:
            scope.deadline = self._current_time() + extras.timeout
        call._future = scope
        if call._cancel_requested:
            scope.cancel()
        outcome: Outcome
        result: Any = None
        try:
            with scope:
                if domain is not None:
                    if isinstance(ticket, _NoTicket):
                        await domain.enter(call._causality)
                    else:
                        await domain.wait_turn(call._causality, ticket)
                try:
                    if call._kind is BLOCKING:
                        # A task's body runs in a copy of the context: if the task is
                        # cancelled while an abandoned thread still runs in it, the
                        # call's own context is not entered twice.
                        context = call._context if inline else contextvars.copy_context()
                        assert context is not None
                        result = await self._blocking(call, context.run)
                    elif inline:
                        context = call._context
                        assert context is not None
                        coro = (
                            call._fn
                            if call._kind is COROUTINE
                            else context.run(call._fn, *call._args)
                        )
                        result = (
                            await drive_in_context(coro, context) if _is_coroutine(coro) else coro
                        )
                    else:
                        coro = call._fn if call._kind is COROUTINE else call._fn(*call._args)
                        result = await coro if _is_coroutine(coro) else coro
                finally:
                    if domain is not None:
                        domain.leave(call._causality)
        except self._cancelled_exc as exc:
            # Cancelled from outside the call's own scope (the host went away).
            outcome = CANCELLED, None, exc
        except BaseException as exc:
            outcome = FAILED, None, exc
        else:
            if scope.cancelled_caught:
                if call._cancel_requested:
                    outcome = CANCELLED, None, None
                else:
                    outcome = FAILED, None, timeout_error(call)
            elif type(result) in _CHECKED_RESULTS:
                outcome = _outcome_of_result(call, result)
            else:
                outcome = COMPLETED, result, None
        finally:
            call._future = None
        if not inline:
            activity._finish(call, *outcome)
        return outcome

    def cancel_running(self, call: Call[Any]) -> None:
        call._cancel_requested = True
        scope = call._future
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
        with anyio.move_on_after(math.inf if timeout is None else timeout):
            await event.wait()
        return event.is_set()

    async def wait_event_shielded(self, event: Event) -> None:
        with anyio.CancelScope(shield=True):
            await event.wait()

    async def aclose(self) -> None:
        try:
            await self._nursery_manager.__aexit__(None, None, None)
        except BaseExceptionGroup as group:
            # No call task raises; only the host's own cancellation can arrive here.
            cancelled, rest = group.split(self._cancelled_exc)
            if rest is not None or cancelled is None:
                raise
            raise cancelled.exceptions[0] from None
