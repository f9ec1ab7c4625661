"""Error handling: every failure of an activity's calls reaches someone.

Shows the ways a failure is observed: awaiting the ``Call`` (the call's own
exception, and ``call.hresult``), the activity's ``error_handler``, an object's
``on_error()``; a call refused with ``AsyncWorkRejectedError`` when the queue
is full; a per-call ``timeout`` (``CallTimeoutError``, also a ``TimeoutError``);
and the ``ExceptionGroup`` raised when the block exits with a failure nobody
observed.
Run it with ``python examples/error_handling.py``.
"""

import asyncio
from typing import Any

from activity import Activity, AsyncWorkRejectedError, Call, hresult_of


async def parse(record: str) -> int:
    return int(record)


async def wait(seconds: float) -> None:
    await asyncio.sleep(seconds)


class Upload:
    """COM+'s IServiceCall (on_call) and IAsyncErrorNotify (on_error) in one object."""

    async def on_call(self) -> None:
        raise PermissionError("no write access to the bucket")

    def on_error(self, exc: BaseException) -> None:
        print(f"on_error: {type(exc).__name__}: {exc}")


def report(call: Call[Any], exc: BaseException) -> None:
    print(f"error_handler: {call.name} failed with {hresult_of(exc).name}")


async def main() -> None:
    async with Activity(name="errors", max_concurrency=1, max_pending=0) as act:
        call = await act.asynchronous_call(parse, "forty-two")
        try:
            await call
        except ValueError as exc:  # the call's own exception, unchanged
            print(f"awaited: {type(exc).__name__}, hresult {call.hresult.name}")
        await act.asynchronous_call(wait, 0.05)  # takes the only place to run...
        try:
            await act.asynchronous_call(wait, 0.05)  # ...so this one is refused at once
        except AsyncWorkRejectedError as exc:
            print(f"rejected: {exc.hresult.name}")
    async with Activity(name="handled", error_handler=report) as act:
        await act.asynchronous_call(parse, "x", name="parse-x")
        await act.asynchronous_call(Upload(), name="upload")
        slow = await act.asynchronous_call(wait, 10.0, name="slow", timeout=0.05)
        try:
            await slow
        except TimeoutError as exc:  # CallTimeoutError is a TimeoutError too
            print(f"timed out: {type(exc).__name__}, hresult {slow.hresult.name}")
    try:
        async with Activity(name="careless") as act:
            await act.asynchronous_call(parse, "oops")  # accepted, then never observed
    except ExceptionGroup as group:
        for error in group.exceptions:
            print(f"raised at exit: {type(error).__name__}: {error}")


if __name__ == "__main__":
    asyncio.run(main())
