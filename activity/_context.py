"""Which activity the running code belongs to, and the values it carries.

One context variable, ``frame_var``, holds the innermost *frame*: the
activity whose ``async with`` body is running (its core), or the call whose
body is running. Every frame names its activity's core as ``host``, so
``current_activity()`` is a single lookup. Every call runs in its own copy of its submitter's
context with the frame set to the call, so the value flows into tasks and
worker threads and never into another activity.

Beside the domains is the graph of what waiting call chains wait for, which
turns a wait that would never end into a :class:`WouldDeadlockError`. A wait
for a domain's turn is bounded by the waiting activity's
``synchronization_timeout``, after which it raises :class:`CallTimeoutError`
(``CONTEXT_E_SYNCH_TIMEOUT``) and leaves the line.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ClassVar, Final, Generic, Protocol, TypeVar, cast, final

import anyio

from ._call import FINISHED, BaseCall, InlineCall
from ._errors import ActivityError, CallTimeoutError, WouldDeadlockError
from ._hresult import HResult

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._call import Event

__all__ = [
    "ActivityLocal",
    "CallLocals",
    "Frame",
    "LocalsHost",
    "SynchronizationDomain",
    "begin_wait",
    "call_values",
    "check_wait",
    "end_wait",
    "frame_var",
    "get_frame",
    "set_frame",
    "visible_values",
]

T = TypeVar("T")


class LocalsHost(Protocol):
    """What ``ActivityLocal`` reads of an activity: its values, and where it came from."""

    @property
    def locals(self) -> dict[Any, Any]: ...
    @property
    def origin(self) -> Any:
        """The activity (a ``LocalsHost``) to look in next, or ``None``."""
        ...


class Frame(Protocol):
    """What the running code belongs to: an activity's block, or one of its calls."""

    @property
    def host(self) -> Any:
        """The activity's core (a ``LocalsHost``)."""
        ...

    @property
    def origin(self) -> Any:
        """Where the work came from (a ``LocalsHost``), if another activity."""
        ...

    @property
    def causality(self) -> object | None: ...

    #: Whether the frame is a call (a nested call of its activity re-enters).
    is_call: ClassVar[bool]


frame_var: Final[ContextVar[Frame | None]] = ContextVar("activity.frame", default=None)
#: ``frame_var.set`` and ``frame_var.get``, bound once. Passed to ``Context.run()``,
#: ``frame_var.set`` would make a bound method per call (Python 3.11 does not
#: specialize that attribute load).
set_frame: Final = frame_var.set
get_frame: Final = frame_var.get


#: The table of ``ActivityLocal`` values of the call whose context this is, in an
#: activity with ``LocalScope.CALL``: (the activity's core, the table).
call_values: Final[ContextVar[tuple[object, dict[Any, Any]] | None]] = ContextVar(
    "activity.call_values", default=None
)


@final
class CallLocals(dict[Any, Any]):
    """The ``ActivityLocal`` table of an activity with ``LocalScope.CALL``.

    It reads and writes the table of the call whose context this is (every
    task, thread and call that call starts carries the same context, so the
    same table); code that belongs to no call of the activity (its block, its
    startup code) uses the activity's own.
    """

    __slots__ = ("owner",)

    def __init__(self, owner: object) -> None:
        super().__init__()
        #: The core whose table this is: another activity's call table is not ours.
        self.owner = owner

    def _own(self) -> dict[Any, Any] | None:
        own = call_values.get()
        return None if own is None or own[0] is not self.owner else own[1]

    def get(self, key: Any, default: Any = None, /) -> Any:
        own = self._own()
        return super().get(key, default) if own is None else own.get(key, default)

    def __getitem__(self, key: Any, /) -> Any:
        own = self._own()
        return super().__getitem__(key) if own is None else own[key]

    def __contains__(self, key: object, /) -> bool:
        own = self._own()
        return super().__contains__(key) if own is None else key in own

    def __setitem__(self, key: Any, value: Any, /) -> None:
        own = self._own()
        if own is None:
            super().__setitem__(key, value)
        else:
            own[key] = value

    def __delitem__(self, key: Any, /) -> None:
        own = self._own()
        if own is None:
            super().__delitem__(key)
        else:
            del own[key]

    def own_values(self) -> dict[Any, Any]:
        """A copy of the activity's own table, whatever the context."""
        return dict(super().items())

    def current(self) -> dict[Any, Any]:
        """The table this context uses: its call's, else (a copy of) the activity's."""
        own = self._own()
        return self.own_values() if own is None else own


def visible_values(frame: Frame | None, host: LocalsHost) -> dict[Any, Any]:
    """The table a call of ``host`` submitted from ``frame`` starts with (``LocalScope.CALL``).

    What the submitting code sees, taken in the order ``ActivityLocal.get``
    looks (its activity, then the ones the work came from), so that the
    nearest value wins, over ``host``'s own values, so that a value set by the
    activity's startup code never hides the submitter's. A copy rather than a
    link: a chain of calls that start calls holds no finished one alive.
    """
    layers: list[dict[Any, Any]] = []
    if frame is not None:
        layers.append(frame.host.locals)
        origin = frame.origin
        while origin is not None:
            layers.append(origin.locals)
            origin = origin.origin
    own = host.locals
    values = own.own_values() if isinstance(own, CallLocals) else dict(own)
    for table in reversed(layers):
        values.update(table.current() if isinstance(table, CallLocals) else table)
    return values


# -- the wait-for graph -----------------------------------------------------------------
#
# A chain (COM+'s causality: a call and the synchronous calls it waits for) that
# holds a synchronization domain and waits for work needing that domain waits
# forever. The graph has the chains as nodes; a chain's edges go out from what it
# waits for, recorded only while it waits (a call it awaits, a domain it waits to
# enter), and are read from live state when a new wait begins:
#
#   waiting for a domain       -> the chain that holds it
#   waiting for a call that needs a domain held by another chain -> that chain
#   waiting for any other unfinished call -> the call's own chain, if not the waiter's
#
# A new wait that leads back to its own chain would close a cycle: it raises
# WouldDeadlockError instead. Nothing is recorded or read on the way of a call that
# does not wait, and what is read is live state, so an edge that a finished call or
# a handed-over domain has made stale leads nowhere.

#: What each waiting chain waits for: calls it awaits, domains it waits to enter.
_waits: Final[dict[object, list[object]]] = {}
#: Guards _waits: a thread's chain may call back in through another loop.
_waits_lock: Final = threading.Lock()


class DomainHost(Protocol):
    """What the graph and the domains read of an activity: its name, domain and wait limit."""

    @property
    def name(self) -> str: ...
    @property
    def domain(self) -> SynchronizationDomain | None: ...
    @property
    def synchronization_timeout(self) -> float | None:
        """Seconds its call chains wait for their turn in its domain (``None``: no limit)."""
        ...


def _describe(chain: object, waiter: object) -> str:
    if chain is waiter:
        return "this call chain"
    if isinstance(chain, BaseCall):
        return f"the chain of call {chain.name!r} of activity {chain.host.name!r}"
    if isinstance(chain, InlineCall):
        return f"the chain of a synchronous call of activity {chain.host.name!r}"
    return repr(chain)


def _blocker(chain: object, waited: object, waiter: object) -> tuple[object, str] | None:
    """The chain that ``chain``, waiting for ``waited``, waits on in turn, and why."""
    if isinstance(waited, SynchronizationDomain):
        owner = waited.owner
        if owner is None or owner is chain:
            return None  # free, or already handed to the chain
        return owner, (
            f"waits to enter synchronization domain {waited.name!r}, held by "
            f"{_describe(owner, waiter)}"
        )
    call = cast("BaseCall[Any]", waited)
    runs_in = call.causality
    if call.state in FINISHED or runs_in is None:
        return None
    host = cast("DomainHost", call.host)
    domain = host.domain
    if domain is not None:
        owner = domain.owner
        if owner is not None and owner is not runs_in:
            return owner, (
                f"waits for call {call.name!r}, which needs synchronization domain "
                f"{domain.name!r} of activity {host.name!r}, held by {_describe(owner, waiter)}"
            )
    if runs_in is chain:
        return None  # the chain's own synchronous call: it goes on as the chain
    return runs_in, f"waits for call {call.name!r}, which runs in {_describe(runs_in, waiter)}"


def deadlock_of(chain: object, waited: object) -> list[str] | None:
    """The steps of the cycle that ``chain`` waiting for ``waited`` would close, if any.

    ``waited`` is a :class:`BaseCall` or a :class:`SynchronizationDomain`. A walk
    over the chains that wait, from ``chain``: only a path back to ``chain`` is a
    deadlock that this wait causes.
    """
    first = _blocker(chain, waited, chain)
    if first is None:
        return None
    stack: list[tuple[object, list[tuple[object, str]]]] = [(first[0], [(chain, first[1])])]
    seen: set[int] = set()
    while stack:
        node, path = stack.pop()
        if node is chain:
            return [f"{_describe(who, chain)} {why}" for who, why in path]
        if id(node) in seen:
            continue
        seen.add(id(node))
        for what in tuple(_waits.get(node, ())):
            step = _blocker(node, what, chain)
            if step is not None:
                stack.append((step[0], [*path, (node, step[1])]))
    return None


def check_wait(chain: object, waited: object) -> None:
    """Raise :class:`WouldDeadlockError` if ``chain`` waiting for ``waited`` would never end."""
    steps = deadlock_of(chain, waited)
    if steps is not None:
        raise WouldDeadlockError(
            "waiting here would deadlock: " + "; ".join(steps) + ". The awaited work is "
            "left as it was, to run once the domain is free"
        )


def begin_wait(chain: object, waited: object) -> None:
    """Record that ``chain`` waits for ``waited`` (a call or a domain), for other waits to see."""
    with _waits_lock:
        waits = _waits.get(chain)
        if waits is None:
            _waits[chain] = [waited]
        else:
            waits.append(waited)


def end_wait(chain: object, waited: object) -> None:
    """Forget one wait recorded by :func:`begin_wait`."""
    with _waits_lock:
        waits = _waits[chain]
        if len(waits) == 1:
            del _waits[chain]
        else:
            waits.remove(waited)


def _in_asyncio_task() -> bool:
    """Whether an asyncio task (not trio) runs this, so that ``asyncio.timeout`` applies."""
    try:
        return asyncio.current_task() is not None
    except RuntimeError:  # no asyncio loop runs here: trio
        return False


async def _wait_at_most(ticket: Event, timeout: float) -> None:
    """Wait for ``ticket`` for up to ``timeout`` seconds; the caller reads whether it came."""
    if _in_asyncio_task():
        # The loop's own timeout on asyncio (and uvloop): no cancel scope to set up.
        try:
            async with asyncio.timeout(timeout):
                await ticket.wait()
        except TimeoutError:
            return
    else:
        with anyio.move_on_after(timeout):
            await ticket.wait()


class SynchronizationDomain:
    """Lets one causality in at a time; the same causality re-enters; others wait, FIFO.

    The domain is handed directly from the leaving chain to the oldest waiter, so
    no newcomer can overtake one that waits. A chain whose wait for its turn would
    never end (the holder waits, directly or through other chains, for the
    waiting chain) is refused with :class:`WouldDeadlockError` instead, and one
    that waits longer than its activity's ``synchronization_timeout`` gives up its
    place with :class:`CallTimeoutError` (``CONTEXT_E_SYNCH_TIMEOUT``).

    Read it through :attr:`Activity.synchronization_domain`: its ``name`` and
    ``owner`` are for looking; entering and leaving belong to the activities.
    """

    __slots__ = ("_depth", "_new_event", "_owner", "_waiters", "name")

    def __init__(self, name: str, new_event: Callable[[], Event]) -> None:
        self.name: str = name
        """The domain's name: that of the activity that made it."""
        self._new_event = new_event
        self._owner: object | None = None
        self._depth = 0
        self._waiters: deque[tuple[object, Event]] = deque()

    @property
    def owner(self) -> object | None:
        """The causality inside the domain, if any."""
        return self._owner

    def try_enter(self, causality: object) -> bool:
        """Enter at once if the domain is free or already ``causality``'s."""
        if self._owner is causality:
            self._depth += 1
            return True
        if self._owner is None and not self._waiters:
            self._owner = causality
            self._depth = 1
            return True
        return False

    def reserve(self, causality: object) -> Event | None:
        """Enter at once (``None``), or take a place in line (the event that says "your turn").

        Taking the place synchronously, when a call is started, keeps the domain
        FIFO in submission order whatever order the scheduler runs tasks in.
        """
        if self.try_enter(causality):
            return None
        event = self._new_event()
        self._waiters.append((causality, event))
        return event

    async def wait_turn(
        self, causality: object, ticket: Event | None, host: DomainHost | None = None
    ) -> None:
        """Wait until a place taken with :meth:`reserve` comes up.

        :param host: the activity whose chain waits: its ``synchronization_timeout``
            bounds the wait. By default the current frame's activity, if it is in
            this domain (a service domain's block); else the wait has no bound.
        :raises WouldDeadlockError: if the domain's holder waits, directly or through
            other chains, for ``causality``: the place is given up, and nothing waits
        :raises CallTimeoutError: (``CONTEXT_E_SYNCH_TIMEOUT``) if the turn has not
            come within the timeout: the place is given up, and the next waiter's
            turn comes when the holder leaves
        """
        if ticket is None:
            return
        timeout = None if ticket.is_set() else self._timeout_for(host)
        if causality is None or ticket.is_set():
            waiting = None  # no chain to record, or the turn has come already
        else:
            try:
                check_wait(causality, self)
            except WouldDeadlockError:
                self.abandon(causality, ticket)
                raise
            waiting = causality
            begin_wait(causality, self)
        try:
            if timeout is None:
                await ticket.wait()
            else:
                await _wait_at_most(ticket, timeout)
        except BaseException:
            self.abandon(causality, ticket)
            raise
        finally:
            if waiting is not None:
                end_wait(waiting, self)
        if not ticket.is_set():
            holder = _describe(self._owner, causality)
            self.abandon(causality, ticket)
            raise CallTimeoutError(
                f"waited {timeout} s (synchronization_timeout) to enter synchronization "
                f"domain {self.name!r}, held by {holder}; the waiting work did not run",
                hresult=HResult.CONTEXT_E_SYNCH_TIMEOUT,
            )

    def _timeout_for(self, host: DomainHost | None) -> float | None:
        """How long ``host``'s chain may wait here: its ``synchronization_timeout``."""
        if host is None:
            frame = frame_var.get()
            if frame is None:
                return None
            host = cast("DomainHost", frame.host)
            if host.domain is not self:
                return None
        return host.synchronization_timeout

    def abandon(self, causality: object, ticket: Event | None) -> None:
        """Give up a reservation: leave if it was granted, else step out of line."""
        if ticket is None or ticket.is_set():
            self.leave(causality)
        else:
            self._waiters.remove((causality, ticket))

    async def enter(self, causality: object, host: DomainHost | None = None) -> None:
        """Enter the domain, waiting for other chains to leave (see :meth:`wait_turn`)."""
        await self.wait_turn(causality, self.reserve(causality), host)

    def leave(self, causality: object) -> None:
        """Leave one level; the last level hands the domain to the oldest waiter."""
        if self._owner is not causality:
            raise RuntimeError(f"synchronization domain {self.name!r} left by a non-owner")
        self._depth -= 1
        if self._depth:
            return
        self._owner = None
        if self._waiters:
            owner, event = self._waiters.popleft()
            self._owner = owner
            self._depth = 1
            event.set()

    def __repr__(self) -> str:
        state = "free" if self._owner is None else f"held, {len(self._waiters)} waiting"
        return f"<SynchronizationDomain {self.name!r} {state}>"


SynchronizationDomain.__module__ = "activity"


class _Missing:
    """The type of the marker for "no value set" (``None`` can be a value)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Final = _Missing()


@final
class ActivityLocal(Generic[T]):
    """A value per activity, seen by every call of that activity.

    This is COM+'s *context property*: ``set()`` stores the value in the
    current activity, and every call of that activity, in a task or a worker
    thread, reads it with ``get()``. Two activities never see each other's
    values, however their calls interleave.

    A call carries its submitter's values along: when the call's own activity
    has no value, ``get()`` looks in the activity the call was submitted from
    (so work that a request hands to an application-wide activity still sees
    the request's values). ``set()`` always writes to the current activity.

    ::

        tenant = ActivityLocal[str]("tenant", default="public")

        async with Activity() as act:
            tenant.set("acme")
            await act.synchronous_call(lambda: tenant.get())  # "acme"

    :param name: a name for reprs and error messages
    :param default: what ``get()`` returns when the activity has no value (and
        outside any activity); without it, ``get()`` raises ``LookupError`` then

    .. versionadded:: 0.1
    """

    __slots__ = ("_default", "_name")

    def __init__(self, name: str, *, default: T | _Missing = _MISSING) -> None:
        if not isinstance(cast("object", name), str) or not name:
            from ._errors import InvalidArgumentError

            raise InvalidArgumentError(
                f"ActivityLocal name must be a non-empty str, got {name!r}",
                field="name",
                value=name,
            )
        self._name = name
        self._default = default

    @property
    def name(self) -> str:
        """The name given at creation."""
        return self._name

    def get(self, default: T | _Missing = _MISSING) -> T:
        """Return the current activity's value.

        :param default: returned when there is no value (overrides the local's default)
        :raises LookupError: if there is no value and no default
        """
        frame = frame_var.get()
        if frame is not None:
            # The frame's activity first, then the activities the work came from.
            value = frame.host.locals.get(self, _MISSING)
            origin = frame.origin
            while value is _MISSING and origin is not None:
                value = origin.locals.get(self, _MISSING)
                origin = origin.origin
            if value is not _MISSING:
                return value  # type: ignore[no-any-return]
        if not isinstance(default, _Missing):
            return default
        if not isinstance(self._default, _Missing):
            return self._default
        where = "outside any activity" if frame is None else "in this activity"
        raise LookupError(f"ActivityLocal {self._name!r} has no value {where}")

    def set(self, value: T) -> None:
        """Store ``value`` in the current activity.

        :raises ActivityError: if called outside any activity
        """
        frame = frame_var.get()
        if frame is None:
            raise ActivityError(
                f"ActivityLocal {self._name!r} can only be set inside an activity "
                "(an 'async with Activity()' block or one of its calls)"
            )
        frame.host.locals[self] = value

    def __repr__(self) -> str:
        return f"<ActivityLocal {self._name!r}>"


ActivityLocal.__module__ = "activity"
