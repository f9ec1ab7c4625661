"""The core of a keyed activity: its table of live keys, and their lifecycle.

:class:`KeyedCore` is what :class:`~activity.KeyedActivity` (the public face,
``_keyed``) runs on, as an ``Activity`` runs on its ``CoreState``: the live
keys, each a synchronized child activity of the parent (a :class:`KeySlot`),
in the order they became idle; making a key's activity on its first call,
evicting the key idle the longest when ``max_keys`` are live, retiring a key
idle for ``idle_timeout``; the housekeeping that closes retired keys'
activities in an activity of its own; the counters of the keys closed so
far; and the body every key's call runs, which takes a place in the parent
before it runs the user's body in the key's call.

A key is retired only when it is idle (nothing pending, running or being
submitted through the keyed activity) and in the same step as the check,
with no ``await`` between: a call that arrives afterwards finds no key and
makes a new one, so nothing accepted is ever lost, and a retired key's
activity has no work to close but its own.
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
from typing import TYPE_CHECKING, Any, Final, cast, final

import anyio
import anyio.to_thread

from ._activity import Activity, Call
from ._backends._common import drive_in_context
from ._call import BLOCKING, Kind
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
    from collections.abc import Awaitable, Coroutine
    from contextvars import Context

__all__ = ["MAX_NAME", "CallEnded", "KeySlot", "KeyedCore", "per_key_config"]

#: The longest name given to a key's activity, to a call, or to the housekeeping.
MAX_NAME: Final = 200

#: The keyed activity whose parent place the running chain holds, and the chain.
_holding: Final[ContextVar[tuple[object, object] | None]] = ContextVar(
    "activity.keyed.holding", default=None
)


@final
class KeySlot:
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
class KeyedCore:
    """The live keys of one keyed activity, their lifecycle, and its own (see the module doc)."""

    __slots__ = (
        "failures",
        "house",
        "house_call",
        "idle_timeout",
        "max_keys",
        "parent",
        "per_key",
        "rejected",
        "retired",
        "retired_totals",
        "sleeping",
        "slots",
        "state",
        "thread_id",
        "wake",
    )

    def __init__(
        self, parent: Activity, per_key: ActivityConfig, max_keys: int, idle_timeout: float | None
    ) -> None:
        self.parent = parent
        self.per_key = per_key
        self.max_keys = max_keys
        self.idle_timeout = idle_timeout
        #: The live keys, in the order they became idle (see touch()).
        self.slots: dict[Hashable, KeySlot] = {}
        #: Children retired (idle, evicted) and not closed yet.
        self.retired: collections.deque[Activity] = collections.deque()
        #: What the retired children counted, in the order of ActivityStatistics' totals.
        self.retired_totals = [0, 0, 0, 0, 0]  # accepted, rejected, completed, failed, cancelled
        #: Calls refused before any key's activity saw them (max_keys).
        self.rejected = 0
        #: The unobserved failures of the children closed so far.
        self.failures: list[BaseException] = []
        self.house: Activity | None = None
        self.house_call: Call[None] | None = None
        self.wake: anyio.Event | None = None
        self.sleeping = False
        self.state = "new"
        self.thread_id = 0

    @property
    def name(self) -> str:
        """The parent activity's name."""
        return self.parent.name

    def statistics(self) -> ActivityStatistics:
        """The counters of every key, live or closed, added up (see ``KeyedActivity``)."""
        accepted, rejected, completed, failed, cancelled = self.retired_totals
        rejected += self.rejected
        pending = waiting = running = 0
        for slot in self.slots.values():
            s = slot.child.statistics()
            accepted += s.accepted
            rejected += s.rejected
            pending += s.pending
            waiting += s.waiting_for_thread
            running += s.running
            completed += s.completed
            failed += s.failed
            cancelled += s.cancelled
        parent = self.parent
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
            max_pending=self.per_key.max_pending,
            partition=None,
        )

    # -- lifecycle ----------------------------------------------------------------------

    async def open(self) -> None:
        """Open the parent activity and the housekeeping.

        :raises ActivityError: if it was opened before
        """
        if self.state != "new":
            raise ActivityError(f"keyed activity {self.name!r} can be opened only once")
        await self.parent.open()
        house = Activity(name=f"{self.name}.housekeeping"[:MAX_NAME], parent=None, max_pending=0)
        try:
            await house.open()
        except BaseException:
            await self.parent.aclose()
            raise
        self.house = house
        self.thread_id = get_ident()
        self.state = "open"
        self.house_call = house.asynchronous_call_nowait(self.housekeep)

    async def close(self, exc: BaseException | None) -> None:
        """Close every key's activity, then the parent; raise the unobserved failures."""
        if self.state in ("closing", "closed"):
            return
        if self.state == "new":
            raise ActivityClosedError(f"keyed activity {self.name!r} was never opened")
        self.state = "closing"
        failures: list[BaseException] = []
        try:
            house = self.house
            if house is not None:
                if self.wake is not None:
                    self.wake.set()  # the housekeeping sees the state and returns
                await _close_collecting(house, failures)
            for slot in list(self.slots.values()):
                if slot.ready is not None:
                    await slot.ready.wait()
            if exc is not None:
                reason = f"the keyed activity's block raised {type(exc).__name__}"
                for slot in self.slots.values():
                    slot.child.cancel(reason)
            children = [*self.retired, *(slot.child for slot in self.slots.values())]
            self.retired.clear()
            async with anyio.create_task_group() as group:
                for child in children:
                    group.start_soon(_close_collecting, child, self.failures)
            for key, slot in list(self.slots.items()):
                self.retire(key, slot, close=False)
        finally:
            self.state = "closed"
            await _close_collecting(self.parent, failures)
        failures[:0] = self.failures
        self.failures = []
        if failures:
            if exc is not None and not isinstance(exc, anyio.get_cancelled_exc_class()):
                failures.insert(0, exc)  # what the block raised comes first, as for an activity
            message = f"{len(failures)} unobserved failure(s) in keyed activity {self.name!r}"
            if all(isinstance(f, Exception) for f in failures):
                raise ExceptionGroup(message, cast("list[Exception]", failures))
            raise BaseExceptionGroup(message, failures)

    # -- the keys -----------------------------------------------------------------------

    def check(self, fn: Any, args: tuple[Any, ...]) -> tuple[Kind, Any]:
        """Refuse what cannot be run, before any key is made: (kind, body)."""
        try:
            if self.state != "open":
                raise ActivityClosedError(
                    f"keyed activity {self.name!r} is {self.state} and takes no work"
                )
            if get_ident() != self.thread_id:
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

    async def enter(self, key: Hashable) -> KeySlot:
        """The key's open slot, made if need be, counted as used until :meth:`_release`."""
        while True:
            slot = self.slots.get(key)
            if slot is None:
                break
            if slot.ready is None:
                slot.users += 1
                return slot
            await slot.ready.wait()
            if self.state != "open":
                raise ActivityClosedError(f"keyed activity {self.name!r} is closing")
        slot = self.new_slot(key)
        ready = slot.ready = anyio.Event()
        try:
            await slot.child.open()
        except BaseException:
            self.slots.pop(key, None)
            raise
        finally:
            slot.ready = None
            ready.set()
        return slot

    def enter_nowait(self, key: Hashable) -> KeySlot:
        slot = self.slots.get(key)
        if slot is not None and slot.ready is None:
            slot.users += 1
            return slot
        if slot is not None or _get_running_loop() is None:
            self.rejected += 1
            if slot is None and len(self.slots) >= self.max_keys and self.idle_key() is None:
                raise self.full(key)
            raise AsyncWorkRejectedError(
                f"keyed activity {self.name!r} rejected a call of key {key!r}: the key has no "
                "open activity, and opening one needs an await here "
                "(use asynchronous_call for a new key on trio)"
            )
        slot = self.new_slot(key)
        opening = slot.child.open()
        try:
            opening.send(None)
        except StopIteration:
            return slot  # asyncio: opening an activity never suspends
        except BaseException:
            self.slots.pop(key, None)
            raise
        opening.close()  # pragma: no cover - opening awaited something on asyncio
        self.slots.pop(key, None)  # pragma: no cover
        raise AssertionError("opening an activity suspended on asyncio")  # pragma: no cover

    def new_slot(self, key: Hashable) -> KeySlot:
        """Make room for a new key (evicting the key idle the longest) and its slot."""
        hash(key)  # an unhashable key is refused before anything is evicted
        if len(self.slots) >= self.max_keys:
            oldest = self.idle_key()
            if oldest is None:
                self.rejected += 1
                raise self.full(key)
            self.retire(oldest.key, oldest)
        per_key = self.per_key
        name = f"{per_key.name or self.name}[{key!r}]"
        if len(name) > MAX_NAME:
            name = name[: MAX_NAME - 4] + "...]"
        child = Activity(per_key.with_options({"name": name}), parent=self.parent)
        slot = self.slots[key] = KeySlot(key, child)
        return slot

    def idle_key(self) -> KeySlot | None:
        """The key idle the longest, if the keys are all live and one is idle."""
        if len(self.slots) < self.max_keys:
            return None
        # Ordered by idleness (see _touch): the first idle key has been idle the longest.
        return next((s for s in self.slots.values() if not self.busy(s)), None)

    def full(self, key: Hashable) -> AsyncWorkRejectedError:
        return AsyncWorkRejectedError(
            f"keyed activity {self.name!r} rejected a call of key {key!r}: all "
            f"max_keys={self.max_keys} keys are busy"
        )

    def busy(self, slot: KeySlot) -> bool:
        if slot.users or slot.ready is not None:
            return True
        s = slot.child.statistics()
        # A key's calls are coroutines (their blocking bodies run in the parent's
        # threads): none of them waits for a thread of the key's activity.
        return bool(s.pending or s.waiting_for_thread or s.running)

    def release(self, slot: KeySlot) -> None:
        slot.users -= 1
        self.touch(slot)

    def touch(self, slot: KeySlot) -> None:
        """Note when a key becomes idle, and wake the housekeeping if it sleeps for good."""
        if slot.retired or self.busy(slot):
            return
        slot.idle_since = time.monotonic()
        # Move the key to the end: the dict stays ordered by idleness.
        key = slot.key
        if self.slots.get(key) is slot:
            del self.slots[key]
            self.slots[key] = slot
        if self.sleeping and self.idle_timeout is not None and self.wake is not None:
            self.wake.set()

    def retire(self, key: Hashable, slot: KeySlot, *, close: bool = True) -> None:
        """Take an idle key out, in one step with the check that it is idle."""
        del self.slots[key]
        slot.retired = True
        s = slot.child.statistics()
        totals = self.retired_totals
        totals[0] += s.accepted
        totals[1] += s.rejected
        totals[2] += s.completed
        totals[3] += s.failed
        totals[4] += s.cancelled
        if close:
            self.retired.append(slot.child)
            if self.wake is not None:
                self.wake.set()

    async def housekeep(self) -> None:
        """Close retired children; retire the keys idle for ``idle_timeout``."""
        # Stopped by the state and a wake-up, not by cancelling the call: the loop
        # must never stop in the middle of a child's close.
        while self.state == "open":
            self.wake = anyio.Event()
            while self.retired:
                await _close_collecting(self.retired.popleft(), self.failures)
            delay = self.reap()
            if self.retired:
                continue
            self.sleeping = delay is None
            try:
                with anyio.move_on_after(math.inf if delay is None else delay):
                    await self.wake.wait()
            finally:
                self.sleeping = False

    def reap(self) -> float | None:
        """Retire the keys idle for ``idle_timeout``; the seconds until the next one is due."""
        timeout = self.idle_timeout
        if timeout is None:
            return None
        now = time.monotonic()
        # Ordered by idleness (see _touch): stop at the first key not due yet.
        for key, slot in list(self.slots.items()):
            if self.busy(slot):
                continue
            due = slot.idle_since + timeout
            if due > now:
                return due - now
            self.retire(key, slot)
        return None

    # -- a call's body --------------------------------------------------------------------

    async def run(self, kind: Kind, body: Any, args: tuple[Any, ...]) -> Any:
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
            return await self.parent.synchronous_call(_run_in, context, body, args)
        return await self.parent.synchronous_call(_drive, body, args, context)


@final
class CallEnded:
    """A key's call has ended: note the key's idleness; close a coroutine that never ran."""

    __slots__ = ("coroutine", "keyed", "slot")

    def __init__(self, keyed: KeyedCore, slot: KeySlot, coroutine: Any) -> None:
        self.keyed = keyed
        self.slot = slot
        self.coroutine = coroutine

    def __call__(self, call: Call[Any]) -> None:
        if self.coroutine is not None:
            refuse_coroutine(self.coroutine)  # a no-op once it ran
        self.keyed.touch(self.slot)


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


def per_key_config(per_key: ActivityConfig | Mapping[str, Any] | None) -> ActivityConfig:
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
