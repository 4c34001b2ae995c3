"""Workers SIGKILLed again and again in the middle of computes during a ``vitalcast backfill``:
every session still ends ``ready`` at its current watermark and no row keeps a live lease.

Real processes throughout: ``vitalcast backfill`` and ``vitalcast worker`` subprocesses on
PostgreSQL and a private Redis. Each kill hits a worker while it holds a compute lease (the
test-only job hold keeps computes in flight long enough to be caught)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.ingest.helpers import MINUTE_MS, hr, now_ms
from tests.processes import FAST_QUEUE, Child, RedisServer, run_cli, spawn, vitalcast_env
from vitalcast.clock import SystemClock
from vitalcast.db.engine import Database, create_engine
from vitalcast.db.tables import sessions as sessions_table
from vitalcast.db.tables import telemetry_cache
from vitalcast.ingest.service import IngestService
from vitalcast.observability import Metrics
from vitalcast.sessions import repository as session_repository
from vitalcast.sessions.changes import NO_LISTENER
from vitalcast.sessions.service import SessionService

pytestmark = pytest.mark.slow

SESSIONS = 16
WORKERS = 2
KILLS = 3
HOLD_MS = 1200
KILL_GAP_S = 1.0
# Covers the workers' start-up (their imports are slow on a loaded machine), the kills and the
# recovery; the test returns as soon as every cache is ready.
DEADLINE_S = 240.0


async def _seed(url: str) -> None:
    """SESSIONS ended sessions of one user, each with half an hour of heart rate."""
    db = Database(create_engine(url))
    clock = SystemClock()
    try:
        async with db.write() as conn:
            user_id = await session_repository.get_or_create_user(conn, "backfilled", now_ms=0)
        # Nothing listens: the backfill under test is what computes these sessions.
        sessions = SessionService(db, clock, NO_LISTENER)
        ingest = IngestService(db, clock, Metrics(), NO_LISTENER)
        base = now_ms() - 2 * SESSIONS * 60 * MINUTE_MS
        for n in range(SESSIONS):
            start = base + n * 2 * 60 * MINUTE_MS
            session, _ = await sessions.create(
                user_id, client_session_id=None, start_ms=start, notes=None
            )
            samples = [hr(f"s{n}-{i}", start + i * MINUTE_MS, value=60 + i) for i in range(30)]
            await ingest.ingest(user_id, {"samples": samples})
            await sessions.end(user_id, session.id, end_ms=start + 30 * MINUTE_MS)
    finally:
        await db.dispose()


async def _rows(url: str) -> tuple[dict[str, int], list[sa.Row]]:
    db = Database(create_engine(url))
    try:
        async with db.read() as conn:
            watermarks = dict(
                (
                    await conn.execute(
                        sa.select(sessions_table.c.id, sessions_table.c.source_watermark)
                    )
                ).all()
            )
            rows = list((await conn.execute(sa.select(telemetry_cache))).all())
        return watermarks, rows
    finally:
        await db.dispose()


def _done(watermarks: dict[str, int], rows: list[sa.Row]) -> bool:
    ready = {
        (r.session_id, r.resolution)
        for r in rows
        if r.status == "ready" and r.source_watermark == watermarks[r.session_id]
    }
    return len(ready) == 2 * len(watermarks)


def _lease_holder(rows: list[sa.Row], workers: list[Child]) -> Child | None:
    now = now_ms()
    for worker in workers:
        pid = f":{worker.process.pid}:"
        if any(
            r.lease_owner and pid in r.lease_owner and (r.lease_expires_ms or 0) > now for r in rows
        ):
            return worker
    return None


async def test_sigkilled_workers_during_backfill_leave_every_session_ready(
    spare_pg_url: str, spare_redis: RedisServer, tmp_path: Path
) -> None:
    """Backfill 16 ended sessions (32 computes) while 3 times a worker holding a compute lease is
    SIGKILLed and replaced: all 32 caches end ready at the session watermark, none stays leased."""
    await _seed(spare_pg_url)
    env = vitalcast_env(
        tmp_path / "data",
        log_level="warning",
        database_url=spare_pg_url,
        redis_url=spare_redis.url,
        **FAST_QUEUE,
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    spawned = 0

    def start_worker() -> Child:
        nonlocal spawned
        spawned += 1
        return stack.enter_context(
            spawn(
                [str(HOLD_MS), "--concurrency", "2"],
                env,
                logs / f"w{spawned}.log",
                module="tests.held_worker",
            )
        )

    with contextlib.ExitStack() as stack:
        workers = [start_worker() for _ in range(WORKERS)]
        backfill_run = asyncio.create_task(asyncio.to_thread(run_cli, ["backfill"], env, 120))

        killed = 0
        deadline = time.monotonic() + DEADLINE_S
        while killed < KILLS and time.monotonic() < deadline:
            _, rows = await _rows(spare_pg_url)
            victim = _lease_holder(rows, workers)
            if victim is None:
                await asyncio.sleep(0.05)
                continue
            os.kill(victim.process.pid, signal.SIGKILL)
            victim.process.wait(10)
            workers.remove(victim)
            workers.append(start_worker())
            killed += 1
            await asyncio.sleep(KILL_GAP_S)
        assert killed == KILLS, "too few kills landed in the middle of a compute"
        backfill = await backfill_run
        assert backfill.returncode == 0, backfill.stderr
        assert f"{2 * SESSIONS} computes scheduled" in backfill.stdout

        while time.monotonic() < deadline:
            watermarks, rows = await _rows(spare_pg_url)
            if _done(watermarks, rows):
                break
            await asyncio.sleep(0.5)
        logs_text = "\n".join(p.read_text(errors="replace")[-1500:] for p in logs.iterdir())

    watermarks, rows = await _rows(spare_pg_url)
    assert _done(watermarks, rows), logs_text
    assert len(rows) == 2 * SESSIONS
    now = now_ms()
    assert [r for r in rows if r.lease_owner and (r.lease_expires_ms or 0) > now] == []
    assert all(r.error_code is None for r in rows)
