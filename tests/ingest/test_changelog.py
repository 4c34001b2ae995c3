"""The session change log: every move of a session's watermark writes one entry in the same
transaction, chained to the watermark before it, holding the changed times inside that session's
widest window (old and new times of a moved sample); ending a session logs it whole."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from tests.ingest.helpers import MINUTE_MS, hr, now_ms
from tests.sql_statements import count_statements
from vitalcast.clock import SystemClock
from vitalcast.db.engine import Database
from vitalcast.db.tables import session_changes
from vitalcast.ingest.service import IngestService
from vitalcast.observability import Metrics
from vitalcast.sessions import changelog
from vitalcast.sessions.changes import NO_LISTENER
from vitalcast.sessions.models import WIDEST_PAD_MS, Session
from vitalcast.sessions.service import SessionService


class Services:
    """The ingest and session services with nobody listening, so nothing computes and nothing
    prunes the log under the test."""

    def __init__(self, db: Database) -> None:
        clock = SystemClock()
        self.ingest = IngestService(db, clock, Metrics(), NO_LISTENER)
        self.sessions = SessionService(db, clock, NO_LISTENER)

    async def session(self, user_id: str, start_ms: int, end_ms: int | None = None) -> Session:
        session, _ = await self.sessions.create(
            user_id, client_session_id=None, start_ms=start_ms, notes=None
        )
        if end_ms is not None:
            session = await self.sessions.end(user_id, session.id, end_ms=end_ms)
        return session

    async def post(self, user_id: str, samples=(), deleted=()) -> dict[str, Any]:
        outcome = await self.ingest.ingest(
            user_id, {"samples": list(samples), "deleted": list(deleted)}
        )
        assert outcome.status_code == 200
        return dict(orjson.loads(outcome.body))


async def _entries(db, session_id: str) -> list[changelog.LogEntry]:
    """The session's whole chain, from its oldest entry's previous watermark to its newest."""
    c = session_changes.c
    async with db.read() as conn:
        newest, oldest_prev = (
            await conn.execute(
                sa.select(sa.func.max(c.change_seq), sa.func.min(c.prev_seq)).where(
                    c.session_id == session_id
                )
            )
        ).one()
        if newest is None:
            return []
        walked = await changelog.chain(conn, session_id, after_seq=oldest_prev, through_seq=newest)
    assert walked is not None, "the chain is broken"
    return walked


async def test_one_entry_per_touched_session_with_its_own_times(users, db):
    """One batch touching two sessions logs one entry for each, each holding only the times
    inside its own widest window, chained to its previous watermark; an identical re-send logs
    nothing."""
    user_id, _token = await users.create()
    services = Services(db)
    t0 = now_ms() - 30 * 60 * MINUTE_MS
    a = await services.session(user_id, t0, t0 + 60 * MINUTE_MS)
    b = await services.session(user_id, t0 + 10 * 60 * MINUTE_MS, t0 + 11 * 60 * MINUTE_MS)
    near_a = t0 + 5 * MINUTE_MS
    near_b = t0 + 10 * 60 * MINUTE_MS + 30_000
    result = await services.post(
        user_id, [hr("x", near_a), hr("y", near_a + 20_000), hr("z", near_b)]
    )
    seq = result["change_seq"]
    (entry_a,) = [e for e in await _entries(db, a.id) if e.change_seq == seq]
    (entry_b,) = [e for e in await _entries(db, b.id) if e.change_seq == seq]
    assert entry_a.prev_seq == a.source_watermark
    assert entry_a.ranges == ((near_a, near_a + 20_001),)
    assert entry_b.prev_seq == b.source_watermark
    assert entry_b.ranges == ((near_b, near_b + 1),)
    again = await services.post(user_id, [hr("x", near_a)])
    assert again["change_seq"] == seq
    assert [e.change_seq for e in await _entries(db, a.id)][-1] == seq


async def test_a_moved_sample_logs_its_old_and_new_time(users, db):
    """Moving a sample logs both times (far apart: two ranges); deleting logs its time."""
    user_id, _token = await users.create()
    services = Services(db)
    t0 = now_ms() - 10 * 60 * MINUTE_MS
    session = await services.session(user_id, t0, t0 + 4 * 60 * MINUTE_MS)
    await services.post(user_id, [hr("m", t0 + MINUTE_MS)])
    moved = await services.post(user_id, [hr("m", t0 + 90 * MINUTE_MS)])
    deleted = await services.post(user_id, deleted=[{"source": "healthkit", "record_id": "m"}])
    entries = {e.change_seq: e for e in await _entries(db, session.id)}
    assert entries[moved["change_seq"]].ranges == (
        (t0 + MINUTE_MS, t0 + MINUTE_MS + 1),
        (t0 + 90 * MINUTE_MS, t0 + 90 * MINUTE_MS + 1),
    )
    assert entries[deleted["change_seq"]].ranges == (
        (t0 + 90 * MINUTE_MS, t0 + 90 * MINUTE_MS + 1),
    )
    assert entries[deleted["change_seq"]].prev_seq == moved["change_seq"]


async def test_ending_a_session_logs_it_whole_and_the_chain_is_unbroken(users, db):
    """The end's entry holds no ranges (the whole session) and links to the last ingest's
    watermark: walking the chain from the end reaches the creation watermark."""
    user_id, _token = await users.create()
    services = Services(db)
    t0 = now_ms() - 60 * MINUTE_MS
    session = await services.session(user_id, t0)
    first = await services.post(user_id, [hr("a", t0 + MINUTE_MS)])
    ended = await services.sessions.end(user_id, session.id, end_ms=t0 + 30 * MINUTE_MS)
    async with db.read() as conn:
        walked = await changelog.chain(
            conn,
            session.id,
            after_seq=session.source_watermark,
            through_seq=ended.source_watermark,
        )
    assert walked is not None
    assert [e.change_seq for e in walked] == [first["change_seq"], ended.source_watermark]
    assert walked[-1].whole and walked[-1].prev_seq == first["change_seq"]


def test_times_merge_within_a_minute_and_stay_inside_the_window():
    """Times at most a minute apart share a range; times outside [lo, hi) are left out."""
    times = [0, 10, 60_010, 200_000, 200_001, WIDEST_PAD_MS]
    assert changelog.ranges_of(times, 0, WIDEST_PAD_MS) == ((0, 60_011), (200_000, 200_002))
    assert changelog.ranges_of(times, 11, 200_001) == ((60_010, 60_011), (200_000, 200_001))
    assert changelog.ranges_of([], 0, 10) == ()


async def test_a_batch_of_new_samples_logs_the_ranges_ranges_of_makes(users, db):
    """A batch whose samples are all new (on PostgreSQL its change is recorded by the statement
    that inserts it) logs, for each session whose widest window holds one of its times, the
    ranges ``changelog.ranges_of`` makes of them: times a minute apart merge, a millisecond more
    splits, a window's start is in and its end is out, a shared time counts once. A session
    near the batch's times that holds none of them is not moved."""
    user_id, _token = await users.create()
    services = Services(db)
    hour = 60 * MINUTE_MS
    t0 = now_ms() - 30 * hour
    a = await services.session(user_id, t0, t0 + hour)
    b = await services.session(user_id, t0 + 10 * hour, t0 + 11 * hour)
    c = await services.session(user_id, t0 + 20 * hour, t0 + 20 * hour + MINUTE_MS)
    d = await services.session(user_id, t0 + 25 * hour)
    a_lo, a_hi = a.widest_window(now_ms())
    b_lo, b_hi = b.widest_window(now_ms())
    times = [
        a_lo,
        a_lo + changelog.MERGE_MS,
        a_lo + 2 * changelog.MERGE_MS + 1,
        a_hi - 1,
        a_hi,
        b_lo,
        b_lo + 30_000,
        b_hi - 1,
        t0 + 26 * hour,
        t0 + 26 * hour,
    ]
    outcome = await services.ingest.ingest(
        user_id, {"samples": [hr(f"n{i}", t) for i, t in enumerate(times)]}
    )
    assert outcome.status_code == 200
    seq = orjson.loads(outcome.body)["change_seq"]
    assert orjson.loads(outcome.body)["inserted"] == len(times)
    assert sorted(s.id for s in outcome.touched) == sorted([a.id, b.id, d.id])
    assert {s.source_watermark for s in outcome.touched} == {seq}
    for session in (a, b, c, d):
        expected = changelog.ranges_of(sorted(set(times)), *session.widest_window(now_ms()))
        logged = [e for e in await _entries(db, session.id) if e.change_seq == seq]
        if session is c:
            assert expected == () and logged == []
            continue
        assert expected and [(e.prev_seq, e.ranges) for e in logged] == [
            (session.source_watermark, expected)
        ]
    assert len(changelog.ranges_of(sorted(set(times)), a_lo, a_hi)) == 3


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_a_live_sync_on_postgres_is_one_statement(users, db):
    """A batch of new samples with a request_id is one statement on PostgreSQL (the user's
    lock, the samples, the change, the request: ``vitalcast_ingest_new``), and so is its
    replay; a re-send of known samples under another id runs as a transaction, answered as
    before (every sample unchanged, the counter where it was)."""
    user_id, _token = await users.create()
    services = Services(db)
    t0 = now_ms() - 60 * MINUTE_MS
    session = await services.session(user_id, t0)
    batch = [hr(f"live-{i}", t0 + i * 1_000) for i in range(5)]
    await services.post(user_id, [hr("warm", t0)])  # this process learns the month's partition
    with count_statements(db.engine) as first:
        sent = await services.ingest.ingest(user_id, {"request_id": "r-1", "samples": batch})
    assert len(first) == 1 and "vitalcast_ingest_new" in first[0]
    assert [s.id for s in sent.touched] == [session.id]
    with count_statements(db.engine) as again:
        replayed = await services.ingest.ingest(user_id, {"request_id": "r-1", "samples": batch})
    assert len(again) == 1 and replayed.body == sent.body and replayed.touched == []
    with count_statements(db.engine) as known:
        resent = await services.ingest.ingest(user_id, {"request_id": "r-2", "samples": batch})
    assert len(known) > 1
    answer = orjson.loads(resent.body)
    assert (answer["unchanged"], answer["change_seq"]) == (5, orjson.loads(sent.body)["change_seq"])
