"""A batch on a Dask cluster: the activity admits, counts and cancels, the workers compute.

``Activity(executor=DaskExecutor(client))`` runs each call's body on a Dask
worker: a plain function in one of the worker's threads, a coroutine function
on its event loop. Everything else stays in this process and works as for
local calls: ``max_concurrency`` bounds the calls in flight, a failure is the
call's own, ``cancel()`` cancels the Dask future, and the statistics count
every call. The ``ActivityLocal`` values a call sees travel with it.

This example starts a local cluster of two worker processes (a real one is
a ``Client("tcp://scheduler:8786")`` away) and counts the primes below
200,000 in eight chunks. Run it with ``python examples/cluster.py``
(``pip install -e '.[dask]'``); it prints::

    8 chunks for acme, none computed in this process
    primes below 200000: 17984
    a failed chunk: ValueError: chunk -1 is negative
    a chunk cancelled while it ran: cancelled
    statistics: accepted=10 completed=8 failed=1 cancelled=1 rejected=0
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from typing import TYPE_CHECKING, Any, cast

from distributed import Client, LocalCluster

from activity import Activity, ActivityLocal
from activity.dask import DaskExecutor

if TYPE_CHECKING:
    from collections.abc import Callable

tenant = ActivityLocal[str]("tenant", default="nobody")
LIMIT = 200_000
CHUNKS = 8


def count_primes(chunk: int) -> tuple[int, str, int]:
    """The primes in one slice of [0, LIMIT): CPU-bound, in a worker's thread."""
    if chunk < 0:
        raise ValueError(f"chunk {chunk} is negative")
    size = LIMIT // CHUNKS
    start, stop = chunk * size, (chunk + 1) * size
    found = sum(
        1 for n in range(max(start, 2), stop) if all(n % p for p in range(2, math.isqrt(n) + 1))
    )
    return found, tenant.get(), os.getpid()


async def wait_forever() -> None:
    """A coroutine on a worker's loop that only a cancellation ends."""
    await asyncio.Event().wait()


async def main(client: Client) -> None:
    async with Activity(executor=DaskExecutor(client), max_concurrency=4, name="primes") as act:
        tenant.set("acme")
        calls = [await act.asynchronous_call(count_primes, chunk) for chunk in range(CHUNKS)]
        results = [await call for call in calls]
        tenants = ", ".join(sorted({owner for _, owner, _ in results}))
        elsewhere = all(pid != os.getpid() for _, _, pid in results)
        where = "none computed in this process" if elsewhere else "some computed here"
        print(f"{len(results)} chunks for {tenants}, {where}")
        print(f"primes below {LIMIT}: {sum(found for found, _, _ in results)}")

        failed = await act.asynchronous_call(count_primes, -1)
        await failed.wait()
        error = failed.exception()
        print(f"a failed chunk: {type(error).__name__}: {error}")

        endless = await act.asynchronous_call(wait_forever)
        await asyncio.sleep(0.5)
        endless.cancel()
        await endless.wait()
        print(f"a chunk cancelled while it ran: {endless.status.value}")
    s = act.statistics()
    print(
        f"statistics: accepted={s.accepted} completed={s.completed} failed={s.failed} "
        f"cancelled={s.cancelled} rejected={s.rejected}"
    )


def local_cluster() -> Any:
    """Two worker processes on this machine (``distributed`` is partly typed: one cast)."""
    new_cluster = cast("Callable[..., Any]", LocalCluster)
    return new_cluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",
        silence_logs=logging.ERROR,
    )


if __name__ == "__main__":  # the worker processes import this file too
    with local_cluster() as cluster, cast("Callable[[Any], Client]", Client)(cluster) as client:
        asyncio.run(main(client))
