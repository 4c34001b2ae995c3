"""The simulator's runner against the real app on SQLite and PostgreSQL: complete and idempotent
replays, late backfill after an outage, accelerated live sessions, a clean stop."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import sqlalchemy as sa

from tests.wearable_plans import START_MS, plan, profile
from vitalcast.db import tables
from vitalcast.simulator import Api, Pace, SessionRunner, live_placement
from vitalcast.wearable import MINUTE_MS, Interval, generate


def test_accelerated_live_placement_never_overtakes_the_wall_clock():
    """At any speed the simulated clock ends exactly at wall time and is never ahead of it."""
    now = START_MS
    for speed in (1.0, 7.5, 60.0, 3600.0):
        start, origin = live_placement(
            now,
            pre_ms=30 * MINUTE_MS,
            elapsed_ms=5 * MINUTE_MS,
            duration_ms=45 * MINUTE_MS,
            post_ms=20 * MINUTE_MS,
            speed=speed,
        )
        finish = start + 65 * MINUTE_MS
        assert origin == start + 5 * MINUTE_MS
        wall_needed_ms = (finish - origin) / speed
        assert abs(origin + speed * wall_needed_ms - (now + wall_needed_ms)) <= 1000
        for fraction in (0.0, 0.25, 0.5, 1.0):
            wall = now + fraction * wall_needed_ms
            assert origin + speed * (wall - now) <= wall + 1000


async def count_samples(db, user_id: str) -> Counter:
    async with db.read() as conn:
        rows = await conn.execute(
            sa.select(tables.health_samples.c.metric, sa.func.count())
            .where(tables.health_samples.c.user_id == user_id)
            .group_by(tables.health_samples.c.metric)
        )
        return Counter(dict(rows.all()))


async def test_past_session_replay_with_late_backfill_is_complete_and_idempotent(client, users, db):
    """A past session lands whole; samples recorded during a phone outage arrive only after it
    ends (a later change_seq); replaying the same run changes nothing."""
    user_id, token = await users.create()
    outage = Interval(START_MS + 5 * MINUTE_MS, START_MS + 20 * MINUTE_MS)
    p = plan(outages=(outage,))
    expected = generate(p, profile(), seed=4)
    runner = SessionRunner(Api(client, token), p, profile(), Pace(None), 4, sync_ms=5 * MINUTE_MS)
    tally = await runner.run()

    assert tally.rejected == 0 and tally.inserted == len(expected) == tally.sent
    assert tally.late >= sum(1 for s in expected if outage.start_ms <= s.start_ms < outage.end_ms)
    counts = await count_samples(db, user_id)
    assert counts == Counter(s.metric for s in expected)
    session = (
        await client.get(f"/api/v1/sessions/{runner.session_id}", headers=auth(token))
    ).json()
    assert session["status"] == "completed" and session["end_ms"] == p.end_ms

    seq = tables.health_samples.c
    async with db.read() as conn:
        rows = (
            await conn.execute(
                sa.select(seq.start_ms, seq.end_ms, seq.change_seq).where(seq.user_id == user_id)
            )
        ).all()
    held = [r.change_seq for r in rows if outage.start_ms <= r.end_ms < outage.end_ms]
    # Syncs are at most 6 minutes apart (5 ± 20 %): these were sent before the outage began.
    before = [r.change_seq for r in rows if r.end_ms < outage.start_ms - 6 * MINUTE_MS]
    after = {r.change_seq for r in rows if r.start_ms >= outage.end_ms}
    assert min(held) > max(before)
    assert set(held) <= after

    again = await SessionRunner(
        Api(client, token), p, profile(), Pace(None), 4, sync_ms=5 * MINUTE_MS
    ).run()
    assert again.unchanged == len(expected) and again.inserted == 0 and again.updated == 0


async def test_accelerated_live_session_syncs_in_batches_and_ends_on_time(client, users, db):
    """At 600× a 15-minute live timeline plays in ~1.5 s in many sync batches; no sample is ever
    from the future (no rejections) and the session ends at its planned end."""
    user_id, token = await users.create()
    start, origin = live_placement(
        int(time.time() * 1000),
        pre_ms=5 * MINUTE_MS,
        elapsed_ms=0,
        duration_ms=5 * MINUTE_MS,
        post_ms=5 * MINUTE_MS,
        speed=600.0,
    )
    p = plan(start_ms=start, duration_ms=5 * MINUTE_MS, pre_ms=5 * MINUTE_MS, post_ms=5 * MINUTE_MS)
    runner = SessionRunner(Api(client, token), p, profile(), Pace(600.0, origin), 8, sync_ms=60_000)
    tally = await runner.run()
    expected = generate(p, profile(), seed=8)
    assert tally.rejected == 0 and tally.inserted == len(expected)
    # 15 syncs are due (one per simulated minute); a runner that falls behind a slow server
    # merges due syncs into one batch (under a busy loop per core: 2), so only "more than one
    # batch" is timing-free
    assert tally.batches >= 2
    assert sum((await count_samples(db, user_id)).values()) == len(expected)
    session = (
        await client.get(f"/api/v1/sessions/{runner.session_id}", headers=auth(token))
    ).json()
    assert session["status"] == "completed" and session["end_ms"] == p.end_ms


async def test_cancelled_live_run_ends_its_session(client, users):
    """Stopping a real-time run (Ctrl-C cancels the task) ends the live session at the stop time
    instead of leaving it live forever."""
    _user_id, token = await users.create()
    now_ms = int(time.time() * 1000)
    start, origin = live_placement(
        now_ms,
        pre_ms=10 * MINUTE_MS,
        elapsed_ms=5 * MINUTE_MS,
        duration_ms=30 * MINUTE_MS,
        post_ms=0,
        speed=1.0,
    )
    p = plan(start_ms=start, duration_ms=30 * MINUTE_MS, pre_ms=10 * MINUTE_MS, post_ms=0)
    synced = asyncio.Event()
    runner = SessionRunner(
        Api(client, token),
        p,
        profile(),
        Pace(1.0, origin),
        1,
        sync_ms=60_000,
        progress=lambda _line: synced.set(),
    )
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(synced.wait(), 30)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert runner.tally.rejected == 0 and runner.tally.sent > 0
    session = (
        await client.get(f"/api/v1/sessions/{runner.session_id}", headers=auth(token))
    ).json()
    assert session["status"] == "completed"
    assert start + 5 * MINUTE_MS <= session["end_ms"] <= int(time.time() * 1000)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
