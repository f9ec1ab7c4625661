"""Keyword arguments for the work: refused with a TypeError that shows functools.partial.

The submitting methods keep ``name`` and ``timeout`` for themselves and forward
only positional arguments, as anyio and trio do. A keyword meant for the work
must be refused before anything is accepted, with a message that names the
keyword and the ``functools.partial`` that passes it.
"""

from __future__ import annotations

import functools
from typing import Any

import anyio
import pytest

from activity import Activity

pytestmark = pytest.mark.anyio


def add(a: int, b: int = 0) -> int:
    return a + b


async def add_async(a: int, b: int = 0) -> int:
    return a + b


@pytest.mark.parametrize("method", ["asynchronous_call", "asynchronous_call_nowait"])
@pytest.mark.parametrize("fn", [add, add_async], ids=["blocking", "coroutine"])
async def test_a_keyword_for_the_work_is_refused_and_nothing_is_accepted(
    method: str, fn: Any
) -> None:
    async with Activity(name="kw") as act:
        with pytest.raises(TypeError) as caught:
            getattr(act, method)(fn, 1, b=2)
        message = str(caught.value)
        assert f"{method}()" in message
        assert "'b'" in message
        assert f"functools.partial({fn.__qualname__}, b=...)" in message
        assert act.statistics().accepted == 0
        # The same work with functools.partial runs, and gets the keyword.
        call = await act.asynchronous_call(functools.partial(fn, b=2), 1)
        assert await call == 3


async def test_synchronous_call_names_every_refused_keyword() -> None:
    async with Activity(name="kw") as act:
        with pytest.raises(TypeError) as caught:
            # Type checkers refuse this call too: no overload takes other keywords.
            await act.synchronous_call(add, 1, b=2, c=3)  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue]
        message = str(caught.value)
        assert "synchronous_call() got unexpected keyword arguments 'b', 'c'" in message
        assert "functools.partial(add, b=..., c=...)" in message
        assert act.statistics().accepted == 0
        assert await act.synchronous_call(functools.partial(add, b=2), 1) == 3


async def test_the_thread_twins_refuse_keywords_too() -> None:
    errors: list[str] = []

    def from_thread(act: Activity) -> None:
        for method in ("asynchronous_call_from_thread", "synchronous_call_from_thread"):
            try:
                getattr(act, method)(add, 1, b=2)
            except TypeError as exc:
                errors.append(str(exc))

    async with Activity(name="kw") as act:
        await anyio.to_thread.run_sync(from_thread, act)
        assert act.statistics().accepted == 0
    assert len(errors) == 2
    assert errors[0].startswith("asynchronous_call_from_thread() got unexpected keyword")
    assert errors[1].startswith("synchronous_call_from_thread() got unexpected keyword")
