"""Quickstart: an activity, its calls, and a value every call of it sees.

Shows ``asynchronous_call`` (returns once the work is *accepted*; await the
``Call`` for its result), ``synchronous_call`` (returns the result), an
``ActivityLocal`` set in the block and read inside the calls, and the
activity's ``statistics()``. Run it with ``python examples/quickstart.py``.
"""

import asyncio

from activity import Activity, ActivityLocal

request_id = ActivityLocal[str]("request_id", default="-")


async def fetch(page: int) -> str:
    await asyncio.sleep(0.01 * page)  # an I/O-like wait
    return f"page {page} fetched for {request_id.get()}"


def word_count(text: str) -> int:
    return len(text.split())  # a plain function runs in a worker thread


async def main() -> None:
    async with Activity(name="quickstart", max_concurrency=2, max_pending=10) as act:
        request_id.set("req-42")  # seen by every call of this activity
        calls = [await act.asynchronous_call(fetch, page) for page in (1, 2, 3)]
        # Accepted, not finished: two run at once, the third waits in the queue.
        print("statuses:", ", ".join(call.status.value for call in calls))
        for call in calls:
            print(await call)
        words = await act.synchronous_call(word_count, "to be or not to be")
        print(f"word_count: {words}, hresult of the last fetch: {calls[-1].hresult.name}")
    print("outside the activity, request_id is", repr(request_id.get()))
    stats = act.statistics()
    print(
        f"statistics: accepted={stats.accepted} completed={stats.completed} "
        f"failed={stats.failed} cancelled={stats.cancelled} rejected={stats.rejected}"
    )


if __name__ == "__main__":
    asyncio.run(main())
