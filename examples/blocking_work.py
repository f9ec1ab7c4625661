"""Blocking work: plain functions run in the activity's own worker threads.

A plain callable (not a coroutine function) given to an activity runs in a
worker thread, so it cannot block the event loop. At most ``thread_limit`` of
them run at once, whatever the activity's ``max_concurrency``. Inside the
thread, ``current_activity()`` is the activity and ``ActivityLocal`` values
set in the block are seen as in a coroutine. Run it with
``python examples/blocking_work.py``.
"""

import asyncio
import hashlib
import threading
import time

from activity import Activity, ActivityLocal, current_activity

tenant = ActivityLocal[str]("tenant")
lock = threading.Lock()
running = peak = 0
threads: set[str] = set()


def checksum(chunk: int) -> str:
    global running, peak
    with lock:
        running += 1
        peak = max(peak, running)
        threads.add(threading.current_thread().name)
    time.sleep(0.05)  # blocking I/O: fine here, it is not the loop's thread
    digest = hashlib.sha256(chunk.to_bytes(4, "big") * 1024).hexdigest()
    with lock:
        running -= 1
    act = current_activity()  # the activity that accepted the call, in its thread too
    assert act is not None
    return f"chunk {chunk}: {digest[:12]} for {tenant.get()} in {act.name}"


async def main() -> None:
    async with Activity(name="hashing", thread_limit=2) as act:
        tenant.set("acme")
        calls = [await act.asynchronous_call(checksum, chunk) for chunk in range(6)]
        for call in calls:
            print(await call)
        on_loop_thread = await act.synchronous_call(
            lambda: threading.current_thread() is threading.main_thread()
        )
        print(f"ran on the event loop's thread: {on_loop_thread}")
        print(f"{len(calls)} calls on {len(threads)} worker threads, at most {peak} at once")


if __name__ == "__main__":
    asyncio.run(main())
