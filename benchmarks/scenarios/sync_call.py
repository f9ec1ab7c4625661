"""synchronous_call: trivial coroutine calls, one after another.

The latency that running a step *inside* the activity adds to one awaited
call, next to awaiting it under a semaphore. The floor (a reference row) runs
the bare await in a copy of the context of its own: what the context rule
of docs/design.md costs by itself.
"""

from __future__ import annotations

import asyncio
import time
from contextvars import copy_context
from typing import TYPE_CHECKING, Any

from activity import Activity
from activity._backends._common import drive_in_context
from benchmarks.harness import (
    LIMIT,
    CoroutineFunction,
    Group,
    Loop,
    Pattern,
    Sizes,
    trio_yield_once,
    yield_once,
)

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

__all__ = ["activity_sync_call", "bare_sync_call", "groups", "isolated_sync_call"]


async def activity_sync_call(calls: int) -> float:
    start = time.perf_counter()
    async with Activity(max_concurrency=LIMIT) as act:
        for _ in range(calls):
            await act.synchronous_call(yield_once)
    return time.perf_counter() - start


async def bare_sync_call(calls: int) -> float:
    semaphore = asyncio.Semaphore(LIMIT)
    start = time.perf_counter()
    for _ in range(calls):
        async with semaphore:
            await yield_once()
    return time.perf_counter() - start


async def _isolated_awaits(
    calls: int, semaphore: AbstractAsyncContextManager[Any], body: CoroutineFunction
) -> float:
    """The bare await, in a copy of the context of its own: what isolation alone costs.

    A coroutine awaited in its caller's task sees its own context only if each
    of its steps runs in it; this is the least that the context rule of docs/design.md
    (every call in a copy of its submitter's context) costs, with none of the
    activity's bookkeeping.
    """
    start = time.perf_counter()
    for _ in range(calls):
        async with semaphore:
            await drive_in_context(body(), copy_context())
    return time.perf_counter() - start


async def isolated_sync_call(calls: int) -> float:
    """:func:`_isolated_awaits` under an ``asyncio.Semaphore``."""
    return await _isolated_awaits(calls, asyncio.Semaphore(LIMIT), yield_once)


async def _trio_activity_sync_call(calls: int) -> float:
    body = trio_yield_once()
    start = time.perf_counter()
    async with Activity(max_concurrency=LIMIT) as act:
        for _ in range(calls):
            await act.synchronous_call(body)
    return time.perf_counter() - start


async def _trio_bare_sync_call(calls: int) -> float:
    import trio

    body = trio_yield_once()
    semaphore = trio.Semaphore(LIMIT)
    start = time.perf_counter()
    for _ in range(calls):
        async with semaphore:
            await body()
    return time.perf_counter() - start


async def _trio_isolated_sync_call(calls: int) -> float:
    """:func:`_isolated_awaits` under a ``trio.Semaphore``."""
    import trio

    return await _isolated_awaits(calls, trio.Semaphore(LIMIT), trio_yield_once())


def groups(loop: Loop, sizes: Sizes) -> list[Group]:
    """The rows of this scenario on ``loop``, at ``sizes``."""
    trio = loop == "trio"
    patterns: tuple[Pattern, ...]
    n = sizes.sync_call
    if trio:
        patterns = (
            Pattern("activity synchronous_call", loop, "activity", n, _trio_activity_sync_call),
            Pattern("bare await under a trio.Semaphore", loop, "baseline", n, _trio_bare_sync_call),
            Pattern(
                "bare await in its own context copy, under a trio.Semaphore",
                loop,
                "reference",
                n,
                _trio_isolated_sync_call,
            ),
        )
    else:
        patterns = (
            Pattern("activity synchronous_call", loop, "activity", n, activity_sync_call),
            Pattern("bare await under a Semaphore", loop, "baseline", n, bare_sync_call),
            Pattern(
                "bare await in its own context copy, under a Semaphore",
                loop,
                "reference",
                n,
                isolated_sync_call,
            ),
        )
    return [
        Group(
            "sync_call",
            f"synchronous_call: {n:,} trivial coroutine calls, one after another",
            "The latency the activity adds to one awaited call: what a request handler "
            "pays to run a step inside the activity rather than await it directly.",
            loop,
            "us",
            patterns,
        )
    ]
