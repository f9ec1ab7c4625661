"""The Dask backend: a call's body runs on a Dask cluster, the call stays here.

An activity with ``executor=DaskExecutor(client)`` keeps everything a call is
locally: admission, counters, the queue, timeouts, cancellation, the failure
policy and the statistics are the core's, and the call runs on the loop's own
dispatcher as a small coroutine, :class:`RemoteBody`. That coroutine sends the
body to the cluster and waits for its Dask future, so a call holds its place
in the activity for as long as its body runs on a worker; cancelling the call
(``Call.cancel()``, its timeout, the activity's shutdown) cancels the future.

What travels (pickled with ``cloudpickle``, once per call): the function, its
arguments, and a snapshot of the ``ActivityLocal`` values the call sees, keyed
by the locals' names, taken when the call is submitted. On the worker
(:func:`run_plain` in one of its threads, :func:`run_coroutine` on its event
loop) ``ActivityLocal.get()`` reads that snapshot; ``set()`` writes to it, and
nothing comes back but the result or the exception. Every way this can go
wrong ends the call with an error of :class:`RemoteError`'s family, each with
an HRESULT of the RPC facility, never a hang:

- :class:`WorkerLostError` (``RPC_E_SERVER_DIED``): the worker running the body
  died, as many times as the scheduler allows (``allowed-failures``), or the
  result was lost with its worker;
- :class:`SchedulerUnreachableError` (``RPC_S_SERVER_UNAVAILABLE``): the client
  is closed or lost its scheduler;
- :class:`RemoteSerializationError`: something could not be pickled or
  unpickled; its code says which side and which way (``RPC_E_CLIENT_CANTMARSHAL_DATA``
  and the three others of that group);
- :class:`RemoteError` (``RPC_E_SERVERFAULT``): any other failure of the cluster.

``distributed`` is imported only when an executor is made or a worker runs a
body: ``import activity`` never imports it.

Partitions: a call of an activity that names a partition holds, while its body
runs, a lease of a ``distributed.Semaphore`` named after the partition, with
``max_concurrency`` leases. Activities in any process of the cluster that
name the partition so share one limit on the bodies running at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import importlib
import threading
import traceback
import uuid
import weakref
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol, cast

import anyio
import anyio.to_thread

from .._context import frame_var
from .._errors import ActivityError, InvalidArgumentError, register_hresult
from .._hresult import HResult, hresult_from_win32

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine


__all__ = [
    "CLIENT_CANTMARSHAL",
    "CLIENT_CANTUNMARSHAL",
    "SERVER_CANTMARSHAL",
    "SERVER_CANTUNMARSHAL",
    "DaskExecutor",
    "RemoteBody",
    "RemoteError",
    "RemoteSerializationError",
    "SchedulerUnreachableError",
    "WorkerLostError",
    "pickler",
    "run_coroutine",
    "run_plain",
]

#: RPC_E_CLIENT_CANTMARSHAL_DATA: the call (function, arguments) could not be pickled here.
CLIENT_CANTMARSHAL: Final = HResult(0x8001000B)
#: RPC_E_CLIENT_CANTUNMARSHAL_DATA: the result or exception could not be unpickled here.
CLIENT_CANTUNMARSHAL: Final = HResult(0x8001000C)
#: RPC_E_SERVER_CANTMARSHAL_DATA: the result or exception could not be pickled on the worker.
SERVER_CANTMARSHAL: Final = HResult(0x8001000D)
#: RPC_E_SERVER_CANTUNMARSHAL_DATA: the call could not be unpickled on the worker.
SERVER_CANTUNMARSHAL: Final = HResult(0x8001000E)


class RemoteError(ActivityError):
    """A call on a Dask cluster failed for a reason of the cluster's, not of its body.

    ``RPC_E_SERVERFAULT`` (``0x80010105``) unless a subclass says otherwise.

    .. versionadded:: 0.3
    """

    default_hresult: ClassVar[HResult] = HResult(0x80010105)


class WorkerLostError(RemoteError):
    """The worker process running the call's body died (or lost its result).

    ``RPC_E_SERVER_DIED`` (``0x80010007``): the body may have run in part. The
    scheduler re-runs a task whose worker died up to its ``allowed-failures``
    times (Dask's ``distributed.scheduler.allowed-failures``) before this is raised.

    .. versionadded:: 0.3
    """

    default_hresult: ClassVar[HResult] = HResult(0x80010007)


class SchedulerUnreachableError(RemoteError):
    """The Dask client is closed, or cannot reach its scheduler.

    ``HRESULT_FROM_WIN32(RPC_S_SERVER_UNAVAILABLE)`` (``0x800706BA``).

    .. versionadded:: 0.3
    """

    default_hresult: ClassVar[HResult] = hresult_from_win32(1722)


class RemoteSerializationError(RemoteError):
    """A call, its result or its exception could not be pickled or unpickled.

    The code says where: ``RPC_E_CLIENT_CANTMARSHAL_DATA`` (``0x8001000B``, the
    call, here: the default), ``RPC_E_SERVER_CANTUNMARSHAL_DATA`` (``0x8001000E``,
    the call, on the worker), ``RPC_E_SERVER_CANTMARSHAL_DATA`` (``0x8001000D``, the
    result or exception, on the worker), ``RPC_E_CLIENT_CANTUNMARSHAL_DATA``
    (``0x8001000C``, the result or exception, here).

    .. versionadded:: 0.3
    """

    default_hresult: ClassVar[HResult] = CLIENT_CANTMARSHAL


for _cls in (RemoteError, WorkerLostError, SchedulerUnreachableError, RemoteSerializationError):
    register_hresult(_cls.default_hresult, _cls)
    _cls.__module__ = "activity.dask"


class _Pickler(Protocol):
    """What is used of ``cloudpickle``, which has no types of its own."""

    def dumps(self, obj: Any, /) -> bytes: ...
    def loads(self, data: bytes, /) -> Any: ...


def pickler() -> _Pickler:
    """``cloudpickle`` (a dependency of ``distributed``), imported on first use."""
    return cast("_Pickler", importlib.import_module("cloudpickle"))


# -- the worker's side ------------------------------------------------------------------

#: What a worker sends back: (tag, data). OK: the pickled result; RAISED: the pickled
#: exception; UNMARSHAL / MARSHAL: why the call or its outcome could not be (un)pickled.
_OK: Final = 0
_RAISED: Final = 1
_UNMARSHAL: Final = 2
_MARSHAL: Final = 3


class _NamedLocals(dict[Any, Any]):
    """The snapshot of a call's ``ActivityLocal`` values on a worker, looked up by name."""

    def get(self, key: Any, default: Any = None, /) -> Any:
        return super().get(getattr(key, "name", key), default)

    def __getitem__(self, key: Any, /) -> Any:
        return super().__getitem__(getattr(key, "name", key))

    def __contains__(self, key: object, /) -> bool:
        return super().__contains__(getattr(key, "name", key))

    def __setitem__(self, key: Any, value: Any, /) -> None:
        super().__setitem__(getattr(key, "name", key), value)


class _RemoteHost:
    """What ``ActivityLocal`` reads on a worker: the snapshot, no activity behind it."""

    __slots__ = ("locals",)

    activity: ClassVar[None] = None
    origin: ClassVar[None] = None

    def __init__(self, values: dict[str, Any]) -> None:
        self.locals = _NamedLocals(values)


class _RemoteFrame:
    """The frame of a body running on a worker: its locals are the call's snapshot."""

    __slots__ = ("host",)

    is_call: ClassVar[bool] = True
    origin: ClassVar[None] = None
    causality: ClassVar[None] = None

    def __init__(self, values: dict[str, Any]) -> None:
        self.host = _RemoteHost(values)


def _unpack(payload: bytes) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    fn, args, pickled = pickler().loads(payload)
    values = {name: pickler().loads(value) for name, value in pickled.items()}
    return fn, args, values


def _pack(tag: int, value: Any) -> tuple[int, Any]:
    """The outcome to send back: pickled here, so that a failure to pickle is ours to report."""
    try:
        return tag, pickler().dumps(value)
    except Exception as exc:
        what = "result" if tag == _OK else f"exception {value!r}"
        detail = "".join(traceback.format_exception_only(exc)).strip()
        return _MARSHAL, f"the {what} could not be pickled on the worker: {detail}"


def run_plain(payload: bytes) -> tuple[int, Any]:
    """Run a plain callable's call on a worker, in one of its threads (a Dask task)."""
    try:
        fn, args, values = _unpack(payload)
    except Exception as exc:
        return _UNMARSHAL, "".join(traceback.format_exception_only(exc)).strip()
    token = frame_var.set(cast("Any", _RemoteFrame(values)))
    try:
        result = fn(*args)
    except Exception as exc:
        return _pack(_RAISED, exc)
    finally:
        frame_var.reset(token)
    return _pack(_OK, result)


#: How often a coroutine body on a worker checks whether its task was cancelled.
CANCEL_POLL_INTERVAL: Final = 0.1


async def run_coroutine(payload: bytes, key: str) -> tuple[int, Any]:
    """Run a coroutine function's call on a worker's event loop (a Dask task ``key``).

    The body runs as a task of its own, which is cancelled once the worker has
    dropped ``key`` (the call was cancelled, here or by the cluster): Dask lets a
    cancelled task run to its end, this body does not.
    """
    try:
        fn, args, values = _unpack(payload)
    except Exception as exc:
        return _UNMARSHAL, "".join(traceback.format_exception_only(exc)).strip()
    token = frame_var.set(cast("Any", _RemoteFrame(values)))
    try:
        body = asyncio.ensure_future(fn(*args))  # in a copy of this context: with the frame
    finally:
        frame_var.reset(token)
    watch = asyncio.ensure_future(_cancel_when_dropped(key, body))
    try:
        result = await body
    except asyncio.CancelledError:
        if not body.cancelled():
            body.cancel()  # the worker is stopping this task itself
            raise
        return _RAISED, None  # dropped: nobody reads this
    except Exception as exc:
        return _pack(_RAISED, exc)
    finally:
        watch.cancel()
    return _pack(_OK, result)


async def _cancel_when_dropped(key: str, body: asyncio.Future[Any]) -> None:
    """Cancel ``body`` once the worker no longer runs task ``key`` (it was cancelled)."""
    from distributed import get_worker

    try:
        state = cast("Any", get_worker()).state
    except ValueError:  # not on a worker: nothing can drop the task
        return
    while not body.done():
        await asyncio.sleep(CANCEL_POLL_INTERVAL)
        task = state.tasks.get(key)
        if task is None or task.state in ("cancelled", "released", "forgotten"):
            body.cancel()
            return


# -- this process's side ----------------------------------------------------------------


class _Client(Protocol):
    """What is used of a ``distributed.Client``."""

    @property
    def status(self) -> str: ...
    @property
    def asynchronous(self) -> bool: ...
    @property
    def scheduler(self) -> Any: ...
    @property
    def loop(self) -> Any: ...
    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any: ...
    def gather(self, futures: Any, *, asynchronous: bool) -> Any: ...
    def cancel(self, futures: Any, *, asynchronous: bool, reason: str) -> Any: ...


class _Lease:
    """A partition's cluster-wide budget: a ``distributed.Semaphore`` of ``max_concurrency``."""

    __slots__ = ("limiter", "semaphore")

    def __init__(self, client: _Client, partition: str, max_leases: int) -> None:
        from distributed import Semaphore

        self.semaphore: Any = cast("Any", Semaphore)(
            max_leases=max_leases,
            name=f"activity-partition-{partition}",
            scheduler_rpc=client.scheduler,
            loop=client.loop,
        )
        #: The threads that wait for leases (the semaphore's client is synchronous).
        self.limiter: anyio.CapacityLimiter = anyio.CapacityLimiter(max_leases)

    async def acquire(self) -> None:
        """Wait for a lease; a cancelled wait gives back a lease it got too late."""
        cancelled = threading.Event()
        semaphore = self.semaphore

        def take() -> bool:
            while not cancelled.is_set():
                if semaphore.acquire(timeout=0.2):
                    if cancelled.is_set():
                        semaphore.release()
                        return False
                    return True
            return False

        try:
            await anyio.to_thread.run_sync(take, limiter=self.limiter, abandon_on_cancel=True)
        except BaseException:
            cancelled.set()
            raise

    async def release(self) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.semaphore.release)


class DaskExecutor:
    """Runs an activity's calls on a Dask cluster: ``Activity(executor=DaskExecutor(client))``.

    The activity admits, queues, times out, cancels and counts its calls as
    always; only their bodies run on the cluster: a coroutine function on a
    worker's event loop, a plain callable in one of a worker's threads. The
    function, its arguments and the ``ActivityLocal`` values the call sees
    travel pickled (see :doc:`the Dask page </dask>`).

    :param client: a ``distributed.Client``, synchronous (the usual one: it may
        serve activities on any loop and thread) or asynchronous (on the
        activity's own loop)
    :raises InvalidArgumentError: if ``client`` is not a ``distributed.Client``

    .. versionadded:: 0.3
    """

    __slots__ = ("_bridges", "_cancelling", "_client", "_leases")

    def __init__(self, client: Any) -> None:
        from distributed import Client

        if not isinstance(client, Client):
            raise InvalidArgumentError(
                f"DaskExecutor needs a distributed.Client, got {client!r}",
                field="client",
                value=client,
            )
        self._client = cast("_Client", client)
        self._leases: dict[tuple[str, int], _Lease] = {}
        #: Per loop of the activities' that use it (a loop that ends drops its own).
        self._bridges: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Bridge] = (
            weakref.WeakKeyDictionary()
        )
        #: Cancellations under way on an asynchronous client (kept from the collector).
        self._cancelling: set[asyncio.Future[Any]] = set()

    @property
    def client(self) -> Any:
        """The ``distributed.Client`` the calls are submitted with."""
        return self._client

    def __repr__(self) -> str:
        return f"<DaskExecutor {self._client!r}>"

    def lease(self, partition: str, max_leases: int) -> _Lease:
        """The cluster-wide budget of ``partition`` (one semaphore per partition and limit)."""
        key = (partition, max_leases)
        lease = self._leases.get(key)
        if lease is None:
            lease = self._leases[key] = _Lease(self._client, partition, max_leases)
        return lease

    async def run(self, body: RemoteBody) -> Any:
        """Run ``body`` on the cluster; return its result, raise its exception."""
        try:
            payload = pickler().dumps((body.fn, body.args, body.values))
        except Exception as exc:
            raise RemoteSerializationError(
                f"call {body.name!r} could not be pickled to travel to the cluster: {exc}"
            ) from exc
        lease = body.lease
        if lease is not None:
            try:
                await lease.acquire()
            except Exception as exc:
                raise SchedulerUnreachableError(
                    f"call {body.name!r} could not take a lease of its partition's budget on "
                    f"the cluster: {exc}"
                ) from exc
        try:
            return await self._submit_and_wait(body, payload)
        finally:
            if lease is not None:
                await lease.release()

    async def _submit_and_wait(self, body: RemoteBody, payload: bytes) -> Any:
        client = self._client
        if client.status not in ("running", "connecting", "newly-created"):
            raise SchedulerUnreachableError(
                f"call {body.name!r} cannot be sent: the Dask client is {client.status}"
            )
        # The function's name first, as Dask names its own tasks: the scheduler groups
        # tasks by it, and learns how long they take. The call's id last.
        key = f"{body.__qualname__}-{uuid.uuid4().hex}-{body.ident}"
        if body.coroutine:
            task: tuple[Any, ...] = (run_coroutine, payload, key)
        else:
            task = (run_plain, payload)
        # Submitted and gathered on the client's own loop (a synchronous client runs
        # one in a thread of its own), in batches: never by blocking this loop.
        loop = asyncio.get_running_loop()
        client_loop = cast("asyncio.AbstractEventLoop", client.loop.asyncio_loop)
        remote = _Remote(client, task, key)
        try:
            if client_loop is loop:
                outcome = await remote.run()
            else:
                outcome = await self._bridge(client_loop, loop).gather(remote.run())
        except BaseException as exc:
            if not isinstance(exc, Exception):
                # This call's own cancellation (its timeout, cancel(), the shutdown).
                remote.cancelled = True
                if remote.future is not None:
                    self._cancel(remote.future, client_loop, loop)
                raise
            if isinstance(exc, _SubmitFailed):
                failure: RemoteError = SchedulerUnreachableError(
                    f"call {body.name!r} could not be submitted to the cluster: {exc.__cause__}"
                )
            else:
                failure = _failure(body, exc)
            # The failure's traceback keeps this frame: not the future, whose task the
            # scheduler would keep for as long as the call is kept.
            del remote
            raise failure from exc
        return _unpack_outcome(body, outcome)

    def _bridge(
        self, client_loop: asyncio.AbstractEventLoop, loop: asyncio.AbstractEventLoop
    ) -> _Bridge:
        bridge = self._bridges.get(loop)
        if bridge is None:
            bridge = self._bridges[loop] = _Bridge(client_loop, loop)
        return bridge

    def _cancel(
        self, future: Any, client_loop: asyncio.AbstractEventLoop, loop: asyncio.AbstractEventLoop
    ) -> None:
        """Cancel ``future`` on the client's loop, without waiting for the scheduler."""
        try:
            cancelling = self._client.cancel([future], asynchronous=True, reason="cancelled")
            if client_loop is loop:
                task = asyncio.ensure_future(cancelling)
                self._cancelling.add(task)
                task.add_done_callback(self._cancelling.discard)
            else:
                asyncio.run_coroutine_threadsafe(cancelling, client_loop)
        except Exception:  # the client went away meanwhile: its futures went with it
            return


class _SubmitFailed(Exception):
    """``client.submit`` raised (its cause): the client cannot take the call."""


class _Remote:
    """One call's task on the cluster, submitted and gathered on the client's loop."""

    __slots__ = ("cancelled", "client", "future", "key", "task")

    def __init__(self, client: _Client, task: tuple[Any, ...], key: str) -> None:
        self.client = client
        self.task = task
        self.key = key
        #: Set (from the activity's loop) once the call is cancelled.
        self.cancelled = False
        self.future: Any = None

    async def run(self) -> Any:
        """On the client's loop: submit the task, and return its outcome once gathered."""
        if self.cancelled:
            raise concurrent.futures.CancelledError("the call was cancelled before it was sent")
        client = self.client
        try:
            future = client.submit(*self.task, pure=False, key=self.key)
        except Exception as exc:
            raise _SubmitFailed from exc
        self.future = future
        if self.cancelled:  # cancelled while it was being sent: the activity may not know
            await client.cancel([future], asynchronous=True, reason="cancelled")
        return await client.gather(future, asynchronous=True)


class _Bridge:
    """Gathers results on the client's loop for calls waiting on another loop, in batches.

    One per (client's loop, activity's loop): each direction wakes the other loop
    once per batch of gatherings started or ended, not once per call.
    """

    __slots__ = ("_client_loop", "_ended", "_lock", "_loop", "_starting", "_waking")

    #: The activity's loop, weakly: the executor keeps its bridges by that loop, weakly.
    _loop: weakref.ref[asyncio.AbstractEventLoop]

    def __init__(self, client_loop: asyncio.AbstractEventLoop, loop: asyncio.AbstractEventLoop):
        self._client_loop = client_loop
        self._loop = weakref.ref(loop)
        self._lock = threading.Lock()
        self._starting: list[tuple[Coroutine[Any, Any, Any], asyncio.Future[Any]]] = []
        self._ended: list[tuple[asyncio.Future[Any], asyncio.Task[Any]]] = []
        #: Whether a batch is on its way to the (client's, activity's) loop.
        self._waking = [False, False]

    async def gather(self, gathering: Coroutine[Any, Any, Any]) -> Any:
        """Run ``gathering`` on the client's loop; what it returns or raises, here.

        Cancelled, the wait leaves the gathering alone: cancelling the Dask future
        ends it, where cancelling it would leave Dask's own tasks unobserved.
        """
        waiter: asyncio.Future[asyncio.Task[Any]] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._starting.append((gathering, waiter))
            wake = not self._waking[0]
            self._waking[0] = True
        if wake:
            try:
                self._client_loop.call_soon_threadsafe(self._start_all)
            except RuntimeError:  # the client's loop has closed
                with self._lock:
                    starting, self._starting = self._starting, []
                    self._waking[0] = False
                for coro, other in starting:
                    coro.close()
                    if not other.done():
                        other.set_exception(
                            concurrent.futures.CancelledError("the Dask client's loop has stopped")
                        )
        task = await waiter
        if task.cancelled():
            raise concurrent.futures.CancelledError("the Dask client's loop stopped")
        return task.result()

    def _start_all(self) -> None:
        """On the client's loop: start the gatherings queued since the last batch."""
        with self._lock:
            starting, self._starting = self._starting, []
            self._waking[0] = False
        for coro, waiter in starting:
            task = self._client_loop.create_task(coro)
            task.add_done_callback(functools.partial(self._ended_one, waiter))

    def _ended_one(self, waiter: asyncio.Future[Any], task: asyncio.Task[Any]) -> None:
        """On the client's loop: hand a finished gathering to the activity's loop."""
        if not task.cancelled():
            task.exception()  # read here: asyncio must not report it as never retrieved
        with self._lock:
            self._ended.append((waiter, task))
            wake = not self._waking[1]
            self._waking[1] = True
        loop = self._loop()
        if wake and loop is not None:
            try:
                loop.call_soon_threadsafe(self._deliver_all)
            except RuntimeError:  # the activity's loop has closed: nobody waits any more
                return

    def _deliver_all(self) -> None:
        """On the activity's loop: wake the calls whose gatherings ended."""
        with self._lock:
            ended, self._ended = self._ended, []
            self._waking[1] = False
        for waiter, task in ended:
            if not waiter.done():  # else the call was cancelled meanwhile
                waiter.set_result(task)


def _unpack_outcome(body: RemoteBody, outcome: tuple[int, Any]) -> Any:
    """The body's result, or its exception raised, from what the worker sent back."""
    tag, data = outcome
    if tag == _UNMARSHAL:
        raise RemoteSerializationError(
            f"call {body.name!r} could not be unpickled on the worker: {data}",
            hresult=SERVER_CANTUNMARSHAL,
        )
    if tag == _MARSHAL:
        raise RemoteSerializationError(f"call {body.name!r}: {data}", hresult=SERVER_CANTMARSHAL)
    try:
        value = pickler().loads(data)
    except Exception as exc:
        what = "result" if tag == _OK else "exception"
        raise RemoteSerializationError(
            f"the {what} of call {body.name!r} could not be unpickled here: {exc}",
            hresult=CLIENT_CANTUNMARSHAL,
        ) from exc
    if tag == _RAISED:
        raise value
    return value


def _failure(body: RemoteBody, error: Exception) -> RemoteError:
    """The error that ends a call whose Dask future did not finish."""
    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker

    name = body.name
    if isinstance(error, KilledWorker):
        return WorkerLostError(f"call {name!r}: the worker running it died ({error})")
    if isinstance(
        error, (CommClosedError, OSError, TimeoutError, concurrent.futures.CancelledError)
    ):
        # Not this call's cancellation, which is a local one: the cluster's.
        return SchedulerUnreachableError(
            f"call {name!r}: the cluster cannot be reached, or dropped the call ({error})"
        )
    return RemoteError(f"call {name!r} failed on the cluster: {error!r}")


class RemoteBody:
    """The body of a call that runs on the cluster: calling it gives the local coroutine.

    Made when the call is submitted, in place of the call's function; it keeps
    the function's ``__qualname__`` so that the call's name is unchanged.
    """

    def __init__(
        self,
        executor: DaskExecutor,
        fn: Any,
        args: tuple[Any, ...],
        coroutine: bool,
        values: dict[str, Any],
        lease: _Lease | None,
    ) -> None:
        self.executor = executor
        self.fn = fn
        self.args = args
        self.coroutine = coroutine
        self.values = values
        self.lease = lease
        qualname = getattr(fn, "__qualname__", None)
        self.__qualname__: str = qualname if isinstance(qualname, str) else type(fn).__qualname__
        #: The call's name and id, for messages and task keys (set once the call is made).
        self.name: str = self.__qualname__
        self.ident: int = 0

    def __call__(self) -> Coroutine[Any, Any, Any]:
        return self.executor.run(self)
