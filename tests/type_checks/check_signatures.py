"""Type tests: mypy and pyright check these ``assert_type`` lines; nothing here runs.

The overloads of ``asynchronous_call`` and ``synchronous_call`` must give a
call's result type for every kind of work they take.
"""

from __future__ import annotations

import concurrent.futures
from typing import assert_type

from activity import Activity, Call, CallStatus, HResult, hresult_of


async def fetch(url: str, retries: int) -> bytes:
    return url.encode() * retries


def parse(text: str) -> int:
    return len(text)


class AsyncWork:
    async def on_call(self) -> float:
        return 1.0


class SyncWork:
    def on_call(self) -> str:
        return "done"


async def check(act: Activity) -> None:
    call = await act.asynchronous_call(fetch, "u", 3)
    assert_type(call, Call[bytes])
    assert_type(await call, bytes)
    assert_type(call.result(), bytes)
    assert_type(call.status, CallStatus)
    assert_type(call.hresult, HResult)
    assert_type(await act.asynchronous_call(parse, "abc"), Call[int])
    assert_type(await act.asynchronous_call(fetch("u", 1)), Call[bytes])
    assert_type(await act.asynchronous_call(AsyncWork()), Call[float])
    assert_type(await act.asynchronous_call(SyncWork()), Call[str])

    assert_type(act.asynchronous_call_nowait(fetch, "u", 3), Call[bytes])
    assert_type(act.asynchronous_call_nowait(parse, "abc"), Call[int])
    assert_type(act.asynchronous_call_nowait(fetch("u", 1)), Call[bytes])
    assert_type(act.asynchronous_call_nowait(AsyncWork()), Call[float])
    assert_type(act.asynchronous_call_nowait(SyncWork()), Call[str])

    assert_type(await act.synchronous_call(fetch, "u", 3), bytes)
    assert_type(await act.synchronous_call(parse, "abc"), int)
    assert_type(await act.synchronous_call(fetch("u", 1)), bytes)
    assert_type(await act.synchronous_call(AsyncWork()), float)
    assert_type(await act.synchronous_call(SyncWork()), str)

    future = act.asynchronous_call_from_thread(parse, "abc")
    assert_type(future, concurrent.futures.Future[int])
    assert_type(act.synchronous_call_from_thread(fetch, "u", 2), bytes)
    assert_type(hresult_of(ValueError()), HResult)
