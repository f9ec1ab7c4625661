"""Keyed activities: one call at a time per key, different keys side by side.

:class:`KeyedActivity` is what ASP on COM+ gave every user session: an
activity of its own per key (a user, a session, an order), made on demand,
synchronized, and reclaimed when idle. It is built on the public
:class:`~activity.Activity`: a *parent* activity, opened with ``open()``,
whose ``max_concurrency`` bounds how many keys run at once, and a child
activity per key (``Activity(parent=...)``), synchronized
(``Synchronization.NEW``) and one call at a time (``max_concurrency=1``), so
that its FIFO queue is the key's order and its ``max_pending`` the key's own
bound.

A call of a key is a call of the key's child; when its turn comes it takes a
place in the parent (a ``synchronous_call`` there, which waits in the
parent's FIFO line) and runs its body in the child's call: ``current_activity()``
is the key's child, ``ActivityLocal`` values set there are the key's, and a
nested call of the same chain re-enters. The housekeeping (closing idle and
evicted children) runs in an activity of its own, so that it takes no place
from the keys.

A child is retired only when it is idle (nothing pending, running or being
submitted through this object) and in the same step as the check, with no
``await`` between: a call that arrives afterwards finds no child and makes a
new one, so nothing accepted is ever lost, and a retired child has no work to
close but its own.
"""

from __future__ import annotations

import collections
import inspect
import math
import time
from asyncio import _get_running_loop  # pyright: ignore[reportPrivateUsage]  # in asyncio.events.__all__
from collections.abc import Hashable, Mapping
from contextvars import ContextVar, copy_context
from threading import get_ident
from typing import (
    TYPE_CHECKING,
    Any,
    Final,
    TypeVar,
    TypeVarTuple,
    Unpack,
    cast,
    final,
    overload,
)

import anyio
import anyio.to_thread

from ._activity import Activity, Call
from ._backends._common import drive_in_context
from ._call import BLOCKING, COROUTINE, Kind
from ._config import ActivityConfig, Synchronization
from ._context import frame_var
from ._errors import (
    ActivityClosedError,
    ActivityError,
    AsyncWorkRejectedError,
    InvalidArgumentError,
    WrongThreadError,
)
from ._tracking import ActivityStatistics
from ._validate import classify, refuse_coroutine

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine
    from contextvars import Context
    from types import EllipsisType, TracebackType

    from ._activity import AsyncServiceCall, ServiceCall

__all__ = ["KeyedActivity"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

_MAX_NAME: Final = 200

#: The keyed activity whose parent place the running chain holds, and the chain.
_holding: Final[ContextVar[tuple[object, object] | None]] = ContextVar(
    "activity.keyed.holding", default=None
)


@final
class _Slot:
    """One live key: its child activity, and what keeps it from being retired."""

    __slots__ = ("child", "idle_since", "key", "ready", "retired", "users")

    def __init__(self, key: Hashable, child: Activity) -> None:
        self.key = key
        self.child = child
        #: Set once the child is open; ``None`` when it is.
        self.ready: anyio.Event | None = None
        #: Submissions and synchronous calls under way through the keyed activity.
        self.users = 1
        #: ``time.monotonic()`` when the key last became idle.
        self.idle_since = time.monotonic()
        self.retired = False


@final
class KeyedActivity:
    """One call at a time per key, in submission order; different keys side by side.

    A synchronized child activity per key (a user, a session, an order), made
    on the key's first call and closed once it has been idle for
    ``idle_timeout`` seconds, under a parent activity whose ``max_concurrency``
    bounds how many keys run at once::

        async with KeyedActivity(max_keys=10_000, idle_timeout=60,
                                 per_key=ActivityConfig(max_pending=100),
                                 max_concurrency=50, name="orders") as orders:
            call = await orders.asynchronous_call(order_id, process, event)
            total = await orders.synchronous_call(order_id, total_of)

    * Calls of one key run one at a time, in the order they were submitted
      (``asynchronous_call``, its ``_nowait`` twin and ``synchronous_call``
      share one FIFO line per key). A call that waits for its key is
      *pending* in the key's activity; once its turn comes it is *running*
      there, and takes a place in the parent (its FIFO line is fair between
      keys) before its body starts.
    * Each key has its own ``max_pending`` (from ``per_key``): a hot key is
      rejected with :class:`AsyncWorkRejectedError` without touching the
      others.
    * At most ``max_keys`` keys are live. A new key evicts the key idle the
      longest; when every key is busy, the new key's call is rejected with
      :class:`AsyncWorkRejectedError`.
    * A key's activity is closed after ``idle_timeout`` idle seconds (and on
      eviction), and made again by the key's next call: its ``ActivityLocal``
      values go with it. Nothing accepted is lost: a key is retired only when
      nothing is pending, running or being submitted for it.

    The body of a call runs in the key's activity (``current_activity()`` is
    it, ``ActivityLocal`` values set there are the key's); a coroutine runs in
    the task of the key's call, a plain callable in the parent's worker
    threads (the parent's ``thread_limit``). A call of the same chain (a
    ``synchronous_call`` made from a running call, of any key) runs within the
    place its caller holds in the parent.

    :param config: the parent's :class:`ActivityConfig` (or a mapping of its fields)
    :param max_keys: how many keys may be live at once
    :param idle_timeout: seconds after which an idle key's activity is closed
        (``None``: only eviction closes it)
    :param per_key: the config of every key's activity (or a mapping): its
        ``max_pending``, ``overflow``, ``timeout``, ``error_handler``,
        ``shutdown_timeout``, ``local_scope``... Its ``max_concurrency`` is 1
        and its synchronization ``NEW``; other values are refused, and so is a
        ``partition``.
    :param parent: the parent activity's own parent, as for :class:`Activity`
    :param options: fields of the parent's :class:`ActivityConfig`
    :raises InvalidArgumentError: if an option is unknown or has a bad value

    .. versionadded:: 0.2
    """

    __slots__ = (
        "__weakref__",
        "_failures",
        "_house",
        "_house_call",
        "_idle_timeout",
        "_max_keys",
        "_parent",
        "_per_key",
        "_rejected",
        "_retired",
        "_retired_totals",
        "_sleeping",
        "_slots",
        "_state",
        "_thread_id",
        "_wake",
    )

    def __init__(
        self,
        config: ActivityConfig | Mapping[str, Any] | None = None,
        /,
        *,
        max_keys: int = 1000,
        idle_timeout: float | None = 60.0,
        per_key: ActivityConfig | Mapping[str, Any] | None = None,
        parent: Activity | EllipsisType | None = ...,
        **options: Any,
    ) -> None:
        if (
            isinstance(max_keys, bool)
            or not isinstance(max_keys, int)  # pyright: ignore[reportUnnecessaryIsInstance]
            or max_keys < 1
        ):
            raise InvalidArgumentError(
                f"max_keys must be a whole number >= 1, got {max_keys!r}",
                field="max_keys",
                value=max_keys,
            )
        if idle_timeout is not None and (
            isinstance(idle_timeout, bool)
            or not isinstance(idle_timeout, int | float)  # pyright: ignore[reportUnnecessaryIsInstance]
            or not idle_timeout > 0
            or not math.isfinite(idle_timeout)
        ):
            raise InvalidArgumentError(
                f"idle_timeout must be a finite number of seconds > 0 or None, "
                f"got {idle_timeout!r}",
                field="idle_timeout",
                value=idle_timeout,
            )
        self._per_key = _per_key_config(per_key)
        self._parent = Activity(config, parent=parent, **options)
        self._max_keys = max_keys
        self._idle_timeout = None if idle_timeout is None else float(idle_timeout)
        self._slots: dict[Hashable, _Slot] = {}
        #: Children retired (idle, evicted) and not closed yet.
        self._retired: collections.deque[Activity] = collections.deque()
        #: What the retired children counted, in the order of ActivityStatistics' totals.
        self._retired_totals = [0, 0, 0, 0, 0]  # accepted, rejected, completed, failed, cancelled
        #: Calls refused before any key's activity saw them (max_keys).
        self._rejected = 0
        #: The unobserved failures of the children closed so far.
        self._failures: list[BaseException] = []
        self._house: Activity | None = None
        self._house_call: Call[None] | None = None
        self._wake: anyio.Event | None = None
        self._sleeping = False
        self._state = "new"
        self._thread_id = 0

    # -- properties ---------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The parent activity's name."""
        return self._parent.name

    @property
    def activity(self) -> Activity:
        """The parent activity: the keys' activities are its children."""
        return self._parent

    @property
    def max_keys(self) -> int:
        """How many keys may be live at once."""
        return self._max_keys

    @property
    def idle_timeout(self) -> float | None:
        """Seconds after which an idle key's activity is closed, if any."""
        return self._idle_timeout

    def keys(self) -> list[Hashable]:
        """The live keys: those that have an activity now.

        Idle keys come in the order they became idle, the one idle the longest
        first (the next to be evicted).
        """
        return list(self._slots)

    def activity_of(self, key: Hashable) -> Activity | None:
        """The activity of a live key, or ``None`` if the key has none now."""
        slot = self._slots.get(key)
        return None if slot is None or slot.ready is not None else slot.child

    def key_statistics(self, key: Hashable) -> ActivityStatistics | None:
        """A snapshot of one live key's counters, or ``None`` if the key has no activity now.

        ``running`` counts the key's call whose turn has come, ``pending`` those
        that wait behind it, ``rejected`` those refused for the key's ``max_pending``.
        """
        slot = self._slots.get(key)
        return None if slot is None else slot.child.statistics()

    def statistics(self) -> ActivityStatistics:
        """A snapshot of the counters of every key, live or closed, added up.

        ``accepted == pending + waiting_for_thread + running + completed + failed +
        cancelled`` holds;
        ``rejected`` adds the calls refused for ``max_keys`` to those each key
        refused. ``max_concurrency`` is the parent's, ``max_pending`` the bound
        of one key.
        """
        accepted, rejected, completed, failed, cancelled = self._retired_totals
        rejected += self._rejected
        pending = waiting = running = 0
        for slot in self._slots.values():
            s = slot.child.statistics()
            accepted += s.accepted
            rejected += s.rejected
            pending += s.pending
            waiting += s.waiting_for_thread
            running += s.running
            completed += s.completed
            failed += s.failed
            cancelled += s.cancelled
        parent = self._parent
        return ActivityStatistics.model_construct(
            name=parent.name,
            id=parent.id,
            accepted=accepted,
            rejected=rejected,
            pending=pending,
            waiting_for_thread=waiting,
            running=running,
            completed=completed,
            failed=failed,
            cancelled=cancelled,
            max_concurrency=parent.config.max_concurrency,
            max_pending=self._per_key.max_pending,
            partition=None,
        )

    def __repr__(self) -> str:
        return f"<KeyedActivity {self.name!r} {self._state} keys={len(self._slots)}>"

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> KeyedActivity:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close(exc)

    async def open(self) -> KeyedActivity:
        """Open the parent activity and the housekeeping; close with :meth:`aclose`.

        ``async with`` does the same and closes it at the end of the block.

        :return: the keyed activity
        :raises ActivityError: if it was opened before
        """
        if self._state != "new":
            raise ActivityError(f"keyed activity {self.name!r} can be opened only once")
        await self._parent.open()
        house = Activity(name=f"{self.name}.housekeeping"[:_MAX_NAME], parent=None, max_pending=0)
        try:
            await house.open()
        except BaseException:
            await self._parent.aclose()
            raise
        self._house = house
        self._thread_id = get_ident()
        self._state = "open"
        self._house_call = house.asynchronous_call_nowait(self._housekeep)
        return self

    async def aclose(self) -> None:
        """Close every key's activity (each drains for its ``shutdown_timeout``), then the parent.

        Closing a closed keyed activity does nothing.

        :raises ExceptionGroup: the failures nobody observed, of every key's
            activity (those closed before included) and of the parent
        """
        await self._close(None)

    async def _close(self, exc: BaseException | None) -> None:
        if self._state in ("closing", "closed"):
            return
        if self._state == "new":
            raise ActivityClosedError(f"keyed activity {self.name!r} was never opened")
        self._state = "closing"
        failures: list[BaseException] = []
        try:
            house = self._house
            if house is not None:
                if self._wake is not None:
                    self._wake.set()  # the housekeeping sees the state and returns
                await _close_collecting(house, failures)
            for slot in list(self._slots.values()):
                if slot.ready is not None:
                    await slot.ready.wait()
            if exc is not None:
                reason = f"the keyed activity's block raised {type(exc).__name__}"
                for slot in self._slots.values():
                    slot.child.cancel(reason)
            children = [*self._retired, *(slot.child for slot in self._slots.values())]
            self._retired.clear()
            async with anyio.create_task_group() as group:
                for child in children:
                    group.start_soon(_close_collecting, child, self._failures)
            for key, slot in list(self._slots.items()):
                self._retire(key, slot, close=False)
        finally:
            self._state = "closed"
            await _close_collecting(self._parent, failures)
        failures[:0] = self._failures
        self._failures = []
        if failures:
            if exc is not None and not isinstance(exc, anyio.get_cancelled_exc_class()):
                failures.insert(0, exc)  # what the block raised comes first, as for an activity
            message = f"{len(failures)} unobserved failure(s) in keyed activity {self.name!r}"
            if all(isinstance(f, Exception) for f in failures):
                raise ExceptionGroup(message, cast("list[Exception]", failures))
            raise BaseExceptionGroup(message, failures)

    # -- submission ---------------------------------------------------------------------

    @overload
    async def asynchronous_call(
        self,
        key: Hashable,
        fn: Callable[[Unpack[Ts]], Awaitable[T]],
        /,
        *args: *Ts,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Call[T]: ...
    @overload
    async def asynchronous_call(
        self,
        key: Hashable,
        fn: Awaitable[T],
        /,
        *,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Call[T]: ...
    @overload
    async def asynchronous_call(
        self,
        key: Hashable,
        fn: AsyncServiceCall[T],
        /,
        *,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Call[T]: ...
    @overload
    async def asynchronous_call(
        self,
        key: Hashable,
        fn: ServiceCall[T],
        /,
        *,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Call[T]: ...
    @overload
    async def asynchronous_call(
        self,
        key: Hashable,
        fn: Callable[[Unpack[Ts]], T],
        /,
        *args: *Ts,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Call[T]: ...
    async def asynchronous_call(  # type: ignore[misc]  # mypy and TypeVarTuple overloads
        self,
        key: Hashable,
        fn: Any,
        /,
        *args: Any,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Queue ``fn(*args)`` behind the key's earlier calls; return once it is accepted.

        As :meth:`Activity.asynchronous_call`, in the key's activity, which is
        made first if the key has none.

        :param key: the key (hashable): calls of one key run one at a time, in order
        :param fn: the work: a coroutine function, a plain callable, an object
            with ``on_call()`` (without ``on_error``) or a coroutine object
        :param args: positional arguments for ``fn``
        :param name: a name for the call
        :param timeout: seconds the call may take once its turn has come,
            waiting for a place in the parent included (default: ``per_key``'s)
        :return: the call's handle, a call of the key's activity
        :raises AsyncWorkRejectedError: if the key's queue is full, or every one of
            the ``max_keys`` keys is busy
        :raises ActivityClosedError: if the keyed activity is not open
        :raises InvalidArgumentError: if ``fn``, ``name`` or ``timeout`` is not valid
        """
        kind, body = self._check(fn, args)
        try:
            slot = await self._enter(key)
        except BaseException:
            refuse_coroutine(body)
            raise
        try:
            call: Call[Any] = await slot.child.asynchronous_call(
                self._run, kind, body, args, name=_name_of(fn, name), timeout=timeout
            )
        except ActivityError:
            refuse_coroutine(body)  # refused: it never runs
            raise
        finally:
            self._release(slot)
        call.add_done_callback(_Ended(self, slot, body if kind is COROUTINE else None))
        return call

    @overload
    def asynchronous_call_nowait(
        self,
        key: Hashable,
        fn: Callable[[Unpack[Ts]], Awaitable[T]],
        /,
        *args: *Ts,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Call[T]: ...
    @overload
    def asynchronous_call_nowait(
        self,
        key: Hashable,
        fn: Awaitable[T],
        /,
        *,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Call[T]: ...
    @overload
    def asynchronous_call_nowait(
        self,
        key: Hashable,
        fn: AsyncServiceCall[T],
        /,
        *,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Call[T]: ...
    @overload
    def asynchronous_call_nowait(
        self,
        key: Hashable,
        fn: ServiceCall[T],
        /,
        *,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Call[T]: ...
    @overload
    def asynchronous_call_nowait(
        self,
        key: Hashable,
        fn: Callable[[Unpack[Ts]], T],
        /,
        *args: *Ts,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Call[T]: ...
    def asynchronous_call_nowait(  # type: ignore[misc]  # mypy and TypeVarTuple overloads
        self,
        key: Hashable,
        fn: Any,
        /,
        *args: Any,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Queue ``fn(*args)`` like :meth:`asynchronous_call`, without waiting.

        Accepted or refused before it returns, whatever the ``overflow``
        setting. On trio, opening a key's activity needs an ``await``: a key
        that has no activity yet (or whose activity is being opened) is
        refused there with :class:`AsyncWorkRejectedError`; on asyncio the
        activity is made at once.

        :raises AsyncWorkRejectedError: if the key's queue is full, every key is
            busy, or (on trio) the key has no open activity
        :raises ActivityClosedError: if the keyed activity is not open
        :raises InvalidArgumentError: if ``fn``, ``name`` or ``timeout`` is not valid
        """
        kind, body = self._check(fn, args)
        try:
            slot = self._enter_nowait(key)
            try:
                call: Call[Any] = slot.child.asynchronous_call_nowait(
                    self._run, kind, body, args, name=_name_of(fn, name), timeout=timeout
                )
            finally:
                self._release(slot)
        except BaseException:
            refuse_coroutine(body)
            raise
        call.add_done_callback(_Ended(self, slot, body if kind is COROUTINE else None))
        return call

    @overload
    async def synchronous_call(
        self,
        key: Hashable,
        fn: Callable[[Unpack[Ts]], Awaitable[T]],
        /,
        *args: *Ts,
        timeout: float | None = None,
    ) -> T: ...
    @overload
    async def synchronous_call(
        self, key: Hashable, fn: Awaitable[T], /, *, timeout: float | None = None
    ) -> T: ...
    @overload
    async def synchronous_call(
        self, key: Hashable, fn: AsyncServiceCall[T], /, *, timeout: float | None = None
    ) -> T: ...
    @overload
    async def synchronous_call(
        self, key: Hashable, fn: ServiceCall[T], /, *, timeout: float | None = None
    ) -> T: ...
    @overload
    async def synchronous_call(
        self,
        key: Hashable,
        fn: Callable[[Unpack[Ts]], T],
        /,
        *args: *Ts,
        timeout: float | None = None,
    ) -> T: ...
    async def synchronous_call(  # type: ignore[misc]  # mypy and TypeVarTuple overloads
        self, key: Hashable, fn: Any, /, *args: Any, timeout: float | None = None
    ) -> Any:
        """Run ``fn(*args)`` in the key's turn and return its result.

        As :meth:`Activity.synchronous_call` in the key's activity: it waits in
        the key's line (it is never rejected for a full queue, only when every
        one of the ``max_keys`` keys is busy), and the body's own exception is
        raised unchanged. Made from a running call of the same key, it runs at
        once instead of waiting behind its caller.

        :param key: the key
        :param fn: the work, as for :meth:`asynchronous_call`
        :param args: positional arguments for ``fn``
        :param timeout: seconds the call may take once its turn has come
        :return: what ``fn`` returned
        :raises AsyncWorkRejectedError: if every one of the ``max_keys`` keys is busy
        :raises CallTimeoutError: if the call took longer than ``timeout``
        :raises CallCancelledError: if the call was cancelled by the activity
        :raises ActivityClosedError: if the keyed activity is not open
        :raises InvalidArgumentError: if ``fn`` or ``timeout`` is not valid
        """
        kind, body = self._check(fn, args)
        try:
            slot = await self._enter(key)
        except BaseException:
            refuse_coroutine(body)
            raise
        try:
            return await slot.child.synchronous_call(self._run, kind, body, args, timeout=timeout)
        finally:
            if kind is COROUTINE:
                refuse_coroutine(body)  # a no-op once it ran
            self._release(slot)

    # -- the keys -----------------------------------------------------------------------

    def _check(self, fn: Any, args: tuple[Any, ...]) -> tuple[Kind, Any]:
        """Refuse what cannot be run, before any key is made: (kind, body)."""
        try:
            if self._state != "open":
                raise ActivityClosedError(
                    f"keyed activity {self.name!r} is {self._state} and takes no work"
                )
            if get_ident() != self._thread_id:
                raise WrongThreadError(
                    f"keyed activity {self.name!r} belongs to the event loop of another thread"
                )
            kind, body, target = classify(fn, args)
            if target is not None:
                raise InvalidArgumentError(
                    f"{fn!r} has on_error(), which a keyed activity does not call: give "
                    "per_key an error_handler instead",
                    field="fn",
                    value=fn,
                )
        except BaseException:
            refuse_coroutine(fn)
            raise
        return kind, body

    async def _enter(self, key: Hashable) -> _Slot:
        """The key's open slot, made if need be, counted as used until :meth:`_release`."""
        while True:
            slot = self._slots.get(key)
            if slot is None:
                break
            if slot.ready is None:
                slot.users += 1
                return slot
            await slot.ready.wait()
            if self._state != "open":
                raise ActivityClosedError(f"keyed activity {self.name!r} is closing")
        slot = self._new_slot(key)
        ready = slot.ready = anyio.Event()
        try:
            await slot.child.open()
        except BaseException:
            self._slots.pop(key, None)
            raise
        finally:
            slot.ready = None
            ready.set()
        return slot

    def _enter_nowait(self, key: Hashable) -> _Slot:
        slot = self._slots.get(key)
        if slot is not None and slot.ready is None:
            slot.users += 1
            return slot
        if slot is not None or _get_running_loop() is None:
            self._rejected += 1
            if slot is None and len(self._slots) >= self._max_keys and self._idle_key() is None:
                raise self._full(key)
            raise AsyncWorkRejectedError(
                f"keyed activity {self.name!r} rejected a call of key {key!r}: the key has no "
                "open activity, and opening one needs an await here "
                "(use asynchronous_call for a new key on trio)"
            )
        slot = self._new_slot(key)
        opening = slot.child.open()
        try:
            opening.send(None)
        except StopIteration:
            return slot  # asyncio: opening an activity never suspends
        except BaseException:
            self._slots.pop(key, None)
            raise
        opening.close()  # pragma: no cover - opening awaited something on asyncio
        self._slots.pop(key, None)  # pragma: no cover
        raise AssertionError("opening an activity suspended on asyncio")  # pragma: no cover

    def _new_slot(self, key: Hashable) -> _Slot:
        """Make room for a new key (evicting the key idle the longest) and its slot."""
        hash(key)  # an unhashable key is refused before anything is evicted
        if len(self._slots) >= self._max_keys:
            oldest = self._idle_key()
            if oldest is None:
                self._rejected += 1
                raise self._full(key)
            self._retire(oldest.key, oldest)
        per_key = self._per_key
        name = f"{per_key.name or self.name}[{key!r}]"
        if len(name) > _MAX_NAME:
            name = name[: _MAX_NAME - 4] + "...]"
        child = Activity(per_key.with_options({"name": name}), parent=self._parent)
        slot = self._slots[key] = _Slot(key, child)
        return slot

    def _idle_key(self) -> _Slot | None:
        """The key idle the longest, if the keys are all live and one is idle."""
        if len(self._slots) < self._max_keys:
            return None
        # Ordered by idleness (see _touch): the first idle key has been idle the longest.
        return next((s for s in self._slots.values() if not self._busy(s)), None)

    def _full(self, key: Hashable) -> AsyncWorkRejectedError:
        return AsyncWorkRejectedError(
            f"keyed activity {self.name!r} rejected a call of key {key!r}: all "
            f"max_keys={self._max_keys} keys are busy"
        )

    def _busy(self, slot: _Slot) -> bool:
        if slot.users or slot.ready is not None:
            return True
        s = slot.child.statistics()
        # A key's calls are coroutines (their blocking bodies run in the parent's
        # threads): none of them waits for a thread of the key's activity.
        return bool(s.pending or s.waiting_for_thread or s.running)

    def _release(self, slot: _Slot) -> None:
        slot.users -= 1
        self._touch(slot)

    def _touch(self, slot: _Slot) -> None:
        """Note when a key becomes idle, and wake the housekeeping if it sleeps for good."""
        if slot.retired or self._busy(slot):
            return
        slot.idle_since = time.monotonic()
        # Move the key to the end: the dict stays ordered by idleness.
        key = slot.key
        if self._slots.get(key) is slot:
            del self._slots[key]
            self._slots[key] = slot
        if self._sleeping and self._idle_timeout is not None and self._wake is not None:
            self._wake.set()

    def _retire(self, key: Hashable, slot: _Slot, *, close: bool = True) -> None:
        """Take an idle key out, in one step with the check that it is idle."""
        del self._slots[key]
        slot.retired = True
        s = slot.child.statistics()
        totals = self._retired_totals
        totals[0] += s.accepted
        totals[1] += s.rejected
        totals[2] += s.completed
        totals[3] += s.failed
        totals[4] += s.cancelled
        if close:
            self._retired.append(slot.child)
            if self._wake is not None:
                self._wake.set()

    async def _housekeep(self) -> None:
        """Close retired children; retire the keys idle for ``idle_timeout``."""
        # Stopped by the state and a wake-up, not by cancelling the call: the loop
        # must never stop in the middle of a child's close.
        while self._state == "open":
            self._wake = anyio.Event()
            while self._retired:
                await _close_collecting(self._retired.popleft(), self._failures)
            delay = self._reap()
            if self._retired:
                continue
            self._sleeping = delay is None
            try:
                with anyio.move_on_after(math.inf if delay is None else delay):
                    await self._wake.wait()
            finally:
                self._sleeping = False

    def _reap(self) -> float | None:
        """Retire the keys idle for ``idle_timeout``; the seconds until the next one is due."""
        timeout = self._idle_timeout
        if timeout is None:
            return None
        now = time.monotonic()
        # Ordered by idleness (see _touch): stop at the first key not due yet.
        for key, slot in list(self._slots.items()):
            if self._busy(slot):
                continue
            due = slot.idle_since + timeout
            if due > now:
                return due - now
            self._retire(key, slot)
        return None

    # -- a call's body --------------------------------------------------------------------

    async def _run(self, kind: Kind, body: Any, args: tuple[Any, ...]) -> Any:
        """The key's call: take a place in the parent, run the body in the key's call."""
        frame = frame_var.get()
        chain = None if frame is None else frame.causality
        held = _holding.get()
        context = copy_context()
        if held is not None and held[0] is self and held[1] is chain:
            # The chain holds a place in the parent already: run within it.
            if kind is BLOCKING:
                return await anyio.to_thread.run_sync(_run_in, context, body, args)
            return await _awaited(body, args)
        context.run(_holding.set, (self, chain))
        if kind is BLOCKING:
            return await self._parent.synchronous_call(_run_in, context, body, args)
        return await self._parent.synchronous_call(_drive, body, args, context)


@final
class _Ended:
    """A key's call has ended: note the key's idleness; close a coroutine that never ran."""

    __slots__ = ("coroutine", "keyed", "slot")

    def __init__(self, keyed: KeyedActivity, slot: _Slot, coroutine: Any) -> None:
        self.keyed = keyed
        self.slot = slot
        self.coroutine = coroutine

    def __call__(self, call: Call[Any]) -> None:
        if self.coroutine is not None:
            refuse_coroutine(self.coroutine)  # a no-op once it ran
        self.keyed._touch(self.slot)  # pyright: ignore[reportPrivateUsage]


def _run_in(context: Context, body: Any, args: tuple[Any, ...]) -> Any:
    """Run a blocking body, in a worker thread, with the key's call as its frame."""
    return context.run(body, *args)


async def _drive(body: Any, args: tuple[Any, ...], context: Context) -> Any:
    """Run a coroutine body, in the parent's place, with the key's call as its frame."""
    return await drive_in_context(_coroutine_of(body, args), context)


async def _awaited(body: Any, args: tuple[Any, ...]) -> Any:
    return await _coroutine_of(body, args)


def _coroutine_of(body: Any, args: tuple[Any, ...]) -> Coroutine[Any, Any, Any]:
    awaitable = body if not callable(body) else body(*args)
    if inspect.iscoroutine(awaitable):
        return awaitable
    return _await(cast("Awaitable[Any]", awaitable))


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


async def _close_collecting(activity: Activity, failures: list[BaseException]) -> None:
    """Close an activity, shielded; keep the failures it raises."""
    with anyio.CancelScope(shield=True):
        try:
            await activity.aclose()
        except BaseExceptionGroup as group:
            failures.extend(group.exceptions)
        except Exception as error:
            failures.append(error)


def _name_of(fn: Any, name: str | None) -> str | None:
    if name is not None:
        return name
    qualname = getattr(fn, "__qualname__", None)
    if isinstance(qualname, str) and qualname:
        return qualname[:_MAX_NAME]
    owner = getattr(fn, "on_call", None)
    if owner is not None:
        return type(fn).__qualname__[:_MAX_NAME]
    code = getattr(fn, "cr_code", None)
    return None if code is None else str(code.co_qualname)[:_MAX_NAME]


def _per_key_config(per_key: ActivityConfig | Mapping[str, Any] | None) -> ActivityConfig:
    """The config of every key's activity: ``per_key`` with one place and a domain of its own."""
    if per_key is None:
        config = ActivityConfig()
    elif isinstance(per_key, ActivityConfig):
        config = per_key
    elif isinstance(per_key, Mapping):  # pyright: ignore[reportUnnecessaryIsInstance]
        config = ActivityConfig(**per_key)
    else:
        raise InvalidArgumentError(
            f"per_key must be an ActivityConfig, a mapping of its fields or None, got {per_key!r}",
            field="per_key",
            value=per_key,
        )
    given = config.model_fields_set
    if "max_concurrency" in given and config.max_concurrency != 1:
        raise InvalidArgumentError(
            "a key's activity runs one call at a time: per_key.max_concurrency must be 1 "
            f"(got {config.max_concurrency}); the parent's max_concurrency bounds the keys",
            field="max_concurrency",
            value=config.max_concurrency,
        )
    if config.synchronization not in (None, Synchronization.NEW):
        raise InvalidArgumentError(
            "a key's activity has a synchronization domain of its own: per_key.synchronization "
            f"must be Synchronization.NEW (got {config.synchronization})",
            field="synchronization",
            value=config.synchronization,
        )
    if config.partition is not None:
        raise InvalidArgumentError(
            "each key has a budget of its own: per_key.partition must be None "
            f"(got {config.partition!r})",
            field="partition",
            value=config.partition,
        )
    return config.with_options({"max_concurrency": 1, "synchronization": Synchronization.NEW})


KeyedActivity.__module__ = "activity"
