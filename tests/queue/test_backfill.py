"""`vitalcast backfill`: which sessions it schedules, waiting on a full queue, and the CLI."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.ingest.helpers import MINUTE_MS, hr, now_ms
from tests.processes import run_cli, vitalcast_env
from tests.queue.conftest import delete_prefix
from tests.waits import eventually
from vitalcast.clock import SystemClock
from vitalcast.db.engine import Database
from vitalcast.ingest.service import IngestService
from vitalcast.observability import Metrics
from vitalcast.queue.backfill import BackfillFilter, BackfillProgress, default_keys, run_backfill
from vitalcast.queue.handler import ComputeJobHandler
from vitalcast.queue.jobs import TelemetryJob
from vitalcast.queue.service import SessionTelemetryQueueService
from vitalcast.sessions import repository as session_repository
from vitalcast.sessions.changes import NO_LISTENER
from vitalcast.sessions.models import Session, SessionStatus
from vitalcast.settings import Settings
from vitalcast.telemetry.keys import ScheduleReason, TelemetryKey
from vitalcast.telemetry.run.computer import TelemetryComputer
from vitalcast.testing import ensure_user
from vitalcast.wiring import build_local_computes

HOUR_MS = 60 * MINUTE_MS


@dataclass
class World:
    """A database with sessions, a telemetry computer and the queue of one test."""

    settings: Settings
    db: Database
    computer: TelemetryComputer
    queue: SessionTelemetryQueueService
    #: set when the queue first refused a backfill submit (it was at max_queue_depth)
    queue_full: asyncio.Event = field(default_factory=asyncio.Event)

    async def user(self, name: str) -> str:
        return await ensure_user(self.db, name)

    async def session(self, user_id: str, *, start_ms: int, end_ms: int | None) -> Session:
        async with self.db.write() as conn:
            session = await session_repository.insert(
                conn,
                user_id=user_id,
                client_session_id=None,
                start_ms=start_ms,
                notes=None,
                now_ms=now_ms(),
            )
            if end_ms is not None:
                session = await session_repository.close(
                    conn, session, status=SessionStatus.COMPLETED, end_ms=end_ms, now_ms=now_ms()
                )
        return session

    async def compute(self, session: Session, *, only: str | None = None) -> None:
        for key in self.keys(session):
            if only is None or key.resolution.value == only:
                await self.computer.compute(key, reason=ScheduleReason.CACHE_MISS)

    def keys(self, session: Session) -> list[TelemetryKey]:
        return default_keys(
            session, window_minutes=self.settings.default_window_minutes, now_ms=now_ms()
        )

    async def backfill(self, selection: BackfillFilter | None = None) -> BackfillProgress:
        async def enqueue(key: TelemetryKey, watermark: int) -> bool:
            added = await self.queue.enqueue(
                key, watermark=watermark, reason=ScheduleReason.BACKFILL
            )
            if not added:
                self.queue_full.set()
            return added

        return await run_backfill(
            self.db,
            enqueue,
            window_minutes=self.settings.default_window_minutes,
            now_ms=now_ms,
            selection=selection or BackfillFilter(),
        )

    async def queued(self) -> set[tuple[str, str, int]]:
        """(session, resolution, watermark) of every job waiting in the queue."""
        jobs = [TelemetryJob.from_data(j.data) for j in await self.queue.queue.getWaiting()]
        return {(j.key.session_id, j.key.resolution.value, j.watermark) for j in jobs}


@pytest.fixture
async def world(
    settings: Settings, db: Database, redis_url: str, unique_prefix: str
) -> AsyncIterator[World]:
    configured = settings.model_copy(update={"redis_url": redis_url, "queue_prefix": unique_prefix})
    local = build_local_computes(configured)
    queue = SessionTelemetryQueueService(configured, fallback=None, metrics=Metrics())
    world = World(configured, db, local.computer, queue)
    yield world
    await world.queue.close()
    await local.close()
    await delete_prefix(redis_url, unique_prefix)


async def test_backfill_schedules_exactly_the_missing_and_stale_default_caches(
    world: World,
) -> None:
    """Ended sessions need their default window at 1m and 5m, live ones at auto; a key whose
    payload is at the session's watermark is skipped, a missing or stale one is queued."""
    alice = await world.user("alice")
    # 8 h apart: a sample in one session's window is outside the others' widest windows
    base = now_ms() - 30 * HOUR_MS
    fresh = await world.session(alice, start_ms=base, end_ms=base + HOUR_MS)
    half = await world.session(alice, start_ms=base + 8 * HOUR_MS, end_ms=base + 9 * HOUR_MS)
    stale = await world.session(alice, start_ms=base + 16 * HOUR_MS, end_ms=base + 17 * HOUR_MS)
    live = await world.session(alice, start_ms=now_ms() - 30 * MINUTE_MS, end_ms=None)
    await world.compute(fresh)
    await world.compute(half, only="1m")
    await world.compute(stale)
    ingest = IngestService(world.db, SystemClock(), Metrics(), NO_LISTENER)
    await ingest.ingest(alice, {"samples": [hr("late", stale.start_ms + MINUTE_MS)]})
    async with world.db.read() as conn:
        stale_now = await session_repository.get(conn, alice, stale.id)
    assert stale_now is not None and stale_now.source_watermark > stale.source_watermark

    progress = await world.backfill()

    assert (progress.total, progress.checked) == (4, 4)
    assert (progress.scheduled, progress.up_to_date) == (4, 3)
    assert await world.queued() == {
        (half.id, "5m", half.source_watermark),
        (stale.id, "1m", stale_now.source_watermark),
        (stale.id, "5m", stale_now.source_watermark),
        (live.id, "1m", live.source_watermark),
    }


async def test_backfill_filters_by_user_and_start(world: World) -> None:
    """--user keeps one user's sessions, --since the sessions starting at or after it."""
    alice, bob = await world.user("alice"), await world.user("bob")
    base = now_ms() - 10 * HOUR_MS
    old = await world.session(alice, start_ms=base, end_ms=base + HOUR_MS)
    recent = await world.session(alice, start_ms=base + 5 * HOUR_MS, end_ms=base + 6 * HOUR_MS)
    bobs = await world.session(bob, start_ms=base + 5 * HOUR_MS, end_ms=base + 6 * HOUR_MS)

    by_user = await world.backfill(BackfillFilter(user_name="bob"))
    assert (by_user.total, by_user.scheduled) == (1, 2)
    assert {s for s, _, _ in await world.queued()} == {bobs.id}

    since = await world.backfill(BackfillFilter(since_ms=base + HOUR_MS, user_name="alice"))
    assert (since.total, since.scheduled) == (1, 2)
    assert {s for s, _, _ in await world.queued()} == {bobs.id, recent.id}
    assert old.id not in {s for s, _, _ in await world.queued()}
    assert (await world.backfill(BackfillFilter(user_name="nobody"))).total == 0


async def test_backfill_waits_while_the_queue_is_full_and_finishes_as_workers_drain_it(
    world: World, start_worker: Any
) -> None:
    """With max_queue_depth 2, backfill waits instead of overfilling the queue; a real worker
    drains it, backfill completes, every default cache ends fresh and a second run schedules
    nothing."""
    world.settings = world.settings.model_copy(update={"max_queue_depth": 2})
    await world.queue.close()
    world.queue = SessionTelemetryQueueService(world.settings, fallback=None, metrics=Metrics())
    alice = await world.user("alice")
    base = now_ms() - 20 * HOUR_MS
    for i in range(4):
        start = base + i * 2 * HOUR_MS
        await world.session(alice, start_ms=start, end_ms=start + HOUR_MS)

    backfill = asyncio.create_task(world.backfill())
    await asyncio.wait_for(world.queue_full.wait(), 60)
    assert not backfill.done()
    assert await world.queue.depth() == 2

    clock = SystemClock()
    await start_worker(world.settings, ComputeJobHandler(world.computer, clock))
    progress = await asyncio.wait_for(backfill, 60)
    assert progress.scheduled == 8
    assert progress.waits > 0

    async def drained() -> bool:
        counts = await world.queue.counts()
        return counts["waiting"] + counts["active"] + counts["delayed"] == 0

    await eventually(drained, what="the worker drained the queue")
    again = await world.backfill()
    assert (again.scheduled, again.up_to_date) == (0, 8)


def test_backfill_cli_computes_in_process_without_redis(
    tmp_path: Path, sqlite_template: Path
) -> None:
    """Embedded mode: `vitalcast backfill` computes every missing default cache itself, shows
    progress, and a second run finds nothing to do."""
    import shutil

    database = tmp_path / "embedded.db"
    shutil.copy(sqlite_template, database)
    url = f"sqlite+aiosqlite:///{database}"
    asyncio.run(_ended_sessions(url, count=3))
    env = vitalcast_env(tmp_path / "data", database_url=url)
    first = run_cli(["backfill"], env)
    assert first.returncode == 0, first.stderr
    assert "backfill: 3/3 sessions checked, 6 computes scheduled" in first.stderr
    assert first.stdout.strip() == "6 computes scheduled for 3 sessions"
    second = run_cli(["backfill"], env)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "0 computes scheduled for 3 sessions"
    assert "6 up to date" in second.stderr


async def _ended_sessions(url: str, *, count: int) -> None:
    from vitalcast.db.engine import create_engine

    db = Database(create_engine(url))
    try:
        async with db.write() as conn:
            user = await session_repository.get_or_create_user(conn, "cli", now_ms=now_ms())
            for i in range(count):
                start = now_ms() - (i + 2) * 3 * HOUR_MS
                session = await session_repository.insert(
                    conn,
                    user_id=user,
                    client_session_id=None,
                    start_ms=start,
                    notes=None,
                    now_ms=now_ms(),
                )
                await session_repository.close(
                    conn,
                    session,
                    status=SessionStatus.COMPLETED,
                    end_ms=start + HOUR_MS,
                    now_ms=now_ms(),
                )
    finally:
        await db.dispose()
