"""Per-order processing: one event at a time per order, orders side by side.

Events of many orders arrive interleaved, as they would from a message bus.
Each order is a small state machine (created, paid, shipped, delivered) that
must see its own events one at a time and in arrival order; different orders
may be processed at the same time, up to a limit. A ``KeyedActivity`` keyed
by the order id gives exactly that, with a bounded queue per order, a
bounded number of live orders, and idle orders' activities reclaimed.

Run it with ``python examples/keyed.py``. It prints::

    processed 120 events of 30 orders: 118 applied, 2 refused
    every order saw its events in arrival order: True
    at most one event per order at once: True
    orders side by side, never more than the parent's max_concurrency: True
    order-7: refused 'shipped' after 'created'
    order-19: refused 'delivered' after 'paid'
    hot order: 6 accepted, 4 rejected by its own queue; order-0 still accepted
    order-0's activity was reclaimed when idle and made again: True
    statistics: accepted=128 completed=126 failed=2 rejected=4
"""

from __future__ import annotations

import asyncio

from activity import ActivityConfig, AsyncWorkRejectedError, Call, KeyedActivity

STEPS = ["created", "paid", "shipped", "delivered"]
#: Two orders whose events are out of order: the state machine refuses them.
BROKEN = {
    "order-7": ["created", "shipped", "paid", "shipped"],
    "order-19": ["created", "paid", "delivered", "shipped"],
}


class InvalidTransition(ValueError):
    """An event that does not follow the order's state."""


class Orders:
    """The orders' states, and a record of what ran when."""

    def __init__(self) -> None:
        self.state: dict[str, str] = {}
        self.seen: dict[str, list[str]] = {}
        self.inside: dict[str, int] = {}
        self.overlap = False
        self.side_by_side = 0

    async def apply(self, order: str, event: str) -> str:
        """Apply one event to one order (the work a key's activity runs)."""
        self.inside[order] = self.inside.get(order, 0) + 1
        self.overlap |= self.inside[order] > 1
        self.side_by_side = max(self.side_by_side, sum(1 for n in self.inside.values() if n))
        try:
            self.seen.setdefault(order, []).append(event)
            await asyncio.sleep(0)  # a write to the order's store, say
            before = self.state.get(order)
            expected = STEPS[STEPS.index(before) + 1] if before is not None else "created"
            if event != expected:
                raise InvalidTransition(f"{order}: refused {event!r} after {before!r}")
            self.state[order] = event
            return event
        finally:
            self.inside[order] -= 1


def arrivals() -> list[tuple[str, str]]:
    """30 orders' events, interleaved: every order's first event, then every second..."""
    plans = {f"order-{n}": BROKEN.get(f"order-{n}", STEPS) for n in range(30)}
    return [(order, plan[step]) for step in range(4) for order, plan in plans.items()]


async def main() -> None:
    orders = Orders()
    async with KeyedActivity(
        max_keys=1_000,  # orders with a live activity at once
        idle_timeout=0.05,  # seconds an idle order keeps its activity
        per_key=ActivityConfig(max_pending=5),  # each order's own queue
        max_concurrency=4,  # orders processed side by side (the parent's option)
        name="orders",
    ) as keyed:
        events = arrivals()
        calls: list[Call[str]] = [
            await keyed.asynchronous_call(order, orders.apply, order, event)
            for order, event in events
        ]
        refused: list[str] = []
        for call in calls:
            try:
                await call
            except InvalidTransition as exc:
                refused.append(str(exc))
        applied = len(calls) - len(refused)
        print(
            f"processed {len(calls)} events of 30 orders: {applied} applied, {len(refused)} refused"
        )
        in_order = all(
            orders.seen[order] == [event for o, event in events if o == order]
            for order in orders.seen
        )
        print("every order saw its events in arrival order:", in_order)
        print("at most one event per order at once:", not orders.overlap)
        side_by_side = 1 < orders.side_by_side <= 4
        print("orders side by side, never more than the parent's max_concurrency:", side_by_side)
        for line in refused:
            print(line)

        # A hot order: ten events at once. Its own queue holds five behind the
        # one that runs; the rest are rejected, and other orders go on.
        gate = asyncio.Event()

        async def held() -> None:
            await gate.wait()

        accepted = rejected = 0
        for _ in range(10):
            try:
                keyed.asynchronous_call_nowait("order-hot", held)
                accepted += 1
            except AsyncWorkRejectedError:
                rejected += 1
        other = await keyed.asynchronous_call("order-0", len, "still")
        print(
            f"hot order: {accepted} accepted, {rejected} rejected by its own queue; "
            f"order-0 still {'accepted' if await other == 5 else 'refused'}"
        )
        gate.set()

        # An idle order's activity is closed after idle_timeout, and made again.
        first = keyed.activity_of("order-0")
        for _ in range(1_000):  # the keyed activity's housekeeping retires it
            if keyed.activity_of("order-0") is None:
                break
            await asyncio.sleep(0.01)
        await keyed.synchronous_call("order-0", len, "again")
        again = keyed.activity_of("order-0")
        reclaimed = first is not None and again is not None and again is not first
        print("order-0's activity was reclaimed when idle and made again:", reclaimed)
        stats = keyed.statistics()
    print(
        f"statistics: accepted={stats.accepted} completed={stats.completed} "
        f"failed={stats.failed} rejected={stats.rejected}"
    )


if __name__ == "__main__":
    asyncio.run(main())
