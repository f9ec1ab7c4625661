"""Nested activities that inherit, and partitions that share one admission budget.

A child activity entered with ``Inheritance.INHERIT`` sees its parent's
``ActivityLocal`` values (its own ``set`` shadows them, never writes through),
and is cancelled with its parent. Activities that name the same ``partition``
share one budget of running and pending places, so a burst from one tenant is
rejected without touching another tenant's partition.
"""

from __future__ import annotations

import asyncio

from activity import Activity, ActivityConfig, ActivityLocal, AsyncWorkRejectedError, Inheritance

region = ActivityLocal[str]("region", default="nowhere")


async def main() -> None:
    async with Activity(name="service") as service:
        region.set("eu-west")
        async with Activity(name="job", inheritance=Inheritance.INHERIT) as job:
            print(f"child {job.name!r} of {service.name!r} sees region {region.get()!r}")
            region.set("eu-north")
            print(f"the child's own value: {await job.synchronous_call(region.get)!r}")
        print(f"the parent kept {region.get()!r}")

    gate = asyncio.Event()
    limits = ActivityConfig(max_concurrency=2, max_pending=1)
    async with (
        Activity(limits, name="acme-1", partition="acme") as acme1,
        Activity(limits, name="acme-2", partition="acme") as acme2,
        Activity(limits, name="globex", partition="globex") as globex,
    ):
        accepted = rejected = 0
        for act in (acme1, acme2, acme1, acme2, acme1):
            try:
                await act.asynchronous_call(gate.wait)
                accepted += 1
            except AsyncWorkRejectedError:
                rejected += 1
        print(f"acme burst: {accepted} accepted, {rejected} rejected (2 running + 1 pending)")
        await globex.asynchronous_call(gate.wait)
        stats = globex.partition_statistics()
        assert stats is not None
        print(f"globex still admits: {stats.running} running of {stats.max_concurrency}")
        gate.set()


if __name__ == "__main__":
    asyncio.run(main())
