"""Synchronization domains: one call chain at a time, and re-entry instead of deadlock.

A ``Synchronization.NEW`` activity lets one chain into its domain at a time, so
a read-modify-write that yields to the loop in the middle no longer loses
updates. A chain that already holds the domain re-enters it: ``ledger`` calls
``audit`` in another activity, which calls back into ``ledger``, and it all
finishes. ``service_domain()`` runs a block inside the same kind of domain,
in the current task.
"""

from __future__ import annotations

import asyncio

from activity import Activity, Synchronization, service_domain

balance = {"amount": 0}


async def deposit(amount: int) -> None:
    current = balance["amount"]
    await asyncio.sleep(0)  # another call would slip in here without a domain
    balance["amount"] = current + amount


async def main() -> None:
    async with (
        Activity(name="ledger", synchronization=Synchronization.NEW) as ledger,
        Activity(name="audit", synchronization=Synchronization.NEW) as audit,
    ):
        for _ in range(100):
            await ledger.asynchronous_call(deposit, 1)
        await ledger.wait_idle()
        print(f"balance after 100 concurrent deposits: {balance['amount']}")

        async def check() -> str:
            # audit -> ledger: the chain already holds ledger's domain, so it re-enters.
            await ledger.synchronous_call(deposit, 0)
            return f"audited {balance['amount']}"

        async def close_books() -> str:
            return await audit.synchronous_call(check)  # ledger -> audit

        print(f"ledger -> audit -> ledger: {await ledger.synchronous_call(close_books)}")

    async with service_domain(name="batch", synchronization=Synchronization.NEW) as batch:
        queued = await batch.asynchronous_call(deposit, 10)
        await asyncio.sleep(0)
        print(f"inside the block, the call is admitted ({queued.status.value}) but waits")
    print(f"after the block, it ran: {queued.status.value}, balance {balance['amount']}")


if __name__ == "__main__":
    asyncio.run(main())
