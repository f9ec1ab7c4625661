"""A stateful fuzzer over a live activity, on asyncio, uvloop and trio.

Each example runs its own event loop in a thread behind an anyio blocking portal
(the one way to drive asyncio, uvloop and trio from one machine class). One
*host* task on that loop owns the activity's ``async with`` block: every rule
sends it a command and waits for the reply, so a rule that sets an
``ActivityLocal`` "in the block" or enters a nested activity really does it in
the block's task. Work that may wait (``synchronous_call``, ``Overflow.WAIT``
submissions) runs in child tasks spawned from the block (so they carry its
context), and submissions from threads run in real threads.

The rules cover the public operations: both call kinds, bodies that are
coroutine functions, plain blocking functions or objects with ``on_call()``
(with or without ``on_error``), that return, raise, hang until cancelled or
cancel themselves; ``Call.cancel()``, ``Activity.cancel()``, per-call timeouts,
``REJECT`` and ``WAIT`` admission, submissions from threads, nested
activities, ``ActivityLocal`` set in the block and in calls, ``wait_idle()``,
and leaving the block (normally or with an exception) at any point.

After every step the invariants hold: the counters add up; every accepted call
ended at most once (exactly once at the end); each ended call's outcome matches
its body; an ``ActivityLocal`` read in a call comes from the call's own chain of
activities, never from another; the block sees its own activity. After the
activity has closed: every failure nobody observed was raised by the exit (and
nothing else was), the counters equal what the callers saw, no body started
after its activity closed, no task of the activity is left and no thread is
still inside a blocking body.

Profiles (``tests/conftest.py``): the default ``ci`` profile is
*derandomized*, so a CI run tries the same examples every time and a red run
always means a change in the code, never a luckier draw; the ``long`` profile
is random (and keeps its database) to find new failures::

    python -m pytest -m fuzz --hypothesis-profile=long tests/test_fuzz.py
"""

# The machine's state is written by the loop thread, worker threads and the
# rule thread; each field has one writer, or is only read after a join.

from __future__ import annotations

import concurrent.futures
import itertools
import threading
from typing import TYPE_CHECKING, Any, ClassVar

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from activity import (
    Activity,
    ActivityClosedError,
    ActivityError,
    ActivityLocal,
    AsyncWorkRejectedError,
    Call,
    CallCancelledError,
    CallStatus,
    CallTimeoutError,
    FailurePolicy,
    Inheritance,
    Overflow,
    ThreadPool,
    current_activity,
)
from activity.pytest_plugin import assert_balanced

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

# The long profile runs for many minutes: pytest-timeout's per-test limit must follow.
pytestmark = [
    pytest.mark.fuzz,
    pytest.mark.timeout(max(120, settings().max_examples // 2)),
]

# -- known failures being fixed in the core ------------------------------------------------
# Each gate keeps one trigger out of the examples while its fix is pending; set it
# to True once the fix is in, and the rule generates the trigger again.

#: ``Overflow.WAIT`` (or a queued ``synchronous_call``) with two parked submitters:
#: the first is admitted as pending beside a free slot and never started. Only
#: ``wait_idle()`` can see it (the call is cancelled at exit), so while this is
#: False, wait_idle is not checked in an example where a submitter may have parked.
WAIT_ADMISSION_STALL_FIXED = True
#: A ``synchronous_call`` cancelled twice before its caller resumes (two
#: ``Activity.cancel()``, a timeout and a cancel, a cancel and an exception in
#: the block) leaks a raw cancellation into the caller. While False a sync
#: caller may see the raw cancellation when two cancellations may have met.
DOUBLE_CANCEL_FIXED = True
#: A coroutine object accepted as a call and cancelled while pending is never
#: closed ("never awaited" warning). While False, no coroutine-object bodies.
PENDING_COROUTINE_CLOSED = True
#: A body that raises ``StopIteration`` fails alike on every path: with a
#: ``RuntimeError`` caused by it. While False, no body raises StopIteration.
STOPITERATION_FIXED = True
#: A running call's re-entrant ``synchronous_call`` on its own activity is
#: refused with ActivityClosedError during the exit's drain. While False, no
#: body calls back into its own activity.
REENTRANT_DURING_DRAIN_FIXED = True

#: Seconds any wait of the harness may take before it reports a hang instead of hanging.
LIMIT = 30.0
#: Seconds a hanging blocking body waits to be let go, after which it returns HUNG.
HANG_LIMIT = 60.0
HUNG = "hung"

tenant: ActivityLocal[str] = ActivityLocal("tenant", default="-")

BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}

KINDS = ("coroutine", "blocking", "service_async", "service_sync", "nested", "coroutine_object")
BEHAVIOURS = ("return", "raise", "hang", "self_cancel", "stop_iteration", "reentrant")


class BodyError(Exception):
    """What a raising body raises: one instance per call, compared by identity."""


class Bail(Exception):
    """Raised in a block to leave it with an exception."""


# -- the model -------------------------------------------------------------------------------


class Node:
    """One activity of the example, open or closed, and what the model knows of it."""

    def __init__(self, label: str, config: dict[str, Any], parent: Node | None) -> None:
        self.label = label
        self.config = config
        self.parent = parent
        self.children: list[Node] = []
        self.act: Activity | None = None
        self.open = False
        #: Activity.cancel() was called on it or an ancestor (or it was left).
        self.cancelled = False
        self.closed = False
        self.exit_error: BaseException | None = None
        self.bailed: Bail | None = None
        #: Values of `tenant` set in this activity (block or calls), in order.
        self.values: list[str] = []
        self.works: list[Work] = []
        self.handler_seen: list[tuple[Call[Any], BaseException]] = []
        #: Submitters that may be parked in the admission line right now.
        self.parked = 0
        #: A submitter may have parked at some point (see WAIT_ADMISSION_STALL_FIXED).
        self.ever_parked = False
        self.rejected = 0
        #: A rule cancelled it or an ancestor.
        self.cancel_asked = False
        self.inherit = config.get("inheritance") is Inheritance.INHERIT
        self.fail_fast = config.get("failure_policy") is FailurePolicy.FAIL_FAST

    def subtree(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            yield from child.subtree()

    def origin(self) -> Node | None:
        """Where the activity's own frames look for locals it lacks."""
        return self.parent if self.inherit else None

    def failed_fast(self, ancestors: bool = True) -> bool:
        """Whether this fail-fast activity (or one of its ancestors) cancelled itself."""
        node: Node | None = self
        while node is not None:
            if node.fail_fast and any(
                w.asynchronous and w.status is CallStatus.FAILED for w in node.works
            ):
                return True
            node = node.parent if ancestors else None
        return False

    def may_have_failed_fast(self) -> bool:
        """Whether this activity or an ancestor may have cancelled itself unseen by the model.

        It has if one of its asynchronous calls that may fail can end before its
        submitter has hooked the model to the call's end (see ``Work.watched``): a
        body starts as soon as the call is launched, which may be before
        ``asynchronous_call_from_thread`` returns to its thread, or before a parked
        ``Overflow.WAIT`` submitter resumes. Such a call's end is known at exit.
        """
        node: Node | None = self
        while node is not None:
            if node.fail_fast and any(w.may_fail_unseen for w in node.works):
                return True
            node = node.parent
        return False


_work_ids = itertools.count(1)


class Work:
    """One submission: its body's plan, and everything seen of it."""

    def __init__(
        self,
        harness: Harness,
        node: Node,
        how: str,
        kind: str,
        behaviour: str,
        *,
        on_error: bool = False,
        sets_local: bool = False,
        timeout: float | None = None,
        observe: bool = False,
        name: str | None = None,
    ) -> None:
        self.id = next(_work_ids)
        self.harness = harness
        self.node = node
        self.how = how  # "async", "sync", "thread_async", "thread_sync"
        self.kind = kind
        self.behaviour = behaviour
        self.on_error = on_error
        self.sets_local = sets_local
        self.timeout = timeout
        self.observe = observe
        self.name = name
        self.value = self.id * 7
        self.error = BodyError(f"body {self.id}")
        self.stop = StopIteration(self.id)
        self.label = f"{node.label}/w{self.id}"
        # What the model knew at submission, for the ActivityLocal check.
        self.chain: list[Node] = []
        self.chain_had_value: list[bool] = []
        # Runtime records.
        self.call: Call[Any] | None = None
        self.future: concurrent.futures.Future[Any] | None = None
        #: None: not decided yet; True: accepted; False: refused.
        self.accepted: bool | None = None
        self.refusal: BaseException | None = None
        self.status: CallStatus | None = None
        self.result: Any = None
        self.exception: BaseException | None = None
        self.done_count = 0
        self.on_error_seen: list[BaseException] = []
        self.started = 0
        self.seen: list[tuple[Activity | None, str]] = []
        self.observed = False
        self.cancel_source = False
        #: A rule asked for it to be cancelled (known before the loop acts on it).
        self.cancel_asked = False
        self.raw_cancel = False
        self.thread: threading.Thread | None = None
        self.release = threading.Event()
        self.ready = threading.Event()
        self.token: anyio.lowlevel.EventLoopToken | None = None
        #: How a reentrant body's own call ended (None: refused, or never made).
        self.inner: CallStatus | None = None
        #: Counted in the node's parked submitters.
        self.parked = False
        #: The model hears of the call's end when it ends: its done callback is in.
        self.watched = False

    def park(self, may_wait: bool) -> None:
        with self.harness.lock:
            self.parked = True
            self.node.parked += 1
            if may_wait:
                self.node.ever_parked = True

    def unpark(self) -> None:
        with self.harness.lock:
            if self.parked:
                self.parked = False
                self.node.parked -= 1

    @property
    def asynchronous(self) -> bool:
        return self.how in ("async", "thread_async")

    @property
    def ended(self) -> bool:
        return self.status is not None or self.accepted is False

    @property
    def may_fail(self) -> bool:
        """Whether the body may fail (``outcome_problem`` accepts no other failure)."""
        return (
            self.behaviour in ("raise", "stop_iteration", "reentrant")
            or self.timeout is not None
            or self.kind == "nested"
        )

    @property
    def may_fail_unseen(self) -> bool:
        """An asynchronous call that may have failed without the model hearing of it yet."""
        return (
            self.asynchronous and not self.watched and self.accepted is not False and self.may_fail
        )

    def __repr__(self) -> str:
        return (
            f"<Work {self.id} {self.how} {self.kind}/{self.behaviour} in {self.node.label} "
            f"timeout={self.timeout} accepted={self.accepted} status={self.status} "
            f"done={self.done_count} cancel_source={self.cancel_source}>"
        )

    # -- what the body does, wherever it runs --------------------------------------------

    def begin(self) -> None:
        self.started += 1
        self.unpark()
        if self.node.closed:
            self.harness.violations.append(f"{self!r} started after its activity closed")
        self.seen.append((current_activity(), tenant.get()))
        if self.sets_local:
            tenant.set(self.label)
            self.node.values.append(self.label)  # after the set: the model is never ahead

    async def run_async(self) -> Any:
        self.begin()
        behaviour = self.behaviour
        if behaviour == "return":
            await anyio.lowlevel.checkpoint()
            return self.value
        if behaviour == "raise":
            await anyio.lowlevel.checkpoint()
            raise self.error
        if behaviour == "stop_iteration":
            raise self.stop  # PEP 479 makes it a RuntimeError caused by it, as for threads
        if behaviour == "self_cancel":
            # The handle is set once asynchronous_call returns, which may be after
            # the body started (a WAIT submitter resumes after its call was launched).
            while not self.ready.is_set():  # noqa: ASYNC110 - a threading.Event, set by the host
                await anyio.sleep(0.001)
            assert self.call is not None
            self.call.cancel("it cancelled itself")
            await anyio.sleep_forever()
        if behaviour == "reentrant":
            act = current_activity()
            assert act is not None
            try:
                value = await act.synchronous_call(echo, self.value)
            except BaseException as exc:
                self.inner_ended(exc)
                raise
            self.inner_ended(None)
            return value
        await anyio.sleep_forever()  # hang until cancelled
        raise AssertionError("unreachable")

    def run_blocking(self) -> Any:
        harness = self.harness
        with harness.lock:
            harness.in_body += 1
        try:
            self.begin()
            behaviour = self.behaviour
            if behaviour == "return":
                return self.value
            if behaviour == "raise":
                raise self.error
            if behaviour == "stop_iteration":
                raise self.stop
            if behaviour == "reentrant":
                # Back into its own activity from its worker thread, on its own chain.
                act = current_activity()
                assert act is not None
                try:
                    value = act.synchronous_call_from_thread(blocking_echo, self.value)
                except BaseException as exc:
                    self.inner_ended(exc)
                    raise
                self.inner_ended(None)
                return value
            if behaviour == "self_cancel" and self.ready.wait(LIMIT) and self.call is not None:
                # Call.cancel() belongs on the loop: ask it there.
                anyio.from_thread.run_sync(
                    self.call.cancel, "it cancelled itself", token=self.token
                )
            # A thread cannot be cancelled: it waits until the call is seen to end.
            self.release.wait(HANG_LIMIT)
            return HUNG
        finally:
            with harness.lock:
                harness.in_body -= 1

    def inner_ended(self, error: BaseException | None) -> None:
        """Record how the body's own call back into its activity ended (it is counted too)."""
        if error is None:
            self.inner = CallStatus.COMPLETED
        elif isinstance(error, ActivityClosedError):
            self.inner = None  # refused, never accepted
        elif isinstance(error, CallCancelledError | self.harness.cancelled_exc):
            self.inner = CallStatus.CANCELLED
        else:
            self.inner = CallStatus.FAILED

    async def run_nested(self) -> Any:
        """A body that opens an activity of its own and makes a call in it."""
        self.begin()
        outer = current_activity()
        async with Activity(shutdown_timeout=LIMIT) as inner:
            if inner.parent is not outer:
                self.harness.violations.append(f"{self!r}: nested parent {inner.parent!r}")
            seen = await inner.synchronous_call(probe)
        assert_balanced(inner.statistics())
        if seen != (inner, "-"):  # Inheritance.IGNORE: nothing of the outer activity
            self.harness.violations.append(f"{self!r}: a call of a fresh activity saw {seen!r}")
        return self.value

    # -- what the activity tells -----------------------------------------------------------

    def done(self, call: Call[Any]) -> None:
        """The call's done callback (on the loop)."""
        self.done_count += 1
        if self.done_count > 1:
            self.harness.violations.append(f"{self!r} was told it ended {self.done_count} times")
        self.status = call.status
        if call.status is CallStatus.COMPLETED:
            self.result = call.result()
        elif self.observe:
            self.observed = True
            self.exception = call.exception()
        self.release.set()

    def future_done(self, future: concurrent.futures.Future[Any]) -> None:
        """The done callback of a thread's future (asynchronous_call_from_thread)."""
        self.done_count += 1
        if self.done_count > 1:
            self.harness.violations.append(f"{self!r} future ended {self.done_count} times")
        # The base class's exception(): the future's own would observe the failure.
        error = concurrent.futures.Future[Any].exception(future)
        self.outcome_of(error, None if error is not None else future.result())

    def outcome_of(self, error: BaseException | None, value: Any = None) -> None:
        """Record how a caller saw the call end (synchronous calls, futures)."""
        if error is None:
            self.status, self.result = CallStatus.COMPLETED, value
        elif isinstance(error, CallCancelledError):
            self.status, self.exception = CallStatus.CANCELLED, error
        else:
            self.status, self.exception = CallStatus.FAILED, error
        self.release.set()

    def fn_and_args(self) -> tuple[Any, tuple[Any, ...]]:
        kind = self.kind
        if kind == "coroutine":
            return coroutine_body, (self,)
        if kind == "blocking":
            return blocking_body, (self,)
        if kind == "nested":
            return nested_body, (self,)
        if kind == "coroutine_object":
            return self.run_async(), ()
        if kind == "service_async":
            return (AsyncServiceWithOnError if self.on_error else AsyncService)(self), ()
        return (SyncServiceWithOnError if self.on_error else SyncService)(self), ()


async def echo(value: Any) -> Any:
    await anyio.lowlevel.checkpoint()
    return value


def blocking_echo(value: Any) -> Any:
    return value


async def probe() -> tuple[Activity | None, str]:
    return current_activity(), tenant.get()


async def coroutine_body(work: Work) -> Any:
    return await work.run_async()


def blocking_body(work: Work) -> Any:
    return work.run_blocking()


async def nested_body(work: Work) -> Any:
    return await work.run_nested()


class AsyncService:
    """COM+'s IServiceCall with an async ``on_call()``."""

    def __init__(self, work: Work) -> None:
        self.work = work

    async def on_call(self) -> Any:
        return await self.work.run_async()


class AsyncServiceWithOnError(AsyncService):
    def on_error(self, exc: BaseException) -> None:
        self.work.on_error_seen.append(exc)


class SyncService:
    """COM+'s IServiceCall with a plain ``on_call()``, for a worker thread."""

    def __init__(self, work: Work) -> None:
        self.work = work

    def on_call(self) -> Any:
        return self.work.run_blocking()


class SyncServiceWithOnError(SyncService):
    def on_error(self, exc: BaseException) -> None:
        self.work.on_error_seen.append(exc)


# -- the harness: a loop thread and the host task on it ------------------------------------


class Command:
    """One step for the host task: ``run()`` in the block, or a control (enter, leave)."""

    def __init__(self, run: Callable[[], Awaitable[Any]] | None = None, control: str = "") -> None:
        self.run = run
        self.control = control
        self.config: dict[str, Any] = {}
        self.reply: concurrent.futures.Future[Any] = concurrent.futures.Future()


class Harness:
    """The loop (behind a blocking portal), the host task, and the model."""

    def __init__(self, backend: str, config: dict[str, Any]) -> None:
        self.backend = backend
        self.violations: list[str] = []
        self.lock = threading.Lock()
        self.in_body = 0
        self.nodes: list[Node] = []
        self.stack: list[Node] = []
        self.works: list[Work] = []
        self.threads: list[threading.Thread] = []
        self.root_closed = False
        self.stopped = False
        self.tasks_before: set[str] = set()
        self.tg: anyio.abc.TaskGroup | None = None
        name, options = BACKENDS[backend]
        self._portal_cm = anyio.from_thread.start_blocking_portal(name, options)
        self.portal = self._portal_cm.__enter__()
        self._commands: list[Command] = []
        self._wake: anyio.Event | None = None
        self.token = self.portal.call(anyio.lowlevel.current_token)
        #: The loop's own cancellation. Asked on the loop once: a blocking body's thread
        #: runs no event loop, and anyio.get_cancelled_exc_class() raises there.
        self.cancelled_exc: type[BaseException] = self.portal.call(anyio.get_cancelled_exc_class)
        self.host = self.portal.start_task_soon(self._host)
        self.control(Command(control="enter"), config)

    # -- the rule side ------------------------------------------------------------------

    def send(self, command: Command) -> Any:
        self.portal.call(self._push, command)
        try:
            return command.reply.result(LIMIT)
        except concurrent.futures.TimeoutError:
            raise AssertionError(f"the host did not answer within {LIMIT} s: a hang") from None

    def do(self, run: Callable[[], Awaitable[Any]]) -> Any:
        return self.send(Command(run))

    def control(self, command: Command, config: dict[str, Any] | None = None) -> Any:
        command.config = config or {}
        return self.send(command)

    def close(self) -> None:
        """Leave every block still open, then stop the loop."""
        try:
            while self.stack:
                self.control(Command(control="leave"))
        finally:
            if not self.stopped:
                self.stopped = True
                self.portal.call(self._push, Command(control="stop"))
                self.host.result(LIMIT)
                for work in self.works:
                    work.release.set()
                self._portal_cm.__exit__(None, None, None)

    # -- the host side ----------------------------------------------------------------------

    def _push(self, command: Command) -> None:
        self._commands.append(command)
        if self._wake is not None:
            self._wake.set()

    async def _next(self) -> Command:
        while not self._commands:
            self._wake = anyio.Event()
            await self._wake.wait()
        return self._commands.pop(0)

    async def _serve(self) -> Command:
        """Run commands in the current block until a control command arrives."""
        while True:
            command = await self._next()
            if command.control:
                return command
            assert command.run is not None
            try:
                result = await command.run()
            except BaseException as exc:
                command.reply.set_exception(exc)
            else:
                command.reply.set_result(result)

    async def _host(self) -> None:
        self.tasks_before = tasks_now(self.backend)
        command = await self._next()
        async with anyio.create_task_group() as tg:
            self.tg = tg
            await self._level(None, command)
        # The sync callers have ended and the activity is closed.
        self.root_closed = True
        while True:
            command = await self._next()
            if command.control == "stop":
                return
            if command.control:
                command.reply.set_exception(AssertionError("the activity is closed"))
                continue
            assert command.run is not None
            try:
                command.reply.set_result(await command.run())
            except BaseException as exc:
                command.reply.set_exception(exc)

    async def _level(self, parent: Node | None, command: Command) -> None:
        """Enter an activity, serve its block, leave it as the leave command says."""
        label = f"a{len(self.nodes)}"
        config = dict(command.config)
        handler = config.pop("handler", None)
        node = Node(label, dict(command.config), parent)
        if handler == "sync":

            def sync_handler(call: Call[Any], exc: BaseException) -> None:
                node.handler_seen.append((call, exc))

            config["error_handler"] = sync_handler
        elif handler == "async":

            async def async_handler(call: Call[Any], exc: BaseException) -> None:
                await anyio.lowlevel.checkpoint()
                node.handler_seen.append((call, exc))

            config["error_handler"] = async_handler
        self.nodes.append(node)
        if parent is not None:
            parent.children.append(node)
        leave: Command | None = None
        try:
            async with Activity(**config) as act:
                node.act = act
                node.open = True
                self.stack.append(node)
                command.reply.set_result(label)
                while True:
                    leave = await self._serve()
                    if leave.control == "enter":
                        await self._level(node, leave)
                        continue
                    break
                if leave.control == "stop":  # teardown without a leave: leave normally
                    self._push_front(leave)
                self._mark_leaving(node)
                if leave.control == "bail":
                    node.bailed = Bail(label)
                    raise node.bailed
        except BaseException as exc:
            node.exit_error = exc
            if leave is None:
                command.reply.set_exception(exc)
        finally:
            node.open = False
            node.closed = True
            if self.stack and self.stack[-1] is node:
                self.stack.pop()
        if leave is not None and leave.control != "stop":
            leave.reply.set_result(None)

    def _push_front(self, command: Command) -> None:
        self._commands.insert(0, command)

    def _mark_leaving(self, node: Node) -> None:
        """Leaving drains and then cancels: any unfinished call may end cancelled."""
        node.cancelled = True
        for each in node.subtree():
            for work in each.works:
                if not work.ended:
                    work.cancel_source = True


def tasks_now(backend: str) -> set[str]:
    """The tasks of the current loop, by identity (a name each)."""
    if backend == "trio":
        import trio

        found: set[str] = set()

        def walk(task: trio.lowlevel.Task) -> None:
            found.add(f"{task.name}@{id(task):x}")
            for nursery in task.child_nurseries:
                for child in nursery.child_tasks:
                    walk(child)

        walk(trio.lowlevel.current_root_task())  # type: ignore[arg-type]
        return found
    import asyncio

    return {f"{task.get_name()}:{task.get_coro()!r}@{id(task):x}" for task in asyncio.all_tasks()}


# -- what the model expects ---------------------------------------------------------------


def predict(node: Node) -> str:
    """What a submission to ``node`` meets right now.

    One of closed, run, queue, full, unknown (full or closed: rejected, refused
    as closed, or accepted by a parked submitter's leaving), or open_or_closed
    (run or queue, unless a failure the model has not heard of yet made the
    activity fail fast: then refused as closed, and never rejected).

    Read in the same step as the submission, so exact, except when a submitter
    may be parked (their number is known only to the activity), or a call may
    have failed before its submitter hooked the model to it.
    """
    if not node.open or node.cancelled or node.failed_fast(ancestors=False):
        return "closed"
    assert node.act is not None
    stats = node.act.statistics()
    if node.parked or node.failed_fast():
        # A fail-fast ancestor cancels its children, unless they were entered later.
        return "unknown"
    if stats.running + stats.waiting_for_thread < stats.max_concurrency and stats.pending == 0:
        room = "run"
    elif stats.pending < stats.max_pending:
        room = "queue"
    else:
        room = "full"
    if node.may_have_failed_fast():
        return "unknown" if room == "full" else "open_or_closed"
    if room == "full" and any(
        # (a synchronous call from a thread is known accepted only once it returns)
        w.behaviour == "reentrant" and w.accepted is not False and not w.ended
        for w in node.works
    ):
        # A reentrant body's call back runs within its caller's place: the
        # activity counts it as running, but it holds no place of its own, so a
        # full-looking activity may still have room.
        return "unknown"
    return room


def refusal_problem(exc: BaseException, expected: str) -> str | None:
    """Whether a submission that ``predict()`` said meets ``expected`` may be refused so."""
    allowed: dict[str, tuple[type[BaseException], ...]] = {
        "closed": (ActivityClosedError,),
        "full": (AsyncWorkRejectedError,),
        "unknown": (AsyncWorkRejectedError, ActivityClosedError),
        "open_or_closed": (ActivityClosedError,),
    }
    if isinstance(exc, allowed.get(expected, ())):
        return None
    return f"refused with {exc!r}, expected {expected}"


def chain_of(target: Node, submitter: Node | None) -> list[Node]:
    """Where a call of ``target`` submitted from ``submitter``'s block looks for locals."""
    chain = [target]
    origin = None if submitter is None else (target.origin() if submitter is target else submitter)
    while origin is not None:
        chain.append(origin)
        origin = origin.origin()
    return chain


def check_local(where: str, value: str, chain: list[Node], had: list[bool]) -> str | None:
    """Whether ``value`` may be read from ``chain``, whose members had a value or not."""
    first = had.index(True) if True in had else len(chain)
    if value == "-":
        return (
            None
            if first == len(chain)
            else f"{where}: default read though {chain[first].label} had a value"
        )
    owner = value.split("/")[0]
    labels = [node.label for node in chain]
    if owner not in labels:
        return f"{where}: read {value!r} of another activity (chain {labels})"
    if labels.index(owner) > first:
        return f"{where}: read {value!r} past {labels[first]}, which had a value (chain {labels})"
    return None


def outcome_problem(work: Work, final: bool) -> str | None:
    """Whether how ``work`` ended contradicts its body (None: it does not)."""
    status = work.status
    if status is None:
        return None
    behaviour = work.behaviour
    if status is CallStatus.COMPLETED:
        if work.result == HUNG:
            return "a hanging body was never let go"
        if behaviour in ("return", "reentrant") or work.kind == "nested":
            return None if work.result == work.value else f"completed with {work.result!r}"
        return f"completed with {work.result!r}"
    if status is CallStatus.CANCELLED:
        if work.cancel_source or behaviour == "self_cancel" or work.node.failed_fast():
            return None
        if not final and work.node.may_have_failed_fast():
            return None  # a failure the model hears of later (checked again at the exit)
        return "cancelled, but nothing cancelled it"
    exc = work.exception
    if not final and exc is None:
        # Not read yet (reading it would observe it): only the kind of body is checked.
        if behaviour in ("raise", "stop_iteration") or work.timeout is not None:
            return None
        if (work.kind == "nested" or behaviour == "reentrant") and work.cancel_source:
            return None
        return "failed, but its body neither raises nor has a timeout"
    if exc is work.error and behaviour == "raise":
        return None
    if (
        behaviour == "stop_iteration"
        and isinstance(exc, RuntimeError)
        and exc.__cause__ is work.stop
    ):
        return None
    if isinstance(exc, CallTimeoutError) and work.timeout is not None:
        return None
    nests = work.kind == "nested" or behaviour == "reentrant"
    if isinstance(exc, CallCancelledError) and nests and work.cancel_source:
        # Its inner call was cancelled with the outer one, and said so.
        return None
    return f"failed with {exc!r}"


# -- the machine ------------------------------------------------------------------------------

timeouts = st.sampled_from([None, None, None, 0.02, 0.2])
names = st.none() | st.text("abc", min_size=1, max_size=3)


@st.composite
def configs(draw: st.DrawFn, nested: bool = False) -> dict[str, Any]:
    config: dict[str, Any] = {
        "max_concurrency": draw(st.integers(1, 4)),
        "max_pending": draw(st.integers(0, 3)),
        "overflow": draw(st.sampled_from(Overflow)),
        "admission_timeout": draw(st.sampled_from([None, 0.05])),
        "thread_pool": draw(st.sampled_from([ThreadPool.MTA, ThreadPool.STA])),
        "shutdown_timeout": draw(st.sampled_from([0.02, 0.2])),
        "failure_policy": draw(st.sampled_from(FailurePolicy)),
        "handler": draw(st.sampled_from([None, "sync", "async"])),
    }
    if nested:
        config["inheritance"] = draw(st.sampled_from(Inheritance))
    return config


def allowed_behaviours(how: str) -> list[str]:
    behaviours = ["return", "raise", "hang"]
    if how == "async":
        behaviours.append("self_cancel")
    if STOPITERATION_FIXED:
        behaviours.append("stop_iteration")
    if REENTRANT_DURING_DRAIN_FIXED:
        behaviours.append("reentrant")
    return behaviours


@st.composite
def bodies(draw: st.DrawFn, how: str) -> dict[str, Any]:
    kinds = ["coroutine", "blocking", "service_async", "service_sync"]
    if how in ("async", "sync"):
        kinds.append("nested")
        if PENDING_COROUTINE_CLOSED:
            kinds.append("coroutine_object")
    kind = draw(st.sampled_from(kinds))
    behaviour = "return" if kind == "nested" else draw(st.sampled_from(allowed_behaviours(how)))
    return {
        "kind": kind,
        "behaviour": behaviour,
        "on_error": kind.startswith("service") and draw(st.booleans()),
        "sets_local": draw(st.booleans()),
    }


class ActivityMachine(RuleBasedStateMachine):
    """Random programs over one live activity; see the module docstring."""

    backend: ClassVar[str] = "asyncio"

    def __init__(self) -> None:
        super().__init__()
        self.h: Harness | None = None

    @property
    def harness(self) -> Harness:
        assert self.h is not None
        return self.h

    # -- helpers ------------------------------------------------------------------------

    def open_nodes(self) -> list[Node]:
        return [] if self.h is None else list(self.h.stack)

    def pick(self, index: int) -> Node:
        nodes = self.open_nodes()
        return nodes[index % len(nodes)]

    def new_work(self, node: Node, how: str, body: dict[str, Any], **options: Any) -> Work:
        harness = self.harness
        work = Work(
            harness,
            node,
            how,
            body["kind"],
            body["behaviour"],
            on_error=body["on_error"],
            sets_local=body["sets_local"],
            **options,
        )
        work.token = harness.token
        submitter = None if how.startswith("thread") else harness.stack[-1]
        work.chain = chain_of(node, submitter)
        work.chain_had_value = [bool(each.values) for each in work.chain]
        harness.works.append(work)
        node.works.append(work)
        return work

    def has_open(self) -> bool:
        return bool(self.open_nodes())

    # -- rules ------------------------------------------------------------------------------

    @initialize(config=configs())
    def start(self, config: dict[str, Any]) -> None:
        self.h = Harness(self.backend, config)

    @precondition(has_open)
    @rule(
        where=st.integers(0, 3),
        body=bodies("async"),
        timeout=timeouts,
        observe=st.booleans(),
        name=names,
    )
    def asynchronous_call(
        self,
        where: int,
        body: dict[str, Any],
        timeout: float | None,
        observe: bool,
        name: str | None,
    ) -> None:
        node = self.pick(where)
        work = self.new_work(node, "async", body, timeout=timeout, observe=observe, name=name)
        self.harness.do(lambda: self._submit_async(work))

    async def _submit_async(self, work: Work) -> None:
        node = work.node
        act = node.act
        assert act is not None
        expected = predict(node)
        if node.config["overflow"] is Overflow.WAIT and expected in ("full", "unknown"):
            work.park(may_wait=True)
            started = anyio.Event()
            assert self.harness.tg is not None
            self.harness.tg.start_soon(self._submit_async_now, work, expected, started)
            await started.wait()
        else:
            await self._submit_async_now(work, expected, None)

    async def _submit_async_now(
        self, work: Work, expected: str, started: anyio.Event | None
    ) -> None:
        act = work.node.act
        assert act is not None
        fn, args = work.fn_and_args()
        if started is not None:
            started.set()
        try:
            call = await act.asynchronous_call(fn, *args, timeout=work.timeout, name=work.name)
        except (AsyncWorkRejectedError, ActivityClosedError) as exc:
            work.accepted = False
            work.refusal = exc
            if isinstance(exc, AsyncWorkRejectedError):
                work.node.rejected += 1
            # Parked, it may be rejected after admission_timeout, or refused at close.
            problem = refusal_problem(exc, "unknown" if started is not None else expected)
            if problem:
                work.harness.violations.append(f"{work!r}: {problem}")
        else:
            work.accepted = True
            work.call = call
            if expected in ("closed", "full") and started is None:
                raise AssertionError(f"{work!r} accepted, expected {expected}")
            if work.name is not None and call.name != work.name:
                raise AssertionError(f"{work!r} named {call.name!r}")
            call.add_done_callback(work.done)
            work.watched = True
            work.ready.set()
        finally:
            work.unpark()

    @precondition(has_open)
    @rule(where=st.integers(0, 3), body=bodies("sync"), timeout=timeouts)
    def synchronous_call(self, where: int, body: dict[str, Any], timeout: float | None) -> None:
        node = self.pick(where)
        work = self.new_work(node, "sync", body, timeout=timeout)
        self.harness.do(lambda: self._start_sync(work))

    async def _start_sync(self, work: Work) -> None:
        started = anyio.Event()
        assert self.harness.tg is not None
        self.harness.tg.start_soon(self._sync_caller, work, started)
        # The caller has passed admission (accepted, queued or parked) when this is set.
        await started.wait()

    async def _sync_caller(self, work: Work, started: anyio.Event) -> None:
        act = work.node.act
        assert act is not None
        expected = predict(work.node)
        if expected in ("full", "unknown"):
            work.park(may_wait=True)
        fn, args = work.fn_and_args()
        started.set()
        error: BaseException | None = None
        value: Any = None
        try:
            value = await act.synchronous_call(fn, *args, timeout=work.timeout)
        except anyio.get_cancelled_exc_class() as exc:
            # The host is never cancelled: this cancellation is the activity's own.
            work.raw_cancel = True
            error = exc
            if DOUBLE_CANCEL_FIXED:
                self.harness.violations.append(f"{work!r}: a raw cancellation reached the caller")
        except BaseException as exc:
            error = exc
        finally:
            work.unpark()
        if isinstance(error, ActivityClosedError):
            work.accepted = False
            work.refusal = error
            if expected not in ("closed", "unknown", "full", "open_or_closed"):
                self.harness.violations.append(f"{work!r} refused as closed, expected {expected}")
        else:
            work.accepted = True
            if expected == "closed":
                self.harness.violations.append(f"{work!r} accepted by a closed activity")
            if work.raw_cancel:
                work.status = CallStatus.CANCELLED
                work.release.set()
            else:
                work.outcome_of(error, value)

    @precondition(has_open)
    @rule(
        where=st.integers(0, 3), body=bodies("thread_async"), timeout=timeouts, wait=st.booleans()
    )
    def asynchronous_call_from_thread(
        self, where: int, body: dict[str, Any], timeout: float | None, wait: bool
    ) -> None:
        node = self.pick(where)
        work = self.new_work(node, "thread_async", body, timeout=timeout)
        self._thread(work, wait)

    @precondition(has_open)
    @rule(where=st.integers(0, 3), body=bodies("thread_sync"), timeout=timeouts)
    def synchronous_call_from_thread(
        self, where: int, body: dict[str, Any], timeout: float | None
    ) -> None:
        node = self.pick(where)
        work = self.new_work(node, "thread_sync", body, timeout=timeout)
        self._thread(work, False)

    def _thread(self, work: Work, wait: bool) -> None:
        harness = self.harness
        stats = harness.do(lambda: self._stats(work.node))
        full = (
            stats is not None
            and stats.running + stats.waiting_for_thread + stats.pending + work.node.parked
            >= stats.max_concurrency
        )
        work.park(may_wait=full)
        decided = threading.Event()
        act = work.node.act
        assert act is not None

        def submit() -> None:
            fn, args = work.fn_and_args()
            try:
                if work.how == "thread_async":
                    try:
                        future = act.asynchronous_call_from_thread(fn, *args, timeout=work.timeout)
                    except (AsyncWorkRejectedError, ActivityClosedError) as exc:
                        work.accepted = False
                        work.refusal = exc
                        if isinstance(exc, AsyncWorkRejectedError):
                            with harness.lock:
                                work.node.rejected += 1
                    else:
                        work.future = future
                        work.accepted = True
                        future.add_done_callback(work.future_done)
                        work.watched = True
                    return
                try:
                    value = act.synchronous_call_from_thread(fn, *args, timeout=work.timeout)
                except ActivityClosedError as exc:
                    work.accepted = False
                    work.refusal = exc
                except BaseException as exc:
                    work.accepted = True
                    work.outcome_of(exc)
                else:
                    work.accepted = True
                    work.outcome_of(None, value)
            except BaseException as exc:
                harness.violations.append(f"{work!r}: the submitting thread got {exc!r}")
            finally:
                work.unpark()
                decided.set()

        thread = threading.Thread(target=submit, name=f"fuzz-submitter-{work.id}")
        work.thread = thread
        harness.threads.append(thread)
        thread.start()
        if wait and work.how == "thread_async" and work.node.config["overflow"] is Overflow.REJECT:
            assert decided.wait(LIMIT), f"{work!r}: the submission was not decided in {LIMIT} s"

    async def _stats(self, node: Node) -> Any:
        return None if node.act is None or not node.open else node.act.statistics()

    # Preconditions read only what the rules did, never what the loop did meanwhile:
    # Hypothesis needs the same draws to enable the same rules.
    def has_calls(self) -> bool:
        return self.h is not None and any(w.how == "async" for w in self.h.works)

    @precondition(has_calls)
    @rule(index=st.integers(0, 1000))
    def cancel_call(self, index: int) -> None:
        works = [w for w in self.harness.works if w.how == "async"]
        work = works[index % len(works)]
        work.cancel_asked = True
        self.harness.do(lambda: self._cancel_call(work))

    async def _cancel_call(self, work: Work) -> None:
        call = work.call
        if call is None:  # refused, or still parked
            return
        was = call.status
        finished = was in (CallStatus.COMPLETED, CallStatus.FAILED, CallStatus.CANCELLED)
        if not finished:
            work.cancel_source = True
        answer = call.cancel("fuzz")
        if answer is finished:
            raise AssertionError(f"cancel() of a {was.value} call said {answer}")
        if was is CallStatus.PENDING and call.status is not CallStatus.CANCELLED:
            raise AssertionError(f"a pending call is {call.status.value} after cancel()")
        if work.done_count != (1 if call.done() else 0):
            raise AssertionError(f"{work!r}: done callback count does not match done()")

    @precondition(has_open)
    @rule(where=st.integers(0, 3))
    def cancel_activity(self, where: int) -> None:
        node = self.pick(where)
        self._ask_cancel(node)
        self.harness.do(lambda: self._cancel_activity(node))

    def _ask_cancel(self, node: Node) -> None:
        for each in node.subtree():
            each.cancel_asked = True
            for work in each.works:
                work.cancel_asked = True

    async def _cancel_activity(self, node: Node) -> None:
        for each in node.subtree():
            if each.open:
                each.cancelled = True
            for work in each.works:
                if not work.ended:
                    work.cancel_source = True
        assert node.act is not None
        node.act.cancel("fuzz")
        # Every synchronous caller of the cancelled activities resumes, promptly.
        sync = [w for each in node.subtree() for w in each.works if w.how == "sync"]
        with anyio.move_on_after(LIMIT):
            while any(not w.ended for w in sync):  # noqa: ASYNC110 - many callers, no one event
                await anyio.sleep(0.001)
        stuck = [w for w in sync if not w.ended]
        if stuck:
            raise AssertionError(f"synchronous callers still waiting after cancel(): {stuck}")

    @precondition(has_open)
    @rule(value=st.integers(0, 99))
    def set_local_in_block(self, value: int) -> None:
        node = self.harness.stack[-1]
        self.harness.do(lambda: self._set_local(node, f"{node.label}/b{value}"))

    async def _set_local(self, node: Node, label: str) -> None:
        tenant.set(label)
        node.values.append(label)

    @precondition(has_open)
    @rule()
    def read_local_in_block(self) -> None:
        node = self.harness.stack[-1]
        self.harness.do(lambda: self._read_local(node))

    async def _read_local(self, node: Node) -> None:
        chain = [node]
        while (origin := chain[-1].origin()) is not None:
            chain.append(origin)
        value = tenant.get()
        problem = check_local(
            f"the block of {node.label}", value, chain, [bool(n.values) for n in chain]
        )
        if problem:
            raise AssertionError(problem)

    @precondition(lambda self: 0 < len(self.open_nodes()) < 3)
    @rule(config=configs(nested=True))
    def enter_nested(self, config: dict[str, Any]) -> None:
        self.harness.control(Command(control="enter"), config)

    @precondition(has_open)
    @rule(bail=st.booleans())
    def leave(self, bail: bool) -> None:
        self.harness.control(Command(control="bail" if bail else "leave"))

    def _may_wait_idle(self) -> bool:
        nodes = self.open_nodes()
        if not nodes:
            return False
        node = nodes[-1]
        return not any(
            w.behaviour == "hang" and w.timeout is None and not w.cancel_asked for w in node.works
        )

    @precondition(_may_wait_idle)
    @rule()
    def wait_idle(self) -> None:
        node = self.harness.stack[-1]
        self.harness.do(lambda: self._wait_idle(node))

    async def _wait_idle(self, node: Node) -> None:
        act = node.act
        assert act is not None
        if not WAIT_ADMISSION_STALL_FIXED and node.ever_parked:
            return
        with anyio.move_on_after(LIMIT) as scope:
            await act.wait_idle()
        if scope.cancelled_caught:
            raise AssertionError(f"wait_idle() did not return in {LIMIT} s: {act.statistics()!r}")
        stats = act.statistics()
        if node.parked == 0 and (stats.pending or stats.waiting_for_thread or stats.running):
            raise AssertionError(f"idle, yet {stats!r}")

    @precondition(has_calls)
    @rule(index=st.integers(0, 1000))
    def observe(self, index: int) -> None:
        works = [w for w in self.harness.works if w.how == "async"]
        work = works[index % len(works)]
        self.harness.do(lambda: self._observe(work))

    async def _observe(self, work: Work) -> None:
        call = work.call
        if call is None or not call.done():
            return
        if not work.node.closed:  # read after the exit, it was not observed in time
            work.observed = True
        work.exception = call.exception()
        try:
            value = await call
        except BaseException as exc:
            if exc is not work.exception:
                raise AssertionError(
                    f"await raised {exc!r}, exception() gave {work.exception!r}"
                ) from exc
        else:
            if work.exception is not None or value != work.result:
                raise AssertionError(f"await gave {value!r} for {work!r}")

    @precondition(lambda self: self.h is not None)
    @rule()
    def let_time_pass(self) -> None:
        self.harness.do(lambda: anyio.sleep(0.005))

    @precondition(lambda self: self.h is not None and any(n.closed for n in self.h.nodes))
    @rule(index=st.integers(0, 100), from_thread=st.booleans())
    def submit_to_closed(self, index: int, from_thread: bool) -> None:
        closed = [n for n in self.harness.nodes if n.closed and n.act is not None]
        act = closed[index % len(closed)].act
        assert act is not None
        if from_thread:
            for submit in (act.asynchronous_call_from_thread, act.synchronous_call_from_thread):
                with pytest.raises(ActivityClosedError):
                    submit(echo, 1)
        else:
            self.harness.do(lambda: self._submit_to_closed(act))

    async def _submit_to_closed(self, act: Activity) -> None:
        with pytest.raises(ActivityClosedError):
            await act.asynchronous_call(echo, 1)
        with pytest.raises(ActivityClosedError):
            await act.synchronous_call(echo, 1)

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def consistent(self) -> None:
        if self.h is None or self.h.stopped:
            return
        self.harness.do(self._consistent)

    async def _consistent(self) -> None:
        harness = self.harness
        problems = list(harness.violations)
        for node in harness.nodes:
            if node.act is not None:
                assert_balanced(node.act.statistics())
        for work in list(harness.works):
            if work.done_count > 1:
                problems.append(f"{work!r} ended {work.done_count} times")
            if work.call is not None and work.call.done() != (work.done_count == 1):
                problems.append(f"{work!r}: done() is {work.call.done()}")
            problem = outcome_problem(work, final=False)
            if problem:
                problems.append(f"{work!r}: {problem}")
        expected = harness.stack[-1].act if harness.stack else None
        if current_activity() is not expected:
            problems.append(f"the block sees {current_activity()!r}, not {expected!r}")
        if problems:
            raise AssertionError("\n".join(problems))

    def teardown(self) -> None:
        if self.h is None:
            return
        harness = self.h
        try:
            while harness.stack:
                harness.control(Command(control="leave"))
            self._after_close()
        finally:
            harness.close()

    def _after_close(self) -> None:
        harness = self.harness
        for thread in harness.threads:
            thread.join(LIMIT)
            assert not thread.is_alive(), f"{thread.name} still runs after the activity closed"
        for work in harness.works:
            work.release.set()
        deadline = threading.Event()
        for _ in range(int(LIMIT / 0.01)):
            if harness.in_body == 0:
                break
            deadline.wait(0.01)
        assert harness.in_body == 0, f"{harness.in_body} threads still in a blocking body"
        harness.do(self._final)

    async def _final(self) -> None:
        harness = self.harness
        problems = list(harness.violations)
        for work in harness.works:
            if work.call is not None and work.status is not CallStatus.COMPLETED:
                work.exception = work.call.exception()
            if work.future is not None and not work.future.done():
                problems.append(f"{work!r}: its future never ended")
                continue
            if work.accepted is None:
                problems.append(f"{work!r}: never decided")
            elif work.accepted and work.status is None:
                problems.append(f"{work!r}: accepted and never ended")
            elif not work.accepted and work.started:
                problems.append(f"{work!r}: refused, yet its body ran")
            if work.asynchronous and work.accepted and work.done_count != 1:
                problems.append(f"{work!r}: ended {work.done_count} times")
            problem = outcome_problem(work, final=True)
            if problem:
                problems.append(f"{work!r}: {problem}")
            for act_seen, value in work.seen:
                if act_seen is not work.node.act:
                    problems.append(f"{work!r} ran in {act_seen!r}")
                problem = check_local(repr(work), value, work.chain, work.chain_had_value)
                if problem:
                    problems.append(problem)
            failed_async = work.asynchronous and work.status is CallStatus.FAILED
            want = [work.exception] if failed_async and work.on_error else []
            if want and id(want[0]) in cut_short(work.node, "on_error"):
                want = []  # its async on_error was stopped at shutdown_timeout, and said so
            if [id(e) for e in work.on_error_seen] != [id(e) for e in want]:
                problems.append(f"{work!r}: on_error saw {work.on_error_seen!r}")
        for node in harness.nodes:
            problems.extend(self._node_problems(node))
        leftover = tasks_now(self.backend) - harness.tasks_before
        if leftover:
            problems.append(f"tasks left after the activity closed: {sorted(leftover)}")
        if problems:
            raise AssertionError("\n".join(problems))

    def _node_problems(self, node: Node) -> list[str]:
        act = node.act
        if act is None:
            return []
        problems: list[str] = []
        stats = act.statistics()
        works = [w for w in node.works if w.accepted]
        # A reentrant body's call back into the activity is a call of it too.
        ended = [w.status for w in works] + [w.inner for w in works if w.inner is not None]
        expected = {
            "accepted": len(ended),
            "pending": 0,
            "running": 0,
            "completed": ended.count(CallStatus.COMPLETED),
            "failed": ended.count(CallStatus.FAILED),
            "cancelled": ended.count(CallStatus.CANCELLED),
            "rejected": node.rejected,
        }
        actual = {key: getattr(stats, key) for key in expected}
        if actual != expected:
            problems.append(f"{node.label}: counters {actual}, callers saw {expected}")
        handler = node.config.get("handler")
        failed_async = [w for w in works if w.asynchronous and w.status is CallStatus.FAILED]
        stopped = {**cut_short(node, "async_handler"), **cut_short(node, "on_error")}
        if handler is not None:
            # A failure reaches the handler, or, if the handler was stopped at
            # shutdown_timeout before it saw it, the exit.
            handler_stopped = cut_short(node, "async_handler")
            seen = sorted([id(exc) for _, exc in node.handler_seen] + list(handler_stopped))
            if seen != sorted(id(w.exception) for w in failed_async):
                problems.append(f"{node.label}: error_handler saw {node.handler_seen!r}")
        unobserved = [
            w.exception
            for w in failed_async
            if not w.observed and not w.on_error and handler is None
        ]
        failures = {id(w.exception) for w in failed_async}
        got = [
            error
            for error in exit_errors(node)
            # the report of a stopped handler, whose failure is this node's own
            if not (id(error.__cause__) in failures and stopped.get(id(error.__cause__)) is error)
        ]
        want = ([node.bailed] if node.bailed is not None else []) + unobserved
        if sorted(map(id, got)) != sorted(map(id, want)):
            problems.append(f"{node.label}: the exit raised {got!r}, expected {want!r}")
        return problems


def exit_errors(node: Node) -> list[BaseException]:
    """What leaving ``node``'s activity raised, one by one."""
    raised = node.exit_error
    if isinstance(raised, BaseExceptionGroup):
        group: BaseExceptionGroup[BaseException] = raised  # pyright: ignore[reportUnknownVariableType]
        return list(group.exceptions)
    return [] if raised is None else [raised]


def cut_short(node: Node, handler_name: str) -> dict[int, BaseException]:
    """Reports of ``node``'s async handlers stopped at shutdown_timeout, by their failure.

    A handler still running when shutdown_timeout expires is cancelled, and the
    exit raises an ActivityError whose cause is the failure it was handling: that
    failure has then reached the exit instead of the handler.
    """
    return {
        id(error.__cause__): error
        for error in exit_errors(node)
        if isinstance(error, ActivityError)
        and "was cancelled before it finished" in str(error)
        and handler_name in str(error)
        and error.__cause__ is not None
    }


def machine_for(backend: str) -> type[ActivityMachine]:
    return type(f"ActivityMachine_{backend}", (ActivityMachine,), {"backend": backend})


TestFuzzAsyncio = machine_for("asyncio").TestCase
TestFuzzUvloop = machine_for("uvloop").TestCase
TestFuzzTrio = machine_for("trio").TestCase
