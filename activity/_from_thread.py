"""Entering an activity from a thread that is not its loop's: ``*_from_thread``.

A plain thread (a sync framework, a C library's callback, a blocking call of
an activity) hands work to the activity's loop through anyio's portal to
that loop, and blocks until the activity has accepted it
(:func:`asynchronous_call_from_thread`) or until it has finished
(:func:`synchronous_call_from_thread`). The call carries the thread's
context, so a blocking call that calls back into its own activity keeps its
chain; such a call back is served on the waiting thread itself (see
``ReentryHost`` in ``_backends._common``).
"""

from __future__ import annotations

import concurrent.futures
from threading import current_thread, get_ident
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast, final

import anyio
import anyio.from_thread
import anyio.lowlevel

from ._call import COMPLETED, BaseCall
from ._context import begin_wait, check_wait, end_wait, frame_var
from ._core import State
from ._errors import ActivityClosedError, WrongThreadError

if TYPE_CHECKING:
    from ._lifecycle import Core

__all__ = ["CallFuture", "asynchronous_call_from_thread", "synchronous_call_from_thread"]

T = TypeVar("T")


def entry_token(core: Core) -> anyio.lowlevel.EventLoopToken:
    """The token of the activity's loop, for a thread that is not that loop's."""
    if core.state is State.NEW or core.state is State.CLOSED:
        raise core.closed_error()
    if get_ident() == core.thread_id:
        raise WrongThreadError(
            f"{current_thread().name!r} is the thread of activity {core.name!r}'s own "
            "event loop, which this call would block: await act.synchronous_call(...) "
            "or act.asynchronous_call(...) instead"
        )
    assert core.wake_token is not None
    return core.wake_token


def asynchronous_call_from_thread(
    core: Core, fn: Any, args: tuple[Any, ...], name: str | None, timeout: float | None
) -> concurrent.futures.Future[Any]:
    """Submit from another thread; block until accepted; a future of the result."""
    token = entry_token(core)
    frame = frame_var.get()

    async def submit() -> concurrent.futures.Future[Any]:
        frame_var.set(frame)  # this task's own context: the thread's chain goes on here
        call = await core.submit(fn, args, name, timeout)
        future = CallFuture(call)
        call.add_done_callback(future.resolve)
        return future

    try:
        return anyio.from_thread.run(submit, token=token)
    except anyio.RunFinishedError:
        raise ActivityClosedError(
            f"the event loop of activity {core.name!r} has finished"
        ) from None


def synchronous_call_from_thread(
    core: Core, fn: Any, args: tuple[Any, ...], timeout: float | None
) -> Any:
    """Run a call from another thread; block until it has finished; its result."""
    token = entry_token(core)
    frame = frame_var.get()

    async def run() -> Any:
        frame_var.set(frame)
        return await core.synchronous_call(fn, args, timeout)

    try:
        dispatcher = core.dispatcher
        host = None if dispatcher is None else dispatcher.reentry_host(frame)
        if host is not None:
            return host.run(run)
        return anyio.from_thread.run(run, token=token)
    except anyio.RunFinishedError:
        raise ActivityClosedError(
            f"the event loop of activity {core.name!r} has finished"
        ) from None


@final
class CallFuture(concurrent.futures.Future[T], Generic[T]):
    """A future of a call's result, for threads; reading it observes the call's failure."""

    def __init__(self, call: BaseCall[T]) -> None:
        super().__init__()
        self._call = call
        self.set_running_or_notify_cancel()  # the work is under way: cancel() says no

    def resolve(self, call: BaseCall[Any]) -> None:
        """The call's done callback: hand its outcome to the future."""
        if call.state is COMPLETED:
            self.set_result(call.value)
        else:
            assert call.error is not None
            self.set_exception(call.error)

    def result(self, timeout: float | None = None) -> T:
        chain = self._begin_wait()
        try:
            return super().result(timeout)
        finally:
            if chain is not None:
                end_wait(chain, self._call)
            if self.done():
                self._call.mark_observed()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        chain = self._begin_wait()
        try:
            return super().exception(timeout)
        finally:
            if chain is not None:
                end_wait(chain, self._call)
            if self.done():
                self._call.mark_observed()

    def _begin_wait(self) -> object | None:
        """Check and record on the activity's loop a wait of this thread's chain, if any.

        A blocking call that waits here for a call needing a domain its chain holds
        would wait forever: it raises :class:`WouldDeadlockError` instead. Checked on
        the loop, where the chains' state does not move during the check.
        """
        if self.done():
            return None
        frame = frame_var.get()
        chain = None if frame is None else frame.causality
        call = self._call
        core = cast("Core", call.host)
        if chain is None or get_ident() == core.thread_id or core.wake_token is None:
            return None

        def begin() -> None:
            check_wait(chain, call)
            begin_wait(chain, call)

        try:
            anyio.from_thread.run_sync(begin, token=core.wake_token)
        except anyio.RunFinishedError:
            return None
        return chain
