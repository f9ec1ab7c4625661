"""COM+'s single-threaded apartment: an activity's blocking calls on one thread of its own.

:class:`Apartment` is COM+'s single-threaded apartment: an activity's blocking
calls run one at a time on a thread of its own, started lazily and named after
the activity. Unbound, the apartment moves to a fresh thread when its thread is
held by an abandoned (cancelled or timed-out) call; bound
(``BIND_TO_POOL_THREAD``) it never changes thread, so thread-affine objects made
there stay usable.

Its thread runs the worker pool's :class:`~activity._workers.WorkItem`, so a
backend waits for an apartment's work as it waits for the pool's.
"""

from __future__ import annotations

import itertools
import queue
import threading
from typing import TYPE_CHECKING, Any

from ._workers import ThreadGauge, WorkItem

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Apartment"]


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

    __slots__ = ("_bound", "_name", "_numbers", "_retired", "_thread", "gauge")

    def __init__(self, name: str, *, bound: bool) -> None:
        self._name = name
        #: The calls that wait for the apartment's thread (it runs one at a time).
        self.gauge = ThreadGauge()
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
        item = WorkItem(run, fn, args, on_done, self.gauge)
        thread.queue.put(item)
        return item

    def runs_on_current_thread(self) -> bool:
        """Whether the calling thread is the apartment's (not one it moved away from)."""
        sta = self._thread
        return sta is not None and sta.thread is threading.current_thread()

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
