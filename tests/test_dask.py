"""The Dask backend against a real cluster: a LocalCluster of two worker processes.

One cluster serves the whole file (a module-scoped fixture, torn down with the
file, so that its connections and threads never show in another file's leak
checks): its scheduler runs in this process, its workers in two processes of
their own, on 127.0.0.1. The scheduler is told to give up on a task at the
first worker that dies with it (``allowed-failures`` 0), so that a worker
killed during a call fails the call at once, as the documentation says. The
functions below travel by value (``cloudpickle.register_pickle_by_value``):
the workers need not import this file.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from typing import TYPE_CHECKING, Any, cast

import anyio
import pytest

distributed = pytest.importorskip("distributed")

import cloudpickle  # type: ignore[import-untyped]  # noqa: E402  # pyright: ignore[reportMissingTypeStubs]
import dask.config  # noqa: E402
import httpx  # noqa: E402

from activity import (  # noqa: E402
    Activity,
    ActivityLocal,
    AsyncWorkRejectedError,
    Call,
    CallStatus,
    CallTimeoutError,
    HResult,
    InvalidArgumentError,
    LocalScope,
)
from activity.dask import (  # noqa: E402
    CLIENT_CANTMARSHAL,
    CLIENT_CANTUNMARSHAL,
    SERVER_CANTMARSHAL,
    SERVER_CANTUNMARSHAL,
    DaskExecutor,
    RemoteSerializationError,
    SchedulerUnreachableError,
    WorkerLostError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

cast("Any", cloudpickle).register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

#: The Dask client drives its calls from asyncio (and uvloop) only.
DASK_BACKENDS = [
    pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
]

tenant = ActivityLocal[str]("tenant", default="public")
region = ActivityLocal[str]("region", default="nowhere")


@pytest.fixture(params=DASK_BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> object:
    return request.param


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """Two worker processes on 127.0.0.1; a task dies with the first worker it kills."""
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        local = distributed.LocalCluster(
            host="127.0.0.1",
            n_workers=2,
            threads_per_worker=2,
            processes=True,
            dashboard_address=":0",
        )
    with local:
        yield local


@pytest.fixture(scope="module")
def session_client(cluster: Any) -> Iterator[Any]:
    with distributed.Client(cluster) as client:
        yield client


@pytest.fixture
def client(session_client: Any) -> Any:
    """The session's client, with both workers up (a test may have killed one)."""
    session_client.wait_for_workers(2, timeout=30)
    return session_client


def tasks_on_scheduler(client: Any, suffix: str) -> int:
    """How many tasks the scheduler holds whose key ends with ``suffix``."""

    def count(dask_scheduler: Any) -> int:
        return sum(1 for key in dask_scheduler.tasks if str(key).endswith(suffix))

    return cast("int", client.run_on_scheduler(count))


async def wait_tasks(client: Any, call: Call[Any], present: bool) -> None:
    """Wait (up to 20 s) until the scheduler holds the call's task, or has forgotten it."""
    suffix = f"-{call.id}"  # a task's key ends with its call's id
    with anyio.fail_after(20):
        # The scheduler's state is another process's to change: it is polled.
        while bool(await anyio.to_thread.run_sync(tasks_on_scheduler, client, suffix)) != present:  # noqa: ASYNC110
            await anyio.sleep(0.05)


def executing_on_workers(client: Any) -> int:
    def count(dask_worker: Any) -> int:
        return len(dask_worker.state.executing)

    return sum(cast("dict[str, int]", client.run(count)).values())


async def wait_workers_idle(client: Any) -> None:
    """Wait (up to 20 s) until no worker runs a task: a cancelled body has stopped."""
    with anyio.fail_after(20):
        while await anyio.to_thread.run_sync(executing_on_workers, client):  # noqa: ASYNC110
            await anyio.sleep(0.05)


# -- the bodies (they run on the workers) -----------------------------------------------


def double(x: int) -> tuple[int, int, bool]:
    on_worker = distributed.get_worker() is not None
    return x * 2, os.getpid(), on_worker


async def double_async(x: int) -> tuple[int, int, bool]:
    await asyncio.sleep(0)
    on_worker_loop = distributed.get_worker().loop.asyncio_loop is asyncio.get_running_loop()
    return x * 2, os.getpid(), on_worker_loop


class Overdrawn(Exception):
    def __init__(self, account: str, amount: int) -> None:
        super().__init__(account, amount)
        self.account = account
        self.amount = amount


def withdraw(account: str, amount: int) -> int:
    raise Overdrawn(account, amount)


async def withdraw_async(account: str, amount: int) -> int:
    await asyncio.sleep(0)
    raise Overdrawn(account, amount)


def read_locals() -> tuple[str, str]:
    value = tenant.get()
    tenant.set("changed on the worker")  # stays there
    return value, region.get()


async def read_locals_async() -> tuple[str, str]:
    return tenant.get(), region.get()


async def sleep_long() -> None:
    await asyncio.sleep(60)


async def nap(seconds: float) -> tuple[float, float]:
    start = time.time()
    await asyncio.sleep(seconds)
    return start, time.time()


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def make_lock() -> object:
    return threading.Lock()


def _explode_on_worker() -> object:
    try:
        distributed.get_worker()
    except ValueError:
        return "fine here"
    raise RuntimeError("this object cannot be unpickled on a worker")


def _explode_here() -> object:
    try:
        distributed.get_worker()
    except ValueError:
        raise RuntimeError("this object cannot be unpickled off a worker") from None
    return "fine on a worker"


class NoWorkerUnpickling:
    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return _explode_on_worker, ()


class NoLocalUnpickling:
    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return _explode_here, ()


def identity(value: object) -> object:
    return value


def make_unpicklable_here() -> object:
    return NoLocalUnpickling()


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """How many of the intervals overlap at most, at any instant."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    peak = current = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak


# -- results, exceptions, locals --------------------------------------------------------


async def test_results_come_back_unchanged(client: Any) -> None:
    async with Activity(executor=DaskExecutor(client), name="remote") as act:
        value, pid, on_worker = await act.synchronous_call(double, 21)
        assert (value, on_worker) == (42, True)
        assert pid != os.getpid()
        call = await act.asynchronous_call(double_async, 4)
        assert type(call) is Call
        assert call.name.startswith("double_async#")
        value, pid, on_worker_loop = await call
        assert (value, on_worker_loop) == (8, True)
        assert pid != os.getpid()
        assert call.hresult == HResult.S_OK
    stats = act.statistics()
    assert (stats.accepted, stats.completed, stats.failed) == (2, 2, 0)


async def test_exceptions_come_back_unchanged(client: Any) -> None:
    async with Activity(executor=DaskExecutor(client)) as act:
        plain: Call[int] = await act.asynchronous_call(withdraw, "acme", 10)
        coroutine: Call[int] = await act.asynchronous_call(withdraw_async, "globex", 20)
        await plain.wait()
        await coroutine.wait()
        for call, (account, amount) in ((plain, ("acme", 10)), (coroutine, ("globex", 20))):
            error = call.exception()
            assert type(error) is Overdrawn
            assert (error.account, error.amount) == (account, amount)
            assert error.args == (account, amount)
            assert call.status is CallStatus.FAILED
            assert call.hresult == HResult.E_FAIL
        with pytest.raises(Overdrawn):
            await act.synchronous_call(withdraw, "initech", 1)
    assert act.statistics().failed == 3


async def test_locals_travel_as_a_snapshot(client: Any) -> None:
    async with Activity(executor=DaskExecutor(client)) as act:
        tenant.set("acme")
        region.set("eu-west")
        assert await act.synchronous_call(read_locals) == ("acme", "eu-west")
        # What the worker set stayed there.
        assert tenant.get() == "acme"
        call = await act.asynchronous_call(read_locals_async)
        tenant.set("globex")  # after submission: the call carries what it saw then
        assert await call == ("acme", "eu-west")
        assert await act.synchronous_call(read_locals_async) == ("globex", "eu-west")


async def test_a_call_carries_its_submitters_values(client: Any) -> None:
    app = await Activity(
        executor=DaskExecutor(client), local_scope=LocalScope.CALL, parent=None
    ).open()
    try:
        async with Activity(name="request") as request:
            tenant.set("initech")
            assert await app.synchronous_call(read_locals_async) == ("initech", "nowhere")
        assert request.statistics().completed == 0
    finally:
        await app.aclose()


async def test_an_unpicklable_local_refuses_the_call(client: Any) -> None:
    async with Activity(executor=DaskExecutor(client)) as act:
        tenant.set(cast("str", threading.Lock()))
        with pytest.raises(InvalidArgumentError, match="ActivityLocal 'tenant'") as caught:
            await act.asynchronous_call(double, 1)
        assert caught.value.field == "ActivityLocal"
        with pytest.raises(InvalidArgumentError):
            act.asynchronous_call_nowait(double, 1)
        with pytest.raises(InvalidArgumentError):
            await act.synchronous_call(double, 1)
        stats = act.statistics()
        assert (stats.accepted, stats.running, stats.pending, stats.rejected) == (0, 0, 0, 0)


async def test_a_coroutine_object_is_refused(client: Any) -> None:
    async with Activity(executor=DaskExecutor(client)) as act:
        with pytest.raises(InvalidArgumentError, match="coroutine object"):
            await act.asynchronous_call(double_async(1))
        assert act.statistics().accepted == 0


# -- (de)serialization -------------------------------------------------------------------


async def test_serialization_failures_have_their_codes(client: Any) -> None:
    async with Activity(executor=DaskExecutor(client)) as act:
        cases: list[tuple[Callable[..., object], tuple[object, ...], HResult]] = [
            (identity, (threading.Lock(),), CLIENT_CANTMARSHAL),
            (identity, (NoWorkerUnpickling(),), SERVER_CANTUNMARSHAL),
            (make_lock, (), SERVER_CANTMARSHAL),
            (make_unpicklable_here, (), CLIENT_CANTUNMARSHAL),
        ]
        for fn, args, code in cases:
            call: Call[object] = await act.asynchronous_call(fn, *args)
            await call.wait()
            error = call.exception()
            assert isinstance(error, RemoteSerializationError), (fn, error)
            assert call.hresult == code
            assert error.hresult == code
        # The activity goes on.
        assert (await act.synchronous_call(double, 2))[0] == 4
    stats = act.statistics()
    assert (stats.accepted, stats.failed, stats.completed) == (5, 4, 1)


# -- the cluster failing -----------------------------------------------------------------


async def test_a_worker_killed_during_a_call_fails_that_call(client: Any) -> None:
    async with Activity(executor=DaskExecutor(client), max_concurrency=4) as act:
        others = [await act.asynchronous_call(nap, 0.2) for _ in range(2)]
        doomed = await act.asynchronous_call(die)
        await doomed.wait()
        assert doomed.status is CallStatus.FAILED
        assert isinstance(doomed.exception(), WorkerLostError)
        assert doomed.hresult == 0x80010007  # RPC_E_SERVER_DIED
        for call in others:
            await call.wait()
        # A call that ran on the dead worker beside it died with it, and is told so.
        lost = [call for call in others if call.status is CallStatus.FAILED]
        assert all(isinstance(call.exception(), WorkerLostError) for call in lost)
        after = await act.asynchronous_call(double, 5)
        assert (await after)[0] == 10
    stats = act.statistics()
    assert stats.accepted == 4
    assert stats.failed == 1 + len(lost)
    assert stats.completed == 3 - len(lost)
    assert (stats.running, stats.pending, stats.cancelled) == (0, 0, 0)


async def test_a_closed_client_fails_the_call(cluster: Any) -> None:
    closed = await anyio.to_thread.run_sync(distributed.Client, cluster)
    executor = DaskExecutor(closed)
    await anyio.to_thread.run_sync(closed.close)
    async with Activity(executor=executor) as act:
        call = await act.asynchronous_call(double, 1)
        await call.wait()
        assert isinstance(call.exception(), SchedulerUnreachableError)
        assert call.hresult == 0x800706BA  # HRESULT_FROM_WIN32(RPC_S_SERVER_UNAVAILABLE)
    assert act.statistics().failed == 1


async def test_a_scheduler_gone_during_a_call_fails_it(client: Any) -> None:
    small = await anyio.to_thread.run_sync(
        lambda: distributed.LocalCluster(n_workers=1, processes=False, dashboard_address=":0")
    )
    try:
        own = await anyio.to_thread.run_sync(distributed.Client, small)
        try:
            async with Activity(executor=DaskExecutor(own), shutdown_timeout=30) as act:
                call = await act.asynchronous_call(sleep_long)
                await wait_tasks(own, call, present=True)
                await anyio.to_thread.run_sync(small.close)
                with anyio.fail_after(40):
                    await call.wait()
                assert call.status is CallStatus.FAILED
                assert isinstance(call.exception(), SchedulerUnreachableError)
        finally:
            await anyio.to_thread.run_sync(own.close)
    finally:
        await anyio.to_thread.run_sync(small.close)


# -- admission, cancel, timeout, shutdown -----------------------------------------------


async def test_max_concurrency_and_max_pending_hold(client: Any) -> None:
    async with Activity(executor=DaskExecutor(client), max_concurrency=2, max_pending=4) as act:
        calls = [await act.asynchronous_call(nap, 0.3) for _ in range(6)]
        with pytest.raises(AsyncWorkRejectedError):
            await act.asynchronous_call(nap, 0.3)
        stats = act.statistics()
        assert (stats.running, stats.pending, stats.rejected) == (2, 4, 1)
        intervals = [await call for call in calls]
    assert max_overlap(intervals) <= 2
    assert act.statistics().completed == 6


async def test_cancel_cancels_the_dask_future(client: Any) -> None:
    async with Activity(executor=DaskExecutor(client)) as act:
        call = await act.asynchronous_call(sleep_long)
        await wait_tasks(client, call, present=True)
        assert call.cancel("enough")
        await call.wait()
        assert call.status is CallStatus.CANCELLED
        await wait_tasks(client, call, present=False)
        await wait_workers_idle(client)  # the coroutine on the worker was stopped too
    assert act.statistics().cancelled == 1


async def test_a_timeout_fails_the_call_and_cancels_the_future(client: Any) -> None:
    async with Activity(executor=DaskExecutor(client), timeout=0.5) as act:
        call = await act.asynchronous_call(sleep_long)
        await call.wait()
        assert isinstance(call.exception(), CallTimeoutError)
        assert call.hresult == HResult.E_TIMEOUT
        await wait_tasks(client, call, present=False)
        await wait_workers_idle(client)
    assert act.statistics().failed == 1


async def test_shutdown_drains_then_cancels_remote_work(client: Any) -> None:
    async with Activity(executor=DaskExecutor(client), shutdown_timeout=2.0) as act:
        quick = await act.asynchronous_call(nap, 0.1)
        slow = await act.asynchronous_call(sleep_long)
        await wait_tasks(client, slow, present=True)
    assert quick.status is CallStatus.COMPLETED
    assert slow.status is CallStatus.CANCELLED
    stats = act.statistics()
    assert (stats.completed, stats.cancelled, stats.running) == (1, 1, 0)
    await wait_tasks(client, slow, present=False)
    await wait_workers_idle(client)


def test_trio_is_refused(client: Any) -> None:
    async def main() -> None:
        async with Activity(executor=DaskExecutor(client)):
            pass

    with pytest.raises(InvalidArgumentError, match="trio"):
        anyio.run(main, backend="trio")


def test_an_executor_must_be_a_dask_executor() -> None:
    with pytest.raises(InvalidArgumentError, match="executor"):
        Activity(executor=object())
    with pytest.raises(InvalidArgumentError, match=r"distributed\.Client"):
        DaskExecutor(object())


# -- a partition shared by two processes ------------------------------------------------

APP = """
import asyncio
import os
import sys
import time

import cloudpickle
from distributed import Client
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.routing import Route

from activity.dask import DaskExecutor
from activity.integrations.starlette import current_app_activity

cloudpickle.register_pickle_by_value(sys.modules[__name__])
client = Client(os.environ["DASK_SCHEDULER"])


async def nap(seconds):
    start = time.time()
    await asyncio.sleep(seconds)
    return start, time.time()


async def work(request):
    start, end = await current_app_activity().synchronous_call(nap, 0.3)
    return JSONResponse({"start": start, "end": end, "pid": os.getpid()})


async def ready(request):
    return JSONResponse({"pid": os.getpid()})


app = Starlette(
    routes=[Route("/work", work, methods=["POST"]), Route("/ready", ready)],
    middleware=[
        Middleware(
            ActivityMiddleware,
            app_options={
                "executor": DaskExecutor(client),
                "partition": "shared",
                "max_concurrency": 2,
                "max_pending": 100,
            },
        )
    ],
)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return cast("int", sock.getsockname()[1])


# The servers run their own loops: one run of the test is enough.
@pytest.mark.parametrize("anyio_backend", [DASK_BACKENDS[0]])
async def test_two_processes_share_a_partition(cluster: Any, tmp_path: Path) -> None:
    (tmp_path / "shared_app.py").write_text(
        textwrap.dedent(APP).replace(
            "from activity.integrations.starlette import current_app_activity",
            "from activity.integrations.starlette import ActivityMiddleware, current_app_activity",
        )
    )
    env = {**os.environ, "DASK_SCHEDULER": cluster.scheduler_address}
    ports = [_free_port(), _free_port()]
    servers = [
        await anyio.open_process(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "shared_app:app",
                "--app-dir",
                str(tmp_path),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            with anyio.fail_after(40):
                for port in ports:
                    while True:
                        try:
                            await http.get(f"http://127.0.0.1:{port}/ready")
                            break
                        except httpx.TransportError:
                            await anyio.sleep(0.1)
            answers: list[dict[str, Any]] = []

            async def post(port: int) -> None:
                response = await http.post(f"http://127.0.0.1:{port}/work")
                assert response.status_code == 200, response.text
                answers.append(response.json())

            async with anyio.create_task_group() as group:
                for i in range(8):
                    group.start_soon(post, ports[i % 2])
        assert len(answers) == 8
        assert len({answer["pid"] for answer in answers}) == 2
        # Each process alone could run 2 at once: together they never ran more than 2.
        assert max_overlap([(a["start"], a["end"]) for a in answers]) <= 2
    finally:
        for server in servers:
            server.send_signal(signal.SIGINT)
        with anyio.move_on_after(15, shield=True):
            for server in servers:
                await server.wait()
        for server in servers:
            if server.returncode is None:
                server.kill()
            await server.aclose()
