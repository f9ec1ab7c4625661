# pyright: reportPossiblyUnboundVariable=false
from __future__ import annotations

import pytest

from activity import (
    Activity,
    ActivityStatistics,
    AsyncWorkRejectedError,
    CallStatus,
    InvalidArgumentError,
    tracking,
)

pytestmark = pytest.mark.anyio


async def noop() -> None:
    pass


class TestActivityStatistics:
    async def test_snapshot_is_frozen_and_adds_up(self) -> None:
        async with Activity(name="stats", max_concurrency=3, max_pending=9) as act:
            for _ in range(5):
                await act.asynchronous_call(noop)
            snapshot = act.statistics()
            assert isinstance(snapshot, ActivityStatistics)
            assert snapshot.accepted == 5
            assert snapshot.in_flight + snapshot.finished == snapshot.accepted
            assert (snapshot.max_concurrency, snapshot.max_pending) == (3, 9)
            with pytest.raises(Exception, match="frozen"):
                snapshot.accepted = 0  # pyright: ignore[reportAttributeAccessIssue]
        final = act.statistics()
        assert final.completed == 5
        assert snapshot.accepted == 5  # a snapshot, not a view
        data = final.model_dump()
        assert data["name"] == "stats"
        assert ActivityStatistics.model_validate_json(final.model_dump_json()) == final


class TestTracking:
    async def test_live_activities(self) -> None:
        async with Activity(name="live") as act:
            assert act in tracking.live_activities()
        assert act not in tracking.live_activities()

    async def test_events(self) -> None:
        events: list[tuple[tracking.EventKind, str]] = []
        remove = tracking.add_listener(lambda e: events.append((e.kind, e.activity.name)))
        try:
            async with Activity(name="watched", max_concurrency=1, max_pending=0) as act:
                call = await act.asynchronous_call(noop)
                with pytest.raises(AsyncWorkRejectedError):
                    await act.asynchronous_call(noop)
                await call
        finally:
            remove()
        remove()  # removing twice is harmless
        kinds = [kind for kind, name in events if name == "watched"]
        assert kinds == [
            tracking.EventKind.ACTIVITY_OPENED,
            tracking.EventKind.CALL_REJECTED,
            tracking.EventKind.CALL_FINISHED,
            tracking.EventKind.ACTIVITY_CLOSED,
        ]

    async def test_synchronous_calls_are_reported(self) -> None:
        seen: list[tuple[str, CallStatus]] = []

        def listen(event: tracking.TrackingEvent) -> None:
            if event.kind is tracking.EventKind.CALL_FINISHED and event.call is not None:
                seen.append((event.activity.name, event.call.status))

        def plain() -> int:
            return 1

        async def fails() -> None:
            raise ValueError("no")

        remove = tracking.add_listener(listen)
        try:
            async with Activity(name="sync-watched") as act:
                await act.synchronous_call(noop)
                assert await act.synchronous_call(plain) == 1
                with pytest.raises(ValueError, match="no"):
                    await act.synchronous_call(fails)
        finally:
            remove()
        assert [status for name, status in seen if name == "sync-watched"] == [
            CallStatus.COMPLETED,
            CallStatus.COMPLETED,
            CallStatus.FAILED,
        ]

    async def test_failing_listener_is_removed_and_raised_at_exit(self) -> None:
        def broken(event: tracking.TrackingEvent) -> None:
            raise RuntimeError("listener broke")

        remove = tracking.add_listener(broken)
        try:
            with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="listener broke")):
                async with Activity():
                    pass
        finally:
            remove()

    def test_listener_must_be_callable(self) -> None:
        with pytest.raises(InvalidArgumentError):
            tracking.add_listener(42)  # type: ignore[arg-type]
