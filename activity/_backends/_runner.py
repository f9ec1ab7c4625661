"""Runner tasks: tasks that run an activity's coroutine calls one after another.

A task per call costs its creation, a done callback and a hop through the
loop per call; under load most calls wait in the activity's queue for a
place anyway. So a coroutine call that starts runs in a *runner*: a task
that runs the call, settles it, and runs the call that takes the place it
freed, without a new task. Settling is what hands the next call over: the
core's ``finish(..., take=True)`` (or ``complete()``, its path for a call
that simply completed) starts the queued calls as usual, except that the
first one of the same activity is returned to the runner, already counted
as running, instead of being started elsewhere. A runner whose call freed
no place for another ends with its call. (On trio the runner is a task of
the activity's nursery, and each call after the first runs in a cancel
scope of its own.)

Each call still runs in its own copy of the context: the runner drives the
call's coroutine step by step inside it (as ``drive_in_context`` does), so
the body sees its own context, ``ActivityLocal`` values and frame, never the
runner's or another call's. On asyncio the runner's own generator does the
driving, so a call costs no frame of its own beyond its body's.

Each call is still cancelled on its own. A call that waits on a future is
cancelled with ``Task.cancel()`` on the runner, as a task of its own would be:
the request is counted (``Task.cancelling()``), so a cancel scope in the body
whose deadline passes at the same moment (anyio's ``move_on_after``) does not
take the cancellation for its own and swallow it. Once the call is settled the
runner ``uncancel()``-s what was asked for it, so nothing is left over for the
next call. A call that is not waiting (not started yet, or cancelled by its own
body) gets the cancellation thrown in at its next step. A cancellation of the
runner task that nobody asked of a call (the loop shutting down, or code that
cancels ``asyncio.current_task()``) ends the call as cancelled and ends the
runner, as it would end a task of the call's own; so does one that comes
before the runner's first step, since the runner is primed before its task
takes it (a coroutine that never started has nowhere to catch it).

What a call may assume: ``asyncio.current_task()`` is the task that runs it,
which may run other calls of the activity before and after it (never at the
same time). Task-local state belongs in ``contextvars`` (each call has its
own context), and a call is cancelled with ``Call.cancel()``, not by
cancelling the current task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

    from .._call import BaseCall

__all__ = ["Runner"]


class Runner:
    """One runner task, and how to cancel the call it drives now."""

    __slots__ = ("call", "cancel_pending", "next_call", "requested", "task", "waiting_on")

    def __init__(self, call: BaseCall[Any]) -> None:
        self.task: asyncio.Task[None] | None = None
        #: The call it runs now, or ran last: how the activity's ``cancel()`` finds
        #: it (a call on a runner is not in the activity's set of running calls).
        self.call = call
        #: The future the current call's body waits on, if any.
        self.waiting_on: Any = None
        #: A cancellation asked while the body was not waiting on a future: it is
        #: thrown into the body at its next step.
        self.cancel_pending = False
        #: The ``Task.cancel()`` requests made for the current call, undone when it ends.
        self.requested = 0
        #: On trio: the call that took the place the current one freed, run next.
        self.next_call: BaseCall[Any] | None = None

    def cancel(self) -> bool:
        """Cancel the current call's body, as ``Task.cancel()`` cancels a task's.

        While the body waits on a future, the runner task is cancelled: that
        cancels the future (or, if it is already done, the task's next step) and
        counts the request. Otherwise (it has not started, or the runner is
        running it now) the cancellation is thrown in at its next step.
        """
        task = self.task
        if self.waiting_on is not None and task is not None:
            task.cancel()
            self.requested += 1
        else:
            self.cancel_pending = True
        return True

    def undo_requests(self) -> None:
        """Take back the current call's ``Task.cancel()`` requests: it has ended."""
        task = self.task
        if task is not None:
            for _ in range(self.requested):
                task.uncancel()
        self.requested = 0
