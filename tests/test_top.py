"""``python -m activity top``: a running application's statistics endpoint, read over HTTP.

The application is a bare ASGI app under :class:`ActivityMiddleware`, served by a
real uvicorn on 127.0.0.1; the command reads its ``statistics_path`` with the
standard library, from a subprocess or (for the live view) in a worker thread, so
that the server keeps answering on the test's loop.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import sys
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import uvicorn
from rich.console import Console

from activity import CallStatus
from activity.__main__ import main
from activity._top import (
    FetchError,
    Snapshot,
    Watcher,
    compute_rates,
    fetch,
    parse_document,
    printable,
    render,
)
from activity.integrations.asgi import (
    ActivityMiddleware,
    Receive,
    Scope,
    Send,
    current_request_activity,
    run_in_background,
)

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from rich.console import RenderableType

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
STATS = "/_activity/stats"
#: Seconds any wait of a test may take before it fails (never a timing assertion).
DEADLINE = 20.0
#: The environment of the subprocesses: no proxy between them and 127.0.0.1.
ENVIRONMENT = {
    key: value for key, value in os.environ.items() if not key.lower().endswith("_proxy")
}


class Shop:
    """A bare ASGI application whose routes run work in the app activity and the request's."""

    def __init__(self) -> None:
        #: Set by the test to let the held work finish.
        self.release = asyncio.Event()
        #: Set once the request held by ``/hold`` is running its call.
        self.holding = asyncio.Event()
        #: Set once the background job started by ``/block`` is running.
        self.blocking = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http", "this application speaks no lifespan"
        path: str = scope["path"]
        status, body, kind = 200, b"done", b"text/plain"
        if path == "/work":
            call = await run_in_background(_work)
            await call.wait()
            assert call.status is CallStatus.COMPLETED
        elif path == "/fail":
            call = await run_in_background(_fail)
            await call.wait()
            assert isinstance(call.exception(), ValueError)
        elif path == "/cancel":
            call = await run_in_background(_forever)
            call.cancel("the test cancels it")
            await call.wait()
            assert call.status is CallStatus.CANCELLED
        elif path == "/block":
            await run_in_background(self._block)
            await self.blocking.wait()
        elif path == "/hold":
            request = current_request_activity()
            assert request is not None
            await request.synchronous_call(self._hold)
        elif path == "/text":
            body = b"hello"
        elif path == "/list":
            body, kind = b"[1, 2, 3]", b"application/json"
        else:
            status, body = 404, b"not found"
        headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _block(self) -> None:
        self.blocking.set()
        await self.release.wait()

    async def _hold(self) -> None:
        self.holding.set()
        await self.release.wait()


async def _work() -> None:
    await asyncio.sleep(0)


async def _fail() -> None:
    await asyncio.sleep(0)
    raise ValueError("the work failed")


async def _forever() -> None:
    await asyncio.Event().wait()


def bound_socket() -> socket.socket:
    """A socket bound to a free port of 127.0.0.1 and not listening: connecting is refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((HOST, 0))
    return sock


@asynccontextmanager
async def serving(app: Any, sock: socket.socket) -> AsyncGenerator[str]:
    """Serve ``app`` with uvicorn on ``sock``; yield its base URL; stop it on exit."""
    sock.listen(128)
    config = uvicorn.Config(
        app, lifespan="on", http="h11", log_config=None, access_log=False, backlog=128
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(DEADLINE):
            while not server.started:
                if task.done():
                    task.result()  # it failed to start: say why
                    raise RuntimeError("uvicorn stopped before it started")
                await asyncio.sleep(0.01)
        yield f"http://{HOST}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        async with asyncio.timeout(DEADLINE):
            await task


@asynccontextmanager
async def shop_server(
    shop: Shop, sock: socket.socket | None = None
) -> AsyncGenerator[tuple[str, httpx.AsyncClient]]:
    """Serve a :class:`Shop` whose app activity runs one call at a time and queues none."""
    app = ActivityMiddleware(
        shop,
        app_options={"name": "shop", "max_concurrency": 1, "max_pending": 0},
        statistics_path=STATS,
    )
    with closing(sock or bound_socket()) as listening:
        try:
            async with (
                serving(app, listening) as url,
                httpx.AsyncClient(base_url=url, timeout=DEADLINE, trust_env=False) as client,
            ):
                yield url, client
        finally:
            shop.release.set()


async def top(*args: str) -> tuple[int, str, str]:
    """Run ``python -m activity top ARGS`` without blocking the loop that serves."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "activity",
        "top",
        *args,
        cwd=ROOT,
        env=ENVIRONMENT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def text_of(renderable: RenderableType, width: int = 220) -> str:
    """What a renderable shows, as plain text, without a terminal."""
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def cells(text: str, name: str) -> list[str]:
    """The words of the table's line that shows the activity ``name``."""
    [line, *_more_figures] = [line for line in text.splitlines() if line.startswith(f"{name} #")]
    return line.split()


class TestAgainstARealServer:
    @pytest.mark.asyncio
    async def test_once_json_reports_what_the_app_did(self) -> None:
        shop = Shop()
        async with shop_server(shop) as (url, client):
            for path, times in (("/work", 3), ("/fail", 2), ("/cancel", 1), ("/block", 1)):
                for _ in range(times):
                    assert (await client.get(path)).status_code == 200
            # One call runs (the blocked job) and none may wait: the next is rejected.
            assert (await client.get("/work")).status_code == 503
            held = asyncio.create_task(client.get("/hold"))
            async with asyncio.timeout(DEADLINE):
                await shop.holding.wait()
            code, out, err = await top(url + STATS, "--once", "--json")
            shop.release.set()
            assert (await held).status_code == 200
        assert (code, err) == (0, "")
        document = json.loads(out)
        assert document["url"] == url + STATS
        app = document["app"]
        assert app["name"] == "shop"
        assert app["accepted"] == 7
        assert (app["completed"], app["failed"], app["cancelled"]) == (3, 2, 1)
        assert (app["running"], app["pending"], app["rejected"]) == (1, 0, 1)
        assert (app["max_concurrency"], app["max_pending"]) == (1, 0)
        [request] = document["children"]
        assert request["name"] == "GET /hold"
        assert (request["accepted"], request["running"]) == (1, 1)
        assert "rates" not in document

    @pytest.mark.asyncio
    async def test_once_prints_the_table(self, capsys: pytest.CaptureFixture[str]) -> None:
        shop = Shop()
        async with shop_server(shop) as (url, client):
            for _ in range(4):
                assert (await client.get("/work")).status_code == 200
            code = await asyncio.to_thread(main, ["top", url + STATS, "--once"])
        assert code == 0
        output = capsys.readouterr().out
        assert url + STATS in output
        row = cells(output, "shop")
        # pending/max_pending, running/max_concurrency, completed 4; no rates from one reading.
        assert row[2] == "0/0"
        assert "0/1" in row
        assert "4" in row
        assert row.count("-") >= 4

    @pytest.mark.asyncio
    async def test_the_live_view_keeps_trying_until_the_server_answers(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        for name in [key for key in os.environ if key.lower().endswith("_proxy")]:
            monkeypatch.delenv(name)
        shop = Shop()
        with closing(bound_socket()) as sock:
            url = f"http://{HOST}:{sock.getsockname()[1]}{STATS}"
            watcher = Watcher(url, interval=1.0, timeout=DEADLINE)
            for attempt in (1, 2):
                down = text_of(await asyncio.to_thread(watcher.poll))
                assert f"cannot read {url}: connection refused" in down
                assert "retrying every 1 s" in down
                assert watcher.failures == attempt
            async with shop_server(shop, sock) as (_, client):
                first = text_of(await asyncio.to_thread(watcher.poll))
                assert "connection refused" not in first
                assert watcher.failures == 0
                for _ in range(5):
                    assert (await client.get("/work")).status_code == 200
                second = text_of(await asyncio.to_thread(watcher.poll))
        assert watcher.previous is not None
        assert watcher.current is not None
        elapsed = watcher.current.taken_at - watcher.previous.taken_at
        [app] = [entry for entry in watcher.current.entries if entry.role == "app"]
        rates = compute_rates(watcher.previous, watcher.current)[app.key]
        assert rates["completed"] * elapsed == pytest.approx(5)
        assert rates["accepted"] * elapsed == pytest.approx(5)
        assert rates["failed"] == rates["rejected"] == 0
        assert cells(first, "shop").count("-") >= 4  # one reading: no rates
        second_row = cells(second, "shop")
        assert "5" in second_row
        assert second_row.count("-") == cells(first, "shop").count("-") - 4
        assert f"{rates['completed']:.1f}" in second_row

    @pytest.mark.asyncio
    async def test_wrong_answers_are_named(self) -> None:
        shop = Shop()
        async with shop_server(shop) as (url, _):
            answers: dict[str, str] = {}
            for path in ("/nowhere", "/text", "/list"):
                with pytest.raises(FetchError) as caught:
                    await asyncio.to_thread(fetch, url + path, DEADLINE)
                assert caught.value.url == url + path
                answers[path] = str(caught.value)
            code, out, err = await top(url + "/nowhere", "--once", "--json")
        assert answers["/nowhere"].startswith(f"cannot read {url}/nowhere: ")
        assert "HTTP 404 Not Found" in answers["/nowhere"]
        assert "statistics_path" in answers["/nowhere"]
        assert "not JSON" in answers["/text"]
        assert "not an activity statistics document" in answers["/list"]
        assert (code, out) == (1, "")
        assert err == f"activity top: {answers['/nowhere']}\n"


class TestWhenTheServerIsDown:
    @pytest.mark.parametrize("extra", [["--once", "--json"], ["--once"]])
    def test_unreachable_exits_1_and_names_the_url(self, extra: list[str]) -> None:
        with closing(bound_socket()) as sock:
            url = f"http://{HOST}:{sock.getsockname()[1]}{STATS}"
            code, out, err = asyncio.run(top(url, *extra))
        assert (code, out) == (1, "")
        assert err.startswith(f"activity top: cannot read {url}: connection refused")
        assert err.count("\n") == 1


class TestRendering:
    @staticmethod
    def snapshot(taken_at: float, app: dict[str, Any], *children: dict[str, Any]) -> Snapshot:
        document = {"app": app, "children": list(children)}
        return parse_document("http://example.test/stats", document, taken_at=taken_at)

    @staticmethod
    def statistics(name: str, id: int, **figures: Any) -> dict[str, Any]:
        base = dict.fromkeys(
            ("accepted", "rejected", "pending", "running", "completed", "failed", "cancelled"), 0
        )
        limits = {"max_concurrency": 8, "max_pending": 100, "partition": None}
        return {"name": name, "id": id, **base, **limits, **figures}

    def test_rates_come_from_two_snapshots(self) -> None:
        before = self.snapshot(
            10.0,
            self.statistics("shop", 1, accepted=100, completed=90, failed=4, rejected=7),
            self.statistics("GET /report", 5, accepted=2, completed=1),
        )
        after = self.snapshot(
            12.0,
            self.statistics(
                "shop", 1, accepted=150, completed=130, failed=10, rejected=27, running=8, pending=2
            ),
            self.statistics("GET /report", 5, accepted=3, completed=3),
            self.statistics("POST /orders", 9, accepted=1, running=1),
        )
        text = text_of(render(after, before))
        rows = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
        # pending, running, completed, failed, cancelled, rejected; accepted/s, completed/s,
        # failed/s, rejected/s.
        counts = ["2/100", "8/8", "130", "10", "0", "27"]
        assert rows["shop"][2:] == [*counts, "25.0", "20.0", "3.0", "10.0"]
        assert rows["GET"][3:] == ["0/100", "0/8", "3", "0", "0", "0", "0.5", "1.0", "0.0", "0.0"]
        # A request that opened since: no rates yet.
        assert rows["POST"][3:] == ["0/100", "1/8", "0", "0", "0", "0", "-", "-", "-", "-"]
        assert "3 open request" not in text
        assert "2 open requests" in text

    def test_a_counter_that_went_down_has_no_rate(self) -> None:
        before = self.snapshot(1.0, self.statistics("shop", 1, completed=50))
        after = self.snapshot(2.0, self.statistics("shop", 1, completed=3, failed=1))
        rates = compute_rates(before, after)[after.entries[0].key]
        assert "completed" not in rates
        assert rates["failed"] == 1.0

    def test_unknown_figures_get_columns_and_missing_ones_a_dash(self) -> None:
        newer = self.statistics(
            "shop",
            1,
            waiting_for_thread=6,
            wait={"p50": 0.0012, "p99": 0.25, "max": None},
            oldest_running_s=2.5,
            labels=["ignored"],
            healthy=True,
        )
        older = {"name": "GET /old", "id": 2, "running": 1}
        text = text_of(render(self.snapshot(1.0, newer, older)))
        lines = text.splitlines()
        headers = [line.split() for line in lines[1:] if line.startswith("activity ")]
        main_header, more_header = headers
        assert main_header[:5] == ["activity", "pend", "waiting", "for", "thread"]
        rates = ["in/s", "ok/s", "fail/s", "rej/s"]
        assert main_header[5:] == ["run", "ok", "fail", "cancel", "rej", *rates]
        more = ["wait.p50", "wait.p99", "wait.max", "oldest", "running", "s"]
        assert more_header == ["activity", *more]
        assert "labels" not in text
        assert "healthy" not in text
        shop_main, shop_more = (line.split() for line in lines if line.startswith("shop #1"))
        assert shop_main[2:4] == ["0/100", "6"]
        assert shop_more[2:] == ["0.0012", "0.25", "-", "2.5", "s"]
        # The older server's entry lacks most figures: dashes, and blanks for the new ones.
        old_main, old_more = (line.split() for line in lines if line.startswith("  GET /old"))
        assert old_main[3:6] == ["-", "-", "1"]
        assert old_more == ["GET", "/old", "#2"]

    def test_names_cannot_drive_the_terminal(self) -> None:
        # A request activity is named after the path the client sent, percent-decoded.
        evil = self.statistics("GET /\x1b[2J\x1b]0;owned\x07", 3)
        snapshot = self.snapshot(1.0, self.statistics("shop", 1), evil)
        text = text_of(render(snapshot))
        assert "\x1b" not in text
        assert "\x07" not in text
        assert "GET /\\x1b[2J\\x1b]0;owned\\x07 #3" in text
        assert printable("GET /café") == "GET /café"

    def test_nothing_read_yet(self) -> None:
        problem = FetchError("http://example.test/stats", "connection refused")
        text = text_of(render(None, problem=problem, interval=2.0, failures=3))
        assert "cannot read http://example.test/stats: connection refused" in text
        assert "retrying every 2 s" in text
        assert "3 failed readings in a row" in text
        assert text_of(render(None)) == "no reading yet\n"


class TestCommandLine:
    @pytest.mark.parametrize(
        "argv",
        [
            ["top"],
            ["top", "https://127.0.0.1/stats"],
            ["top", "file:///etc/passwd"],
            ["top", "127.0.0.1:8000/stats"],
            ["top", "http:///stats"],
            ["top", "http://127.0.0.1:99999/stats"],
            ["top", "http://127.0.0.1:port/stats"],
            ["top", "http://127.0.0.1/stats", "--interval", "0"],
            ["top", "http://127.0.0.1/stats", "--interval", "nan"],
            ["top", "http://127.0.0.1/stats", "--timeout", "-1"],
        ],
    )
    def test_usage_errors(self, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
        assert main(argv) == 2
        assert "usage: activity top" in capsys.readouterr().err

    def test_a_url_that_cannot_be_sent_is_a_reading_that_fails(self) -> None:
        with pytest.raises(FetchError, match="not a URL this client can read"):
            fetch("http://127.0.0.1:9/caf\u00e9 stats", DEADLINE)

    def test_help(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["--help"]) == 0
        assert "top" in capsys.readouterr().out
        assert main(["top", "--help"]) == 0
        output = " ".join(capsys.readouterr().out.split())
        for option in ("--interval", "--timeout", "--once", "--json"):
            assert option in output
        assert "pip install 'activity[cli]'" in output

    def test_without_rich_it_says_how_to_install_it(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        for module in ("rich", "rich.console", "rich.live", "rich.table", "rich.text"):
            monkeypatch.setitem(sys.modules, module, None)
        assert main(["top", "http://127.0.0.1:9/stats"]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert "pip install 'activity[cli]'" in captured.err
