"""Real servers on 127.0.0.1 with an ephemeral port, started and stopped by the tests.

Each helper listens before the server starts, so a client can connect at once:
the connection waits in the backlog until the server (which finishes its
lifespan startup first) accepts it.
"""

from __future__ import annotations

import asyncio
import socket
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal

import hypercorn.asyncio
import hypercorn.config
import uvicorn
from aiohttp.test_utils import TestServer

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from aiohttp import web

HOST = "127.0.0.1"
BACKLOG = 2048
#: How long a server may take to start or to stop before the test fails.
DEADLINE = 20.0


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((HOST, 0))
    sock.listen(BACKLOG)
    return sock


@asynccontextmanager
async def serve_uvicorn(
    app: Any, *, lifespan: Literal["on", "off"] = "on", stopping: asyncio.Event | None = None
) -> AsyncGenerator[str]:
    """Serve ``app`` with uvicorn; yield its base URL; stop it gracefully on exit.

    :param stopping: set on exit once uvicorn has stopped listening, that is once
        its graceful shutdown (which waits for the requests in flight) has begun
    """
    sock = _listening_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan=lifespan,
        interface="asgi3",
        http="h11",
        ws="wsproto",
        log_config=None,
        access_log=False,
        backlog=BACKLOG,
        timeout_graceful_shutdown=10,
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
        yield f"http://{HOST}:{port}"
    finally:
        server.should_exit = True
        async with asyncio.timeout(DEADLINE):
            if stopping is not None:
                while any(s.is_serving() for s in server.servers):
                    if task.done():
                        break
                    await asyncio.sleep(0.01)
                stopping.set()
            await task
        sock.close()


@asynccontextmanager
async def serve_hypercorn(app: Any) -> AsyncGenerator[str]:
    """Serve ``app`` with hypercorn; yield its base URL; stop it gracefully on exit."""
    sock = _listening_socket()
    port = sock.getsockname()[1]
    config = hypercorn.config.Config()
    # Hypercorn adopts the listening socket, and closes it when it stops.
    config.bind = [f"fd://{sock.detach()}"]
    config.backlog = BACKLOG
    config.accesslog = None
    config.graceful_timeout = 10
    stop = asyncio.Event()
    serving = hypercorn.asyncio.serve(  # pyright: ignore[reportUnknownMemberType]
        app, config, shutdown_trigger=stop.wait, mode="asgi"
    )
    task = asyncio.create_task(serving)
    try:
        yield f"http://{HOST}:{port}"
    finally:
        stop.set()
        async with asyncio.timeout(DEADLINE):
            await task


@asynccontextmanager
async def serve_aiohttp(app: web.Application) -> AsyncGenerator[str]:
    """Serve ``app`` with aiohttp's own test server; yield its base URL; clean up on exit."""
    server = TestServer(app, host=HOST)
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        async with asyncio.timeout(DEADLINE):
            await server.close()
