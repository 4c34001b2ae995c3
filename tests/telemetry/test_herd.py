"""Thundering herds: many clients asking at once never stampede the database."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from tests.telemetry.conftest import MINUTE, hr, telemetry_client
from tests.waits import eventually
from vitalcast.clock import ManualClock
from vitalcast.db.engine import Database
from vitalcast.sessions import repository
from vitalcast.sessions.models import SessionStatus
from vitalcast.settings import Settings
from vitalcast.telemetry.compute.incremental import BatchComputed, BatchRead, assemble_batch
from vitalcast.telemetry.read.answer import RETRY_COMPUTING_S, RETRY_SHED_S
from vitalcast.testing import insert_sample_rows
from vitalcast.wiring import Seams

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


class HeldComputes:
    """The app's aggregator, held until ``release``: a compute takes its leases, then waits
    before aggregating, so none finishes (and frees a slot) while a burst of GETs is answered,
    however slowly a loaded machine answers them."""

    def __init__(self) -> None:
        self._released = asyncio.Event()
        #: the views of each batch that reached the hold, in order
        self.batches: list[int] = []

    def release(self) -> None:
        self._released.set()

    async def __call__(self, db: Database, read: BatchRead) -> BatchComputed:
        self.batches.append(len(read.planned))
        await self._released.wait()
        return await assemble_batch(db, read)


async def test_two_hundred_cold_sessions_stay_within_the_bound(
    settings: Settings, clock: ManualClock, users
):
    """200 cold sessions asked at once, with the computes held until every GET was answered (so
    the burst meets a bound that nothing drains, however the machine schedules it): 3 computes
    in flight, 50 waiting, exactly the other 147 shed with 202 and Retry-After; then every
    session is ready once the clients follow Retry-After, one compute per view, never more than
    3 in flight."""
    held = HeldComputes()
    async with telemetry_client(settings, clock, Seams(clock=clock, aggregator=held)) as tc:
        await _two_hundred_cold_sessions(tc, users, held)


async def _two_hundred_cold_sessions(tc, users, held: HeldComputes) -> None:
    user_id, token = await users.create()
    headers = {"Authorization": f"Bearer {token}"}
    session_ids = await cold_sessions(tc.db, user_id, tc.clock.now_ms(), count=200)
    coordinator = tc.coordinator
    stats = coordinator.stats
    computes = sum((await tc.computes()).values())

    params = {"window_minutes": 45, "resolution": "1m"}
    first = await asyncio.gather(*(tc.get(headers, sid, **params) for sid in session_ids))
    assert {r.status_code for r in first} == {202}
    for response in first:
        assert response.headers["retry-after"] == str(response.json()["retry_after_seconds"])
    after_burst = coordinator.stats
    running, waiting_room = coordinator.max_concurrency, coordinator.max_pending
    assert (running, waiting_room) == (3, 50)
    assert (after_burst.inflight, after_burst.pending) == (running, waiting_room)
    excess = 200 - running - waiting_room
    assert after_burst.shed - stats.shed == excess
    assert after_burst.completed == stats.completed
    # a shed GET says so: it is told to come back later than one whose compute was queued
    retry_after = Counter(r.json()["retry_after_seconds"] for r in first)
    assert retry_after == {RETRY_COMPUTING_S: running + waiting_room, RETRY_SHED_S: excess}

    async def all_running() -> bool:
        return len(held.batches) == running

    # the computes in flight really run (their leases taken), each alone in its batch
    await eventually(all_running, what="the admitted computes reach the hold")
    assert held.batches == [1] * running
    held.release()

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
    assert coordinator.stats.peak_inflight <= running
    assert sum((await tc.computes()).values()) == computes + 200
