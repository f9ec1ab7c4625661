"""A small FastAPI shop: every order is answered at once and shipped in the background.

Run it (from a clone, after ``pip install -e '.[dev]'``)::

    python examples/web_app.py            # a scripted visit to a real server, printed
    python examples/web_app.py --serve    # serve on http://127.0.0.1:8000 until Ctrl-C

then, while it serves::

    curl -X POST 'http://127.0.0.1:8000/orders?item=book' -H 'x-tenant: acme'
    curl http://127.0.0.1:8000/_activity/stats

``POST /orders`` renders the receipt in the request's activity (a blocking
call, in a worker thread: the response waits for it) and hands the shipping
job to the app activity with ``run_in_background`` (the response does not wait
for it). The job sees the tenant and the request id of the order that started
it, however many orders run at once; it is bounded by the shop's admission
(a full shop answers 503 with ``Retry-After``) and drained at shutdown.

The scripted visit starts uvicorn on 127.0.0.1 (an ephemeral port), places
orders with httpx, shuts the server down while jobs still wait for a courier,
and prints::

    receipt order-1 for acme: 1 x book
    receipt order-2 for globex: 1 x lamp
    receipt order-3 for initech: 1 x stapler
    shipped book for acme (order-1)
    shipped lamp for globex (order-2)
    shipped stapler for initech (order-3)
    6 orders at once, no courier on duty: 4 accepted, 2 refused
    refused with 503 CO_E_ASYNC_WORK_REJECTED, Retry-After: 1
    shop: running=2 pending=2 rejected=2
    shut down with jobs waiting: accepted=7 completed=3 cancelled=4 failed=0, none lost
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from collections import Counter
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated

import httpx
import uvicorn
from fastapi import FastAPI, Header

from activity import Activity, ActivityLocal
from activity.integrations.fastapi import (
    ActivityMiddleware,
    RequestActivity,
    current_app_activity,
    current_request_id,
    run_in_background,
)

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

tenant = ActivityLocal[str]("tenant", default="public")
#: Set while couriers are on duty; shipping jobs wait for one.
couriers_on_duty = asyncio.Event()
shipments: list[str] = []


def render_receipt(item: str) -> str:
    """Blocking work the response waits for: it runs in a worker thread of the request."""
    return f"receipt {current_request_id()} for {tenant.get()}: 1 x {item}"


async def ship(item: str) -> None:
    """Background work: it runs in the app activity, after the response was sent."""
    await couriers_on_duty.wait()
    await asyncio.sleep(0.1)  # the drive
    shipments.append(f"shipped {item} for {tenant.get()} ({current_request_id()})")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncGenerator[None]:
    # The lifespan runs in the app activity; keep it at hand for the visit below.
    app.state.shop = current_app_activity()
    yield


app = FastAPI(title="shop", lifespan=lifespan)
app.add_middleware(
    ActivityMiddleware,
    app_options={"name": "shop", "max_concurrency": 2, "max_pending": 2, "shutdown_timeout": 1},
    statistics_path="/_activity/stats",
)


@app.post("/orders")
async def order(
    item: str,
    request_activity: RequestActivity,
    x_tenant: Annotated[str, Header()] = "public",
) -> dict[str, str]:
    tenant.set(x_tenant)  # seen by every call of this request, and by its shipping job
    receipt = await request_activity.synchronous_call(render_receipt, item)  # before the response
    await run_in_background(ship, item, name=f"ship {item}")  # after it; 503 when the shop is full
    return {"receipt": receipt}


async def visit() -> None:
    """Start the shop on a real server, order, fill it up, and shut it down."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, http="h11"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        couriers_on_duty.set()
        orders = [("acme", "book"), ("globex", "lamp"), ("initech", "stapler")]
        for number, (who, item) in enumerate(orders, start=1):
            response = await client.post(
                "/orders",
                params={"item": item},
                headers={"x-tenant": who, "x-request-id": f"order-{number}"},
            )
            print(response.json()["receipt"])
        shop: Activity = app.state.shop
        await shop.wait_idle()  # every shipping job has ended
        for line in sorted(shipments):
            print(line)

        couriers_on_duty.clear()
        responses = await asyncio.gather(
            *(client.post("/orders", params={"item": f"crate-{n}"}) for n in range(6))
        )
        statuses = Counter(response.status_code for response in responses)
        refused = next(r for r in responses if r.status_code == 503)
        print(
            f"6 orders at once, no courier on duty: {statuses[200]} accepted, "
            f"{statuses[503]} refused"
        )
        print(
            f"refused with {refused.status_code} {refused.json()['hresult_name']}, "
            f"Retry-After: {refused.headers['retry-after']}"
        )
        stats = (await client.get("/_activity/stats")).json()["app"]
        print(
            f"{stats['name']}: running={stats['running']} pending={stats['pending']} "
            f"rejected={stats['rejected']}"
        )
    server.should_exit = True  # the drain waits shutdown_timeout, then cancels
    await serving
    final = shop.statistics()
    print(
        f"shut down with jobs waiting: accepted={final.accepted} completed={final.completed} "
        f"cancelled={final.cancelled} failed={final.failed}, none lost"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="A small FastAPI shop.")
    parser.add_argument("--serve", action="store_true", help="serve until Ctrl-C")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    if args.serve:
        couriers_on_duty.set()
        uvicorn.run(app, host="127.0.0.1", port=args.port)
    else:
        asyncio.run(visit())


if __name__ == "__main__":
    main()
