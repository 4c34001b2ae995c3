"""Thundering herds: many clients asking at once never stampede the database."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.telemetry.conftest import MINUTE, hr
from vitalcast.db.engine import Database
from vitalcast.sessions import repository
from vitalcast.sessions.models import SessionStatus
from vitalcast.settings import Settings
from vitalcast.telemetry.run.batcher import MAX_BATCHES_IN_FLIGHT
from vitalcast.testing import insert_sample_rows

HOUR = 60 * MINUTE


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Default coordinator bounds (3 running, 50 waiting); rate limits out of the way."""
    return settings.model_copy(
        update={
            "max_concurrent_computes": 3,
            "max_pending_computes": 50,
            "rate_limit_telemetry": "1000000/minute",
            "rate_limit_ingest": "1000000/minute",
        }
    )


async def test_a_thousand_concurrent_gets_on_one_cold_session_compute_once(tc, users):
    """1,000 simultaneous GETs of one cold view: exactly one compute, every answer 202 or 200,
    and the next GET is ready."""
    headers = await users.headers()
    start = tc.clock.now_ms() - 5 * HOUR
    session_id = await tc.start_session(headers, start)
    await tc.post_samples(headers, [hr(f"hr-{i}", start + i * 20_000, 65.0) for i in range(360)])
    await tc.end_session(headers, session_id, start + 2 * HOUR)
    await tc.settle()
    completed = tc.coordinator.stats.completed
    computes = sum((await tc.computes()).values())

    params = {"window_minutes": 90, "resolution": "1m"}
    answers = await asyncio.gather(*(tc.get(headers, session_id, **params) for _ in range(1000)))
    await tc.settle()

    assert {a.status_code for a in answers} <= {200, 202}
    assert any(a.status_code == 202 for a in answers)
    assert tc.coordinator.stats.completed == completed + 1
    assert sum((await tc.computes()).values()) == computes + 1
    assert tc.coordinator.stats.peak_inflight <= 3
    after = await tc.get(headers, session_id, **params)
    assert after.status_code == 200 and after.json()["state"] == "ready"


async def cold_sessions(db: Database, user_id: str, now_ms: int, *, count: int) -> list[str]:
    """``count`` ended 20-minute sessions 8 h apart, each with a heart rate every minute, and
    no cached view: written in one transaction and one bulk load. Created, ended and filled
    through the services, each end and the ingest precomputed every session's default views
    (400 computes, about 5 s of each backend's run) that the test then never asks for."""
    starts = [now_ms - (index + 2) * 8 * HOUR for index in range(count)]
    session_ids = []
    async with db.write() as conn:
        for start in starts:
            session = await repository.insert(
                conn,
                user_id=user_id,
                client_session_id=None,
                start_ms=start,
                notes=None,
                now_ms=now_ms,
            )
            await repository.close(
                conn,
                session,
                status=SessionStatus.COMPLETED,
                end_ms=start + 20 * MINUTE,
                now_ms=now_ms,
            )
            session_ids.append(session.id)
    rows = [
        {
            "user_id": user_id,
            "source": "polar",
            "record_id": f"s{index}-{i}",
            "metric": "heart_rate",
            "value": 60.0 + index % 40,
            "unit": "bpm",
            "start_ms": start + i * MINUTE,
            "end_ms": start + i * MINUTE,
            "device": None,
            "deleted": False,
            "change_seq": 1,
        }
        for index, start in enumerate(starts)
        for i in range(20)
    ]
    await insert_sample_rows(db, rows)
    return session_ids


async def test_two_hundred_cold_sessions_stay_within_the_bound(tc, users):
    """200 cold sessions asked at once: never more than 3 computes in flight (in at most two
    batches), the excess shed, and every session ready once the clients follow Retry-After."""
    user_id, token = await users.create()
    headers = {"Authorization": f"Bearer {token}"}
    session_ids = await cold_sessions(tc.db, user_id, tc.clock.now_ms(), count=200)
    stats = tc.coordinator.stats
    computes = sum((await tc.computes()).values())

    params = {"window_minutes": 45, "resolution": "1m"}
    first = await asyncio.gather(*(tc.get(headers, sid, **params) for sid in session_ids))
    assert {r.status_code for r in first} == {202}
    for response in first:
        assert response.headers["retry-after"] == str(response.json()["retry_after_seconds"])
    after_burst = tc.coordinator.stats
    shed = after_burst.shed - stats.shed
    # admitted at least: the pending bound, and a view in each batch that may run at once
    assert 0 < shed <= 200 - min(3, MAX_BATCHES_IN_FLIGHT) - 50
    assert after_burst.pending <= 50 and after_burst.inflight <= 3

    waiting = dict(zip(session_ids, first, strict=True))
    deadline = time.monotonic() + 120
    while waiting:
        assert time.monotonic() < deadline, f"{len(waiting)} sessions never became ready"
        await asyncio.sleep(max(int(r.headers["retry-after"]) for r in waiting.values()))
        answers = await asyncio.gather(*(tc.get(headers, sid, **params) for sid in waiting))
        waiting = {
            sid: answer
            for sid, answer in zip(list(waiting), answers, strict=True)
            if answer.json()["state"] != "ready"
        }
    assert tc.coordinator.stats.peak_inflight <= 3
    assert sum((await tc.computes()).values()) == computes + 200
