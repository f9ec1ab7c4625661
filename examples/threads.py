"""Thread models: an STA thread bound to a sqlite connection, the loop thread, plain threads.

An STA activity runs its blocking calls one at a time on a thread of its own;
``Binding.BIND_TO_POOL_THREAD`` keeps that thread for the activity's whole
life, so a ``sqlite3`` connection made there stays usable (sqlite refuses a
connection used from another thread). ``bind_to_current_thread()`` runs
blocking calls on the event-loop thread itself, and a plain thread submits
work with ``synchronous_call_from_thread()``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading

from activity import Activity, Binding, ThreadPool

db: dict[str, sqlite3.Connection] = {}


def open_db() -> str:
    db["conn"] = sqlite3.connect(":memory:")
    db["conn"].execute("create table orders (qty int)")
    return threading.current_thread().name


def add_order(qty: int) -> None:
    db["conn"].execute("insert into orders values (?)", (qty,))


def total() -> int:
    (value,) = db["conn"].execute("select sum(qty) from orders").fetchone()
    return int(value)


async def main() -> None:
    async with Activity(
        name="orders", thread_pool=ThreadPool.STA, binding=Binding.BIND_TO_POOL_THREAD
    ) as act:
        print(f"connection opened on {await act.synchronous_call(open_db)}")
        calls = [await act.asynchronous_call(add_order, qty) for qty in (3, 4, 5)]
        for call in calls:
            await call
        print(f"total ordered: {await act.synchronous_call(total)}")
        await act.synchronous_call(lambda: db["conn"].close())

    async with Activity(name="loopy") as act:
        act.bind_to_current_thread()
        name = await act.synchronous_call(lambda: threading.current_thread().name)
        print(f"bound to the loop thread: {name == threading.current_thread().name}")
        act.unbind_from_thread()

        def from_a_plain_thread() -> int:
            return act.synchronous_call_from_thread(sum, [1, 2, 3])

        print(f"from a plain thread: {await asyncio.to_thread(from_a_plain_thread)}")


if __name__ == "__main__":
    asyncio.run(main())
