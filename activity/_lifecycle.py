"""An activity's life: open, drain, close; its services; its thread binding.

:class:`Core` is the whole core: the layers below it plus the lifecycle.
Opening resolves the services (inheritance from the parent, the
synchronization domain, the thread model, the partition), picks the backend
for the running loop, and makes the activity the frame of its block. Closing
stops admission, drains the accepted work for up to ``shutdown_timeout``,
cancels what is left (children included), stops the handlers that are still
running at the deadline, closes the backend and joins the STA threads, and
gives back the failures nobody observed.
"""

from __future__ import annotations

import asyncio
from contextvars import Token
from threading import get_ident
from typing import cast

import anyio
import anyio.lowlevel
import anyio.to_thread

from . import _tracking
from ._admission import join_partition
from ._apartment import Apartment
from ._backends._asyncio import AsyncioDispatcher
from ._backends._trio import TrioDispatcher
from ._config import Binding, Inheritance, Synchronization, ThreadPool
from ._context import SynchronizationDomain, frame_var
from ._core import MAX_KEPT_FAILURES, OPEN, CoreState, State
from ._errors import ActivityError, InvalidArgumentError
from ._hresult import HResult
from ._sync import Synchronous
from ._tracking import EventKind

__all__ = ["Core"]


class Core(Synchronous):
    """An activity's core: every step of a call's flow, and the activity's life."""

    __slots__ = ()

    async def open(self, block: bool) -> None:
        """Open the activity: resolve its services, pick its backend.

        :param block: whether the calling code becomes the activity's block
            (``async with``), or the activity is opened without one (``open()``)
        """
        if self.state is not State.NEW:
            raise ActivityError(f"activity {self.name!r} can be entered only once")
        outer = frame_var.get()
        wanted = self.requested_parent
        if wanted is ...:
            parent = None if outer is None else cast("Core", outer.host)
        else:
            parent = cast("Core | None", wanted)
        new_domain = self.resolve_services(parent)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            dispatcher = TrioDispatcher(self, self.apartment)
            await dispatcher.open(detached=not block)
            self.dispatcher = dispatcher
        else:
            self.dispatcher = AsyncioDispatcher(self, loop, self.apartment)
            self.loop = loop
        if new_domain:
            self.domain = SynchronizationDomain(self.name, self.dispatcher.new_event)
        self.thread_id = get_ident()
        self.wake_token = anyio.lowlevel.current_token()
        self.parent = parent
        if parent is not None:
            parent.children.add(self)
        if block:
            # Entered inside a call, the block goes on with that call's chain (causality).
            self.causality = None if outer is None else outer.causality
            self.token = frame_var.set(self)
        self.fast_submit = self.timeout is None and not self.calls_own_locals
        self.fast_sync = self.fast_submit and self.domain is None
        self.state = OPEN
        _tracking.live.add(self.activity)
        if _tracking.listeners:
            _tracking.emit(EventKind.ACTIVITY_OPENED, self)

    async def close(self, exc: BaseException | None) -> None:
        """Leave the activity: drain, cancel what is left, raise what nobody observed."""
        state = self.state
        if state is State.NEW:
            raise ActivityError(
                f"activity {self.name!r} was never entered (or opened): nothing to close"
            )
        if state is State.CLOSED or state is State.CLOSING or state is State.DRAINING:
            raise ActivityError(f"activity {self.name!r} has been left already")
        dispatcher = self.dispatcher
        assert dispatcher is not None
        self.fast_sync = False
        if state is OPEN:
            self.state = State.DRAINING if exc is None else State.CLOSING
        self.refuse_waiters(self.closed_error())
        timeout = self.config.shutdown_timeout
        deadline = None if timeout is None else anyio.current_time() + timeout
        interrupted: BaseException | None = None
        try:
            if exc is not None:
                self.cancel_all(f"the activity's block raised {type(exc).__name__}")
            elif not self.is_idle():
                drained = await self.wait_idle_for(timeout)
                if not drained:
                    self.stop(f"shutdown_timeout ({timeout} s) expired")
        except BaseException as error:  # cancelled while draining
            interrupted = error
            self.cancel_all("the activity's host was cancelled while draining")
        finally:
            if self.state is State.DRAINING:
                self.state = State.CLOSING
            # A child cannot outlive its parent: its work is cancelled with ours.
            for child in self.open_children():
                cast("Core", child).cancel(f"its parent activity {self.name!r} is closing")
            await self.wait_tree_idle(deadline)
            self.state = State.CLOSED
            await dispatcher.aclose()
            if self.apartment is not None:
                await self.join_apartment()
            _tracking.live.discard(self.activity)
            token = self.token
            if token is not None:
                self.token = None
                try:
                    frame_var.reset(token)
                except ValueError:
                    # Left in another context than it was entered in: undo only what
                    # is ours there, never another activity's frame.
                    if frame_var.get() is self:
                        old = token.old_value
                        frame_var.set(None if old is Token.MISSING else old)
            if _tracking.listeners:
                _tracking.emit(EventKind.ACTIVITY_CLOSED, self)
        failures = self.take_failures()
        raised = interrupted if interrupted is not None else exc
        if failures:
            if raised is not None and not dispatcher.is_cancellation(raised):
                failures.insert(0, raised)
            message = f"{len(failures)} unobserved failure(s) in activity {self.name!r}"
            if all(isinstance(f, Exception) for f in failures):
                raise ExceptionGroup(message, failures)  # type: ignore[type-var]
            raise BaseExceptionGroup(message, failures)
        if interrupted is not None:
            raise interrupted

    async def wait_tree_idle(self, deadline: float | None) -> None:
        """Wait, shielded, until the activity and its children are idle.

        What is still running here was cancelled already, except error handlers
        and done callbacks, which may finish their work until ``deadline``: then
        they are cancelled too, so that no handler can hold the exit forever.
        """
        busy = [a for a in (self, *self.open_children()) if not a.is_idle()]
        if not busy:
            return
        dispatcher = self.dispatcher
        assert dispatcher is not None
        timer: anyio.CancelScope | None = None
        if deadline is not None:
            timer = anyio.CancelScope()
            dispatcher.spawn(self.stop_at(deadline, timer))
        try:
            for activity in busy:
                if not activity.is_idle():
                    await activity.wait_idle_shielded()
        finally:
            if timer is not None:
                timer.cancel()

    async def stop_at(self, deadline: float, timer: anyio.CancelScope) -> None:
        with timer:
            await anyio.sleep_until(deadline)
            timeout = self.config.shutdown_timeout
            for core in (self, *cast("list[Core]", self.open_children())):
                core.stop(f"shutdown_timeout ({timeout} s) expired")

    def stop(self, reason: str) -> None:
        """Cancel everything still under way, error handlers and done callbacks included."""
        self.refuse_waiters(self.closed_error())
        self.cancel_all(reason)
        for scope in self.handler_scopes:
            scope.cancel()

    def take_failures(self) -> list[BaseException]:
        """The failures to raise at exit: unobserved calls' and handlers', once."""
        # A tuple first: a thread reading a call's future may pop from the dict meanwhile.
        unobserved = tuple(self.unobserved.values())
        self.unobserved.clear()
        failures: list[BaseException] = [
            call.error for call in unobserved if call.error is not None
        ]
        dropped = self.dropped_failures
        self.dropped_failures = None
        if dropped is not None and dropped[0]:
            ids, by_type = dropped
            kinds = ", ".join(f"{name} x {count}" for name, count in by_type.items())
            failures.append(
                ActivityError(
                    f"{len(ids)} more unobserved failure(s) in activity {self.name!r} were "
                    f"counted but not kept (only the first {MAX_KEPT_FAILURES} are kept with "
                    f"their tracebacks): {kinds}"
                )
            )
        failures.extend(self.handler_errors)
        self.handler_errors = []
        return failures

    async def wait_idle(self) -> None:
        """Wait until no call is pending or running (and no async error handler runs)."""
        self.check_thread()
        if not self.is_idle():
            await self.wait_idle_for(None)

    def resolve_services(self, parent: CoreState | None) -> bool:
        """Settle inheritance, domain, thread model and partition; say if a new domain is due.

        Raises before anything changes, so a refused activity stays unopened.
        """
        config = self.config
        inherit = parent is not None and config.inheritance is Inheritance.INHERIT
        container = parent.domain if inherit and parent is not None else None
        synchronization = config.effective_synchronization
        new_domain = synchronization is Synchronization.NEW or (
            synchronization is Synchronization.NEW_IF_NECESSARY and container is None
        )
        model = config.effective_thread_pool
        if model is ThreadPool.INHERIT:
            model = parent.thread_model if inherit and parent is not None else ThreadPool.MTA
        bound = config.binding is Binding.BIND_TO_POOL_THREAD
        if bound and model is not ThreadPool.STA:
            raise InvalidArgumentError(
                f"activity {self.name!r} inherits the MTA thread model from its parent, and "
                "binding=Binding.BIND_TO_POOL_THREAD needs an STA one",
                field="binding",
                value=config.binding,
                hresult=HResult.CO_E_THREADPOOL_CONFIG,
            )
        if config.partition is not None:
            self.admission = join_partition(
                config.partition, config.max_concurrency, config.max_pending
            )
        self.origin = parent if inherit else None
        if not new_domain and synchronization is not Synchronization.NONE:
            self.domain = container
        self.thread_model = model
        if model is ThreadPool.STA:
            self.apartment = Apartment(self.name, bound=bound)
        return new_domain

    async def join_apartment(self) -> None:
        """Stop the STA threads and wait for them, up to ``shutdown_timeout``.

        A thread still held by an abandoned blocking call after that is reported
        as a failure of the activity, never left behind silently.
        """
        assert self.apartment is not None
        threads = self.apartment.stop()
        timeout = self.config.shutdown_timeout
        deadline = None if timeout is None else anyio.current_time() + timeout
        for thread in threads:
            remaining = None if deadline is None else max(0.0, deadline - anyio.current_time())
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(thread.join, remaining)
            if thread.is_alive():
                self.handler_errors.append(
                    ActivityError(
                        f"STA thread {thread.name!r} of activity {self.name!r} did not stop "
                        f"within shutdown_timeout ({timeout} s): an abandoned blocking call "
                        "is still running in it"
                    )
                )

    def bind_to_current_thread(self) -> None:
        """Run the activity's later blocking calls on the event-loop thread itself.

        COM+'s ``IServiceActivity::BindToCurrentThread``. For code that must run
        on the thread that owns the loop (thread-affine objects made there); a
        long blocking call then blocks the loop, so keep them short.

        :raises WrongThreadError: if called from another thread than the activity's
        :raises ActivityClosedError: if the activity is not open
        """
        self.check_open_or_cancelled()
        self.bound_to_loop = True

    def unbind_from_thread(self) -> None:
        """Undo :meth:`bind_to_current_thread`: blocking calls go back to worker threads.

        COM+'s ``IServiceActivity::UnbindFromThread``.

        :raises WrongThreadError: if called from another thread than the activity's
        """
        self.check_thread()
        self.bound_to_loop = False
