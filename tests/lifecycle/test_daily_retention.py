"""The retention a server runs by itself (``DailyRetention``, wired when
``VITALCAST_RAW_RETENTION_DAYS`` is set): a served app archives and purges expired data at
start-up, computes when its next run is due, and runs again on its schedule (both databases)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.lifecycle.conftest import count
from tests.telemetry.conftest import MINUTE, T0_MS, TelemetryClient, hr, telemetry_client
from vitalcast.clock import ManualClock
from vitalcast.db.tables import health_samples, sessions
from vitalcast.lifecycle.retention import DAY_MS, DailyRetention, RetentionRun, RetentionService
from vitalcast.settings import Settings
from vitalcast.wiring import Seams


async def _until(predicate: Any) -> None:
    """Until ``predicate()`` holds (a bound against hanging, not a measurement)."""
    deadline = time.monotonic() + 30
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def _populate(tc: TelemetryClient, auth: dict[str, str]) -> tuple[str, str]:
    """A session ten days old with 30 samples and a cached view, and a current one with 25."""
    old_start, new_start = T0_MS - 10 * DAY_MS, T0_MS - 30 * MINUTE
    old = await tc.start_session(auth, old_start)
    await tc.post_samples(auth, [hr(f"o{i}", old_start + i * MINUTE, 60.0 + i) for i in range(30)])
    await tc.end_session(auth, old, old_start + 30 * MINUTE)
    new = await tc.start_session(auth, new_start)
    await tc.post_samples(auth, [hr(f"n{i}", new_start + i * MINUTE, 80.0 + i) for i in range(25)])
    await tc.get(auth, old)
    await tc.settle()
    assert (await tc.get(auth, old)).json()["state"] == "ready"
    return old, new


async def test_a_server_with_a_retention_limit_purges_at_start_up_by_itself(
    settings: Settings, clock: ManualClock, users: Any
) -> None:
    _uid, token = await users.create()
    auth = {"Authorization": f"Bearer {token}"}
    async with telemetry_client(settings, clock, Seams(clock=clock)) as tc:
        assert tc.parts.retention is None
        old, new = await _populate(tc, auth)
        kept = (await tc.get(auth, old)).content

    limited = settings.model_copy(update={"raw_retention_days": 5})
    async with telemetry_client(limited, clock, Seams(clock=clock)) as tc:
        daily = tc.parts.retention
        assert daily is not None
        await _until(lambda: daily.runs >= 1)
        last = daily.last
        assert last is not None
        # On PostgreSQL whole months before the cutoff are dropped too: how many depends on the
        # months other tests of this database created, so only the rows are counted here.
        assert last == RetentionRun(
            cutoff_ms=T0_MS - 5 * DAY_MS,
            sessions_archived=1,
            samples_deleted=30,
            partitions_dropped=last.partitions_dropped,
        )
        assert daily.next_run_ms == T0_MS + DAY_MS
        assert await count(tc.db, health_samples) == 25
        assert await count(tc.db, sessions, sessions.c.archived_at_ms.is_not(None)) == 1
        archived = await tc.get(auth, old)
        assert archived.status_code == 200
        assert archived.content == kept[:-1] + b',"archived":true}'
        assert "archived" not in (await tc.get(auth, new)).json()


async def test_the_daily_run_comes_again_on_its_schedule(
    settings: Settings, clock: ManualClock, users: Any
) -> None:
    """With a short interval the loop runs again by itself and purges what expired since; each
    run computes the next one from its own start."""
    _uid, token = await users.create()
    auth = {"Authorization": f"Bearer {token}"}
    async with telemetry_client(settings, clock, Seams(clock=clock)) as tc:
        await tc.post_samples(auth, [hr("a", T0_MS - 9 * DAY_MS, 70.0)])
        daily = DailyRetention(RetentionService(tc.db, clock, days=5), clock, interval_s=0.05)
        await daily.start()
        try:
            await _until(lambda: daily.runs >= 1)
            assert daily.last is not None and daily.last.samples_deleted == 1
            clock.advance(60_000)
            await tc.post_samples(auth, [hr("b", T0_MS - 8 * DAY_MS, 71.0)])
            runs = daily.runs
            await _until(lambda: daily.runs > runs and daily.last.samples_deleted == 1)
            assert daily.next_run_ms == clock.now_ms() + 50
            assert await count(tc.db, health_samples) == 0
        finally:
            await daily.stop()
