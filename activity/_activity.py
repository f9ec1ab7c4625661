"""The public :class:`Activity` and :class:`Call`: a thin face over an activity's core.

Every method here checks nothing and decides nothing: it hands its arguments
to the activity's core (``_lifecycle.Core``, built up one module per step of
a call's flow), which the face holds as ``_core``. The hot methods return the
core's coroutine itself, so that awaiting ``act.asynchronous_call(...)`` or
``act.synchronous_call(...)`` costs no extra coroutine.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import Token
from typing import (
    TYPE_CHECKING,
    Any,
    Protocol,
    TypeVar,
    TypeVarTuple,
    Unpack,
    cast,
    final,
    overload,
)

from . import _from_thread
from ._call import BaseCall, CallStatus
from ._context import SynchronizationDomain, frame_var
from ._core import State
from ._errors import ActivityError, InvalidArgumentError
from ._lifecycle import Core
from ._validate import check_services, keywords_refused, make_config

if TYPE_CHECKING:
    import concurrent.futures
    from collections.abc import Awaitable, Callable, Generator, Mapping
    from types import EllipsisType, TracebackType

    from ._config import ActivityConfig, ThreadPool
    from ._tracking import ActivityStatistics, PartitionStatistics

__all__ = [
    "Activity",
    "AsyncServiceCall",
    "Call",
    "ServiceCall",
    "current_activity",
]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
Ts = TypeVarTuple("Ts")


class AsyncServiceCall(Protocol[T_co]):
    """An object whose ``on_call()`` is a coroutine function (COM+'s ``IServiceCall``)."""

    def on_call(self) -> Awaitable[T_co]:
        """Do the work, on the event loop."""
        ...


class ServiceCall(Protocol[T_co]):
    """An object with a plain ``on_call()``, run in a worker thread."""

    def on_call(self) -> T_co:
        """Do the work, in a worker thread."""
        ...


@final
class Activity:
    """A bounded, observable unit of batch work bound to one event loop.

    The COM+ activity (``CoCreateActivity``) on an event loop. Enter it with
    ``async with``; the block's body runs in the activity (``current_activity()``
    is the activity there), and leaving the block stops admission, drains the
    accepted work for up to ``shutdown_timeout`` seconds, cancels what is left,
    and raises, in an ``ExceptionGroup``, every failure that nobody observed::

        async with Activity(max_concurrency=8, max_pending=100, name="ingest") as act:
            call = await act.asynchronous_call(fetch, url)     # accepted, or rejected
            rows = await act.synchronous_call(parse, payload)  # the result

    An activity that must outlive any one block (an application's, opened at
    startup and closed at shutdown) is opened with :meth:`open` and closed
    with :meth:`aclose` instead; code that runs on its behalf without being
    its block makes it current with :meth:`as_current`.

    :param config: an :class:`ActivityConfig` (or a mapping of its fields)
    :param parent: the activity this one belongs to: by default (``...``) the
        activity current where it is entered or opened, if any; ``None`` makes
        it a root. A child is cancelled with its parent and cannot outlive it.
    :param options: fields of :class:`ActivityConfig`, overriding ``config``'s
    :raises InvalidArgumentError: if an option is unknown or has a bad value

    .. versionadded:: 0.1
    .. versionchanged:: 0.2 ``parent``, :meth:`open`, :meth:`aclose`, :meth:`as_current`
    """

    __slots__ = ("__weakref__", "_core")

    def __init__(
        self,
        config: ActivityConfig | Mapping[str, Any] | None = None,
        /,
        *,
        parent: Activity | EllipsisType | None = ...,
        **options: Any,
    ) -> None:
        if not (parent is ... or parent is None or isinstance(cast("object", parent), Activity)):
            raise InvalidArgumentError(
                f"parent must be an Activity, None or ..., got {parent!r}",
                field="parent",
                value=parent,
            )
        config = make_config(config, options)
        check_services(config)
        if config.executor is None:
            core = self._core = Core(config, self, Call)
        else:
            from ._remote import RemoteCore, check_executor  # the executors' own imports

            check_executor(config)
            core = self._core = RemoteCore(config, self, Call)
        if parent is not ...:
            core.requested_parent = None if parent is None else parent._core

    # -- properties -------------------------------------------------------------------

    @property
    def config(self) -> ActivityConfig:
        """The frozen configuration the activity was created with."""
        return self._core.config

    @property
    def name(self) -> str:
        """The configured name, or ``activity-<id>``."""
        return self._core.name

    @property
    def id(self) -> int:
        """A number unique to this activity within the process."""
        return self._core.ident

    @property
    def parent(self) -> Activity | None:
        """The activity that was current where this one was entered, if any."""
        parent = self._core.parent
        return None if parent is None else cast("Activity", parent.activity)

    @property
    def children(self) -> list[Activity]:
        """The open activities entered inside this one (its calls or its block)."""
        return [cast("Activity", child.activity) for child in self._core.open_children()]

    @property
    def synchronization_domain(self) -> SynchronizationDomain | None:
        """The domain the activity's calls enter one chain at a time, if it is synchronized."""
        return self._core.domain

    @property
    def thread_model(self) -> ThreadPool:
        """Where blocking calls run: ``ThreadPool.MTA`` or ``ThreadPool.STA`` once open."""
        return self._core.thread_model

    def statistics(self) -> ActivityStatistics:
        """Return a frozen snapshot of the counters."""
        return self._core.statistics()

    def partition_statistics(self) -> PartitionStatistics | None:
        """Return a snapshot of the partition's shared budget, or ``None`` outside any."""
        return self._core.partition_statistics()

    def __repr__(self) -> str:
        core = self._core
        c = core.counters
        return (
            f"<Activity {core.name!r} {core.state.value} running={c.running} pending={c.pending}>"
        )

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Activity:
        await self._core.open(block=True)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._core.close(exc)

    async def open(self) -> Activity:
        """Open the activity without a block of its own; close it with :meth:`aclose`.

        The activity takes work from the moment it is open, as inside ``async
        with``, but the calling code does not run in it: ``current_activity()``
        is unchanged there (use :meth:`as_current` for code that should). For
        an activity whose life is not one block of code: an application's,
        opened at startup and closed at shutdown, perhaps in other tasks.

        :return: the activity
        :raises ActivityError: if the activity was opened or entered before
        :raises InvalidArgumentError: if its services cannot be had here

        .. versionadded:: 0.2
        """
        await self._core.open(block=False)
        return self

    async def aclose(self) -> None:
        """Close an activity opened with :meth:`open`, as leaving ``async with`` would.

        Admission stops, the accepted work drains for up to ``shutdown_timeout``
        seconds, what is left is cancelled, and the failures nobody observed are
        raised, in an ``ExceptionGroup``. Closing a closed activity does nothing.

        :raises ExceptionGroup: the failures nobody observed
        :raises ActivityError: if the activity is the block of an ``async with``
            (it closes when its block ends), or was never opened

        .. versionadded:: 0.2
        """
        core = self._core
        if core.state is State.CLOSED:
            return
        if core.token is not None:
            raise ActivityError(
                f"activity {core.name!r} was entered with 'async with': "
                "it closes when its block ends"
            )
        await core.close(None)

    @contextmanager
    def as_current(self) -> Generator[Activity]:
        """Run the enclosed code in this open activity, as its block would.

        Inside, ``current_activity()`` is this activity, ``ActivityLocal`` values
        are its own, and activities entered there become its children. For code
        that acts for an activity without being its ``async with`` block: the
        startup code of an application whose activity was opened with
        :meth:`open`, a callback, a request handler that opens a child. The code
        runs in the caller's task, as the block's does.

        :raises WrongThreadError: if called from another thread or loop than the activity's
        :raises ActivityClosedError: if the activity is not open

        .. versionadded:: 0.2
        """
        core = self._core
        core.check_open_or_cancelled()
        token = frame_var.set(core)
        try:
            yield self
        finally:
            try:
                frame_var.reset(token)
            except ValueError:
                # Left in another context than it was entered in: undo only what
                # is ours there.
                if frame_var.get() is core:
                    old = token.old_value
                    frame_var.set(None if old is Token.MISSING else old)

    def cancel(self, reason: str | None = None) -> None:
        """Cancel every accepted call and stop admission.

        Pending calls end ``CANCELLED`` at once; running calls are cancelled at
        their next checkpoint. Later calls raise :class:`ActivityClosedError`.
        The block's body is not cancelled: ``await wait_idle()`` waits for the
        cancelled calls to end.

        :param reason: said in each call's :class:`CallCancelledError`
        """
        self._core.cancel(reason)

    async def wait_idle(self) -> None:
        """Wait until no call is pending or running (and no async error handler runs)."""
        await self._core.wait_idle()

    # -- submission ---------------------------------------------------------------------

    @overload
    async def asynchronous_call(
        self,
        fn: Callable[[Unpack[Ts]], Awaitable[T]],
        /,
        *args: *Ts,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Call[T]: ...
    @overload
    async def asynchronous_call(
        self, fn: Awaitable[T], /, *, name: str | None = None, timeout: float | None = None
    ) -> Call[T]: ...
    @overload
    async def asynchronous_call(
        self,
        fn: AsyncServiceCall[T],
        /,
        *,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Call[T]: ...
    @overload
    async def asynchronous_call(
        self, fn: ServiceCall[T], /, *, name: str | None = None, timeout: float | None = None
    ) -> Call[T]: ...
    @overload
    async def asynchronous_call(
        self,
        fn: Callable[[Unpack[Ts]], T],
        /,
        *args: *Ts,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Call[T]: ...
    def asynchronous_call(  # type: ignore[misc]  # mypy and TypeVarTuple overloads
        self,
        fn: Any,
        /,
        *args: Any,
        name: str | None = None,
        timeout: float | None = None,
        **keywords: Any,
    ) -> Any:
        """Queue ``fn(*args)`` to run in the activity; return once it is *accepted*.

        The COM+ ``IServiceActivity::AsynchronousCall``. Returning a :class:`Call`
        means the work was accepted (S_OK), not that it finished. ``fn`` is a
        coroutine function (run as a task on the loop), a plain callable (run in
        one of the activity's worker threads), an object with ``on_call()``
        (whose ``on_error(exc)``, if any, observes its failure), or a coroutine
        object (then no ``args``). Keyword arguments for ``fn`` go through
        ``functools.partial(fn, key=value)``: any other keyword is refused with a
        ``TypeError`` that says so. A body that raises ``StopIteration`` fails the
        call with a ``RuntimeError`` caused by it, as Python does for a
        coroutine: no ``await`` can carry a ``StopIteration``.

        :param fn: the work
        :param args: positional arguments for ``fn``
        :param name: a name for the call (tracebacks, tracking)
        :param timeout: seconds the call may run before it fails with
            :class:`CallTimeoutError` (default: the config's ``timeout``)
        :return: the call's handle
        :raises AsyncWorkRejectedError: if the queue is full (``Overflow.REJECT``), or
            stays full for ``admission_timeout`` (``Overflow.WAIT``); the work never runs
        :raises ActivityClosedError: if the activity is not open, cancelled or closing
        :raises InvalidArgumentError: if ``fn``, ``name`` or ``timeout`` is not valid
        :raises WrongThreadError: if called from another thread than the activity's
        :raises TypeError: if given a keyword argument other than ``name`` and ``timeout``
        """
        if keywords:
            raise keywords_refused("asynchronous_call", fn, keywords)
        return self._core.submit(fn, args, name, timeout)

    @overload
    def asynchronous_call_nowait(
        self,
        fn: Callable[[Unpack[Ts]], Awaitable[T]],
        /,
        *args: *Ts,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Call[T]: ...
    @overload
    def asynchronous_call_nowait(
        self, fn: Awaitable[T], /, *, name: str | None = None, timeout: float | None = None
    ) -> Call[T]: ...
    @overload
    def asynchronous_call_nowait(
        self,
        fn: AsyncServiceCall[T],
        /,
        *,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Call[T]: ...
    @overload
    def asynchronous_call_nowait(
        self, fn: ServiceCall[T], /, *, name: str | None = None, timeout: float | None = None
    ) -> Call[T]: ...
    @overload
    def asynchronous_call_nowait(
        self,
        fn: Callable[[Unpack[Ts]], T],
        /,
        *args: *Ts,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Call[T]: ...
    def asynchronous_call_nowait(  # type: ignore[misc]  # mypy and TypeVarTuple overloads
        self,
        fn: Any,
        /,
        *args: Any,
        name: str | None = None,
        timeout: float | None = None,
        **keywords: Any,
    ) -> Any:
        """Queue ``fn(*args)`` like :meth:`asynchronous_call`, without waiting.

        A plain method (trio's ``*_nowait`` convention): the work is accepted
        or refused before it returns, whatever the ``overflow`` setting, so it
        can be used where no ``await`` is possible, and a forgotten ``await``
        cannot leave the work unsubmitted.

        :param fn: the work, as for :meth:`asynchronous_call`
        :param args: positional arguments for ``fn``
        :param name: a name for the call (tracebacks, tracking)
        :param timeout: seconds the call may run (default: the config's ``timeout``)
        :return: the call's handle
        :raises AsyncWorkRejectedError: if the queue is full, at once
        :raises ActivityClosedError: if the activity is not open, cancelled or closing
        :raises InvalidArgumentError: if ``fn``, ``name`` or ``timeout`` is not valid
        :raises WrongThreadError: if called from another thread or event loop than the
            activity's

        .. versionadded:: 0.1
        """
        if keywords:
            raise keywords_refused("asynchronous_call_nowait", fn, keywords)
        return self._core.submit_nowait(fn, args, name, timeout)

    @overload
    async def synchronous_call(
        self,
        fn: Callable[[Unpack[Ts]], Awaitable[T]],
        /,
        *args: *Ts,
        timeout: float | None = None,
    ) -> T: ...
    @overload
    async def synchronous_call(self, fn: Awaitable[T], /, *, timeout: float | None = None) -> T: ...
    @overload
    async def synchronous_call(
        self, fn: AsyncServiceCall[T], /, *, timeout: float | None = None
    ) -> T: ...
    @overload
    async def synchronous_call(
        self, fn: ServiceCall[T], /, *, timeout: float | None = None
    ) -> T: ...
    @overload
    async def synchronous_call(
        self, fn: Callable[[Unpack[Ts]], T], /, *args: *Ts, timeout: float | None = None
    ) -> T: ...
    def synchronous_call(  # type: ignore[misc]  # mypy and TypeVarTuple overloads
        self, fn: Any, /, *args: Any, timeout: float | None = None, **keywords: Any
    ) -> Any:
        """Run ``fn(*args)`` in the activity and return its result.

        The COM+ ``IServiceActivity::SynchronousCall``. The call waits for its
        turn (it is never rejected for a full queue), runs with the activity's
        services, and its own exception is raised unchanged, traceback kept. A
        coroutine body runs in the caller's task, in its own copy of the
        context; a plain callable runs in a worker thread. Called from inside a
        running call of the same activity, it runs at once, within the caller's
        place, instead of waiting for a place that the caller itself holds. A
        body's ``StopIteration`` is raised as a ``RuntimeError`` caused by it.

        :param fn: the work, as for :meth:`asynchronous_call`
        :param args: positional arguments for ``fn``
        :param timeout: seconds the call may run (default: the config's ``timeout``);
            to bound the wait for a turn too, wrap the call in your own timeout
        :return: what ``fn`` returned
        :raises CallTimeoutError: if the call ran longer than ``timeout``
        :raises CallCancelledError: if the call was cancelled by the activity
        :raises ActivityClosedError: if the activity is not open, cancelled or closing
        :raises InvalidArgumentError: if ``fn`` or ``timeout`` is not valid
        :raises WrongThreadError: if called from another thread than the activity's
        :raises TypeError: if given a keyword argument other than ``timeout``
        :raises WouldDeadlockError: at once, if the call would wait for a
            synchronization domain whose holder waits, directly or through other
            chains, for the caller's chain
        """
        if keywords:
            raise keywords_refused("synchronous_call", fn, keywords)
        return self._core.synchronous_call(fn, args, timeout)

    # -- thread binding and entry from other threads ---------------------------------

    def bind_to_current_thread(self) -> None:
        """Run the activity's later blocking calls on the event-loop thread itself.

        COM+'s ``IServiceActivity::BindToCurrentThread``. For code that must run
        on the thread that owns the loop (thread-affine objects made there); a
        long blocking call then blocks the loop, so keep them short.

        :raises WrongThreadError: if called from another thread than the activity's
        :raises ActivityClosedError: if the activity is not open
        """
        self._core.bind_to_current_thread()

    def unbind_from_thread(self) -> None:
        """Undo :meth:`bind_to_current_thread`: blocking calls go back to worker threads.

        COM+'s ``IServiceActivity::UnbindFromThread``.

        :raises WrongThreadError: if called from another thread than the activity's
        """
        self._core.unbind_from_thread()

    @overload
    def asynchronous_call_from_thread(
        self,
        fn: Callable[[Unpack[Ts]], Awaitable[T]],
        /,
        *args: *Ts,
        name: str | None = None,
        timeout: float | None = None,
    ) -> concurrent.futures.Future[T]: ...
    @overload
    def asynchronous_call_from_thread(
        self,
        fn: Callable[[Unpack[Ts]], T],
        /,
        *args: *Ts,
        name: str | None = None,
        timeout: float | None = None,
    ) -> concurrent.futures.Future[T]: ...
    def asynchronous_call_from_thread(  # type: ignore[misc]  # mypy and TypeVarTuple overloads
        self,
        fn: Any,
        /,
        *args: Any,
        name: str | None = None,
        timeout: float | None = None,
        **keywords: Any,
    ) -> concurrent.futures.Future[Any]:
        """Submit ``fn(*args)`` from a thread that is not the activity's loop thread.

        The thread-safe twin of :meth:`asynchronous_call`, for plain threads (a
        sync framework, a callback from a C library, a blocking call of another
        activity). It blocks the calling thread until the activity has accepted
        or rejected the work, with the same admission rules and errors, and
        returns a :class:`concurrent.futures.Future` of the call's result.
        Reading the future's ``result()`` or ``exception()`` observes a failure,
        as awaiting the :class:`Call` does. The call carries the thread's
        context, so a blocking call that calls back into its own activity keeps
        its causality.

        :return: a future of the call's result
        :raises AsyncWorkRejectedError: if the queue is full
        :raises ActivityClosedError: if the activity is not open or its loop has ended
        :raises InvalidArgumentError: if ``fn``, ``name`` or ``timeout`` is not valid
        :raises WrongThreadError: if called from the activity's own loop thread
        :raises TypeError: if given a keyword argument other than ``name`` and ``timeout``
        """
        if keywords:
            raise keywords_refused("asynchronous_call_from_thread", fn, keywords)
        return _from_thread.asynchronous_call_from_thread(self._core, fn, args, name, timeout)

    @overload
    def synchronous_call_from_thread(
        self,
        fn: Callable[[Unpack[Ts]], Awaitable[T]],
        /,
        *args: *Ts,
        timeout: float | None = None,
    ) -> T: ...
    @overload
    def synchronous_call_from_thread(
        self, fn: Callable[[Unpack[Ts]], T], /, *args: *Ts, timeout: float | None = None
    ) -> T: ...
    def synchronous_call_from_thread(  # type: ignore[misc]  # mypy and TypeVarTuple overloads
        self, fn: Any, /, *args: Any, timeout: float | None = None, **keywords: Any
    ) -> Any:
        """Run ``fn(*args)`` in the activity from another thread and return its result.

        The thread-safe twin of :meth:`synchronous_call`: the calling thread
        blocks until the call has finished, and gets its result or its
        exception. Called from a blocking call of the activity itself (whose
        thread carries the call's chain), it re-enters the activity's
        synchronization domain instead of deadlocking, and the chain's
        blocking calls made meanwhile (``fn`` itself, if it is one) run on the
        calling thread, which waits for them anyway: the apartment's thread of
        an STA activity, or the worker thread that holds the chain's place
        under ``thread_limit``. As COM+ re-enters an apartment, they never wait
        for a thread that the chain itself holds.

        A ``StopIteration`` raised by a blocking ``fn`` reaches the caller as
        ``RuntimeError`` whose ``__cause__`` it is, as on every path of the
        activity (a ``StopIteration`` cannot be raised through an ``await``).

        :return: what ``fn`` returned
        :raises ActivityClosedError: if the activity is not open or its loop has ended
        :raises WrongThreadError: if called from the activity's own loop thread
        :raises TypeError: if given a keyword argument other than ``timeout``
        """
        if keywords:
            raise keywords_refused("synchronous_call_from_thread", fn, keywords)
        return _from_thread.synchronous_call_from_thread(self._core, fn, args, timeout)


@final
class Call(BaseCall[T_co]):
    """The handle of one call accepted by :meth:`Activity.asynchronous_call`.

    Returning a ``Call`` means the activity *accepted* the work (COM+'s S_OK),
    not that it finished. The call then ends ``COMPLETED``, ``FAILED`` or
    ``CANCELLED``, always, and whoever awaits it is told::

        call = await act.asynchronous_call(fetch, url)
        page = await call          # the result, or the call's exception

    A call chain that holds a synchronization domain and awaits a call that
    needs it would wait forever: the await raises :class:`WouldDeadlockError`
    at once instead, and the call runs once the domain is free.

    Awaiting a call (or asking for ``result()`` / ``exception()``) *observes*
    its failure, so the activity does not raise it again when it exits.
    Created only by an activity.

    .. versionadded:: 0.1
    """

    __slots__ = ()

    @property
    def activity(self) -> Activity:
        """The activity that accepted the call."""
        return cast("Activity", self.host.activity)


def current_activity() -> Activity | None:
    """Return the activity the calling code runs in, or ``None`` outside any.

    Inside ``async with Activity() as act:`` this is ``act``; inside a call
    (a coroutine on the loop or a blocking function in a worker thread) it is
    the activity that accepted the call.
    """
    frame = frame_var.get()
    return None if frame is None else cast("Activity", frame.host.activity)


Activity.__module__ = "activity"
Call.__module__ = "activity"
CallStatus.__module__ = "activity"
current_activity.__module__ = "activity"
