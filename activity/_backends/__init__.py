"""The backends: how one call body runs, a task on the loop, a worker thread, or inline.

Two backends share one small interface, :class:`Backend`, and the activity's
core picks one when the activity opens (the core is their ``DispatchHost``, a
protocol of ``_common``); each lives in a module of its own, as anyio's
backends do:

- ``_asyncio``: ``AsyncioDispatcher``, for asyncio and uvloop (the hot path);
- ``_trio``: ``TrioDispatcher``, for trio, the other loop anyio runs on.

What both use (the inline driver, a call's outcome, re-entry on a waiting
thread) is in ``_common``. The threads they hand blocking bodies to sit below
them: the process-wide worker pool (``activity._workers``) and STA apartments
(``activity._apartment``).

Both run a ``synchronous_call`` *inline*, in the caller's own task: the body's
coroutine is driven step by step inside the call's context by
:func:`drive_in_context`, so it sees its own copy of the context (and its
``ContextVar`` writes stay there) without the cost of a new task. Its common
case (a function that may start at once, no domain, no timeout) is handled
by the core's ``synchronous_call`` itself (``activity._sync``), without the
dispatcher's round trip:
the frame of such a coroutine call is a light ``InlineCall``, made a ``Call``
only if the call ends otherwise than completed (on trio the body runs in a
trio cancel scope of its own).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from .._call import BaseCall, Event
    from .._context import Frame
    from ._common import Outcome, ReentryHost

__all__ = ["Backend"]


class Backend(Protocol):
    """The backend-specific half of an activity."""

    def new_event(self) -> Event: ...
    def new_signal(self) -> Event:
        """An event that one task at a time waits on (a parked submitter's)."""
        ...

    def start(self, call: BaseCall[Any]) -> None: ...
    def cancel_running(self, call: BaseCall[Any]) -> None: ...
    async def run_inline(self, call: BaseCall[Any]) -> Outcome: ...
    def spawn(self, coro: Coroutine[Any, Any, None]) -> None: ...
    def is_cancellation(self, exc: BaseException) -> bool: ...
    async def wait_event(self, event: Event, timeout: float | None) -> bool: ...
    async def wait_event_shielded(self, event: Event) -> None: ...
    async def aclose(self) -> None: ...
    def reentry_host(self, frame: Frame | None) -> ReentryHost | None: ...
    def threads_waiting(self) -> int:
        """How many admitted blocking calls wait for a worker thread to take them."""
        ...
