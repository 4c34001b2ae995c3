"""Creating a session while an ingest of the same user is in flight, on two real PostgreSQL
connections: the new session's watermark must include that ingest, or a payload cached at the
older watermark would miss its samples for good (nothing would stale it again)."""

from __future__ import annotations

import asyncio
import time

import sqlalchemy as sa

from tests.accounts import new_user
from tests.ingest.helpers import MINUTE_MS, now_ms
from tests.services import service_missing
from vitalcast.clock import SystemClock
from vitalcast.db.engine import Database, create_engine
from vitalcast.ingest import repository as ingest_repository
from vitalcast.samples import Sample
from vitalcast.sessions import repository as session_repository
from vitalcast.sessions.changes import NO_LISTENER
from vitalcast.sessions.service import SessionService

LOCK_WAIT_TIMEOUT_S = 10.0


async def waiting_for_a_lock(db: Database) -> bool:
    """Some connection of this database waits for a lock (the creating one: the only other
    open transaction is the ingest that holds the user's row)."""
    async with db.read() as conn:
        waiting = await conn.scalar(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    return bool(waiting)


async def test_session_created_during_an_ingest_waits_for_it_and_takes_its_watermark(
    pg_database_url: str | None,
) -> None:
    """Connection 1 is an ingest that has written a sample, moved change_seq to N+1 and bumped
    the watermarks of the sessions it saw, not yet committed. Connection 2 creates a session
    whose window holds that sample: it waits for the user's lock, and once the ingest commits
    the session starts at watermark N+1, not N."""
    if pg_database_url is None:
        service_missing("PostgreSQL")
    assert pg_database_url is not None
    user_id, _token = await new_user(pg_database_url)
    ingest_db = Database(create_engine(pg_database_url))
    create_db = Database(create_engine(pg_database_url))
    watch_db = Database(create_engine(pg_database_url))
    now = now_ms()
    sample = Sample("polar", "race-1", "heart_rate", 70.0, "bpm", now, now, None)
    try:
        async with ingest_db.write() as ingest:
            seq = await session_repository.lock_user(ingest, user_id)
            assert seq is not None
            written = await ingest_repository.write_samples(
                ingest, user_id, [sample], [], change_seq=seq + 1
            )
            await ingest_repository.set_change_seq(ingest, user_id, seq + 1)
            touched = await session_repository.bump_watermarks(
                ingest,
                user_id,
                change_seq=seq + 1,
                changed_times_ms=written.changed_times_ms,
                now_ms=now,
            )
            assert touched == []  # the session does not exist yet
            creating = asyncio.create_task(
                SessionService(create_db, SystemClock(), NO_LISTENER).create(
                    user_id, client_session_id=None, start_ms=now - 10 * MINUTE_MS, notes=None
                )
            )
            deadline = time.monotonic() + LOCK_WAIT_TIMEOUT_S
            while not creating.done() and not await waiting_for_a_lock(watch_db):
                assert time.monotonic() < deadline, "the create neither waited nor finished"
                await asyncio.sleep(0.02)
            assert not creating.done(), "the session was created without waiting for the ingest"
        session, created = await asyncio.wait_for(creating, LOCK_WAIT_TIMEOUT_S)
        assert created and session.source_watermark == seq + 1
        async with watch_db.read() as conn:
            stored = await session_repository.get(conn, user_id, session.id)
        assert stored is not None and stored.source_watermark == seq + 1
    finally:
        for db in (ingest_db, create_db, watch_db):
            await db.dispose()
