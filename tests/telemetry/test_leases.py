"""Compute leases across nodes: takeover after expiry, no overwrite by a taken-over compute,
renewal while computing, and failures that back off while the last payload stays served."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import sqlalchemy as sa

from tests.doubles import RecordingListener
from tests.telemetry.conftest import MINUTE, hr
from tests.waits import eventually
from vitalcast.clock import ManualClock
from vitalcast.db.engine import Database, create_engine
from vitalcast.observability import Metrics
from vitalcast.settings import Settings
from vitalcast.telemetry.compute.incremental import (
    Aggregator,
    BatchComputed,
    BatchRead,
    assemble_batch,
)
from vitalcast.telemetry.keys import ComputeOutcome, Resolution, ScheduleReason, TelemetryKey
from vitalcast.telemetry.run.computer import TelemetryComputer
from vitalcast.telemetry.store import queries
from vitalcast.telemetry.store.leases import SessionTelemetryCacheRepository

HOUR = 60 * MINUTE


@asynccontextmanager
async def node(
    settings: Settings,
    clock: ManualClock,
    owner_id: str,
    *,
    lease_ms: int = 30_000,
    aggregator: Aggregator = assemble_batch,
) -> AsyncIterator[TelemetryComputer]:
    """Another process's telemetry computer on the same database (it tells nobody)."""
    db = Database(create_engine(settings.resolved_database_url))
    computer = TelemetryComputer(
        db,
        clock,
        Metrics(),
        RecordingListener(),
        lease_ms=lease_ms,
        owner_id=owner_id,
        aggregator=aggregator,
        cache=SessionTelemetryCacheRepository(),
    )
    try:
        yield computer
    finally:
        await db.dispose()


async def _ended_session(tc, headers) -> tuple[str, int]:
    start = tc.clock.now_ms() - 4 * HOUR
    session_id = await tc.start_session(headers, start)
    await tc.post_samples(headers, [hr(f"hr-{i}", start + i * MINUTE, 70.0) for i in range(60)])
    await tc.end_session(headers, session_id, start + HOUR)
    await tc.settle()
    return session_id, start


async def _row(tc, key: TelemetryKey):
    async with tc.db.read() as conn:
        return await queries.row_of(conn, key)


class StalledCompute:
    """An aggregator for a node that stalls mid-compute: it aggregates, sets ``aggregated``, then
    holds its result until ``wake_up`` is set."""

    def __init__(self) -> None:
        self.aggregated = asyncio.Event()
        self.wake_up = asyncio.Event()

    async def __call__(self, db: Database, read: BatchRead) -> BatchComputed:
        computed = await assemble_batch(db, read)
        self.aggregated.set()
        await self.wake_up.wait()
        return computed


async def test_dead_holders_lease_is_taken_over_once_it_expires(tc, users):
    """A lease left by a crashed node blocks computes until it expires, then the next GET's
    compute takes it over and the answer becomes ready."""
    user_id, token = await users.create()
    headers = {"Authorization": f"Bearer {token}"}
    session_id, _start = await _ended_session(tc, headers)
    key = TelemetryKey(session_id, 30, Resolution.ONE_MINUTE, user_id=user_id)
    async with tc.db.write() as conn:
        await SessionTelemetryCacheRepository().take_lease(
            conn, key, owner="crashed-node", now_ms=tc.clock.now_ms(), lease_ms=30_000
        )
    params = {"window_minutes": 30, "resolution": "1m"}
    busy_before = tc.coordinator.stats.outcomes.get("lease_busy", 0)
    first = await tc.get(headers, session_id, **params)
    await tc.settle()
    assert first.status_code == 202
    assert tc.coordinator.stats.outcomes["lease_busy"] == busy_before + 1
    assert (await tc.get(headers, session_id, **params)).status_code == 202
    await tc.settle()

    tc.clock.advance(30_001)
    completed = tc.coordinator.stats.completed
    await tc.get(headers, session_id, **params)
    await tc.settle()
    ready = await tc.get(headers, session_id, **params)
    assert ready.status_code == 200 and ready.json()["state"] == "ready"
    assert tc.coordinator.stats.completed == completed + 1
    row = await _row(tc, key)
    assert row.lease_owner is None and row.payload is not None


async def test_slow_compute_whose_lease_was_taken_over_cannot_overwrite(tc, users, settings):
    """Node A aggregates old data and stalls past its lease; node B takes over and saves the new
    data; when A wakes up its save is refused and B's result stays."""
    user_id, token = await users.create()
    headers = {"Authorization": f"Bearer {token}"}
    session_id, start = await _ended_session(tc, headers)
    key = TelemetryKey(session_id, 30, Resolution.ONE_MINUTE, user_id=user_id)
    stalling = StalledCompute()

    async with (
        node(settings, tc.clock, "node-a", aggregator=stalling) as node_a,
        node(settings, tc.clock, "node-b") as node_b,
    ):
        slow = asyncio.create_task(node_a.compute(key, reason=ScheduleReason.CACHE_MISS))
        await asyncio.wait_for(stalling.aggregated.wait(), 30)
        assert (await _row(tc, key)).lease_owner == "node-a"
        await tc.post_samples(headers, [hr("new", start + 10 * MINUTE, 155.0)])
        await tc.settle()
        tc.clock.advance(30_001)
        assert await node_b.compute(key, reason=ScheduleReason.STALE_READ) is (
            ComputeOutcome.COMPUTED
        )
        newer = await _row(tc, key)
        stalling.wake_up.set()
        assert await slow is ComputeOutcome.LEASE_LOST

    row = await _row(tc, key)
    assert row.payload == newer.payload
    assert row.source_watermark == newer.source_watermark
    session = (await tc.http.get(f"/api/v1/sessions/{session_id}", headers=headers)).json()
    assert row.source_watermark == session["source_watermark"]
    answer = (await tc.get(headers, session_id, window_minutes=30, resolution="1m")).json()
    assert answer["state"] == "ready"
    assert answer["telemetry"]["metrics"]["heart_rate"]["stats"]["max"] == 155.0


async def test_lease_is_renewed_while_computing(tc, users, settings):
    """A long compute keeps extending its lease, so nobody takes it over while it works. After
    each step of the manual clock the test waits until the holder has renewed at the new time
    (the renewal runs on a real-time timer), then checks another node is still refused."""
    user_id, token = await users.create()
    headers = {"Authorization": f"Bearer {token}"}
    session_id, _start = await _ended_session(tc, headers)
    key = TelemetryKey(session_id, 30, Resolution.ONE_MINUTE, user_id=user_id)
    stalling = StalledCompute()

    async with (
        node(settings, tc.clock, "node-a", lease_ms=300, aggregator=stalling) as node_a,
        node(settings, tc.clock, "node-b", lease_ms=300) as node_b,
    ):
        slow = asyncio.create_task(node_a.compute(key, reason=ScheduleReason.CACHE_MISS))
        await asyncio.wait_for(stalling.aggregated.wait(), 30)
        first_expiry = (await _row(tc, key)).lease_expires_ms
        for _ in range(3):
            tc.clock.advance(250)
            renewed_until = tc.clock.now_ms() + 300

            async def renewed(until: int = renewed_until) -> bool:
                return (await _row(tc, key)).lease_expires_ms == until

            await eventually(renewed, what="node A renewed its lease at the new time")
            assert await node_b.compute(key, reason=ScheduleReason.CACHE_MISS) is (
                ComputeOutcome.LEASE_BUSY
            )
        assert (await _row(tc, key)).lease_expires_ms == first_expiry + 750
        stalling.wake_up.set()
        assert await slow is ComputeOutcome.COMPUTED
    assert (await _row(tc, key)).lease_owner is None


async def _rename(tc, old: str, new: str) -> None:
    async with tc.db.write() as conn:
        await conn.execute(sa.text(f"ALTER TABLE {old} RENAME TO {new}"))


async def test_failing_compute_backs_off_and_serves_the_last_payload(tc, users):
    """With the samples table gone, recomputes fail: the answer is failed with the last good
    payload and error.code, retries wait 1 s then 2 s, and it recovers once the table is back."""
    headers = await users.headers()
    start = tc.clock.now_ms() - 30 * MINUTE
    session_id = await tc.start_session(headers, start)
    await tc.post_samples(headers, [hr(f"hr-{i}", start + i * MINUTE, 75.0) for i in range(30)])
    await tc.settle()
    good = (await tc.get(headers, session_id)).json()
    assert good["state"] == "ready" and good["telemetry"]["live"] is True

    await _rename(tc, "health_samples", "health_samples_gone")
    try:
        await tc.end_session(headers, session_id, tc.clock.now_ms())
        await tc.settle()
        failed = await tc.get(headers, session_id)
        body = failed.json()
        assert failed.status_code == 200
        assert body["state"] == "failed"
        assert body["error"]["code"] == "COMPUTE_FAILED" and body["error"]["message"]
        assert body["telemetry"] == good["telemetry"]
        assert failed.headers["retry-after"] == str(body["retry_after_seconds"]) == "1"
        assert "etag" not in failed.headers

        computes = await tc.computes()
        await tc.get(headers, session_id)
        await tc.settle()
        assert await tc.computes() == computes  # still backing off: nothing ran

        tc.clock.advance(1_000)
        await tc.get(headers, session_id)
        await tc.settle()
        # the GET's recompute ran and failed again (the 5m view's own retry may have run too:
        # the coordinator retries a failed trigger once its backoff has elapsed)
        assert (await tc.computes())["failed"] > computes["failed"]
        second = await tc.get(headers, session_id)
        assert second.json()["state"] == "failed"
        assert second.headers["retry-after"] == "2"
    finally:
        await _rename(tc, "health_samples_gone", "health_samples")

    tc.clock.advance(2_000)
    await tc.get(headers, session_id)
    await tc.settle()
    recovered = (await tc.get(headers, session_id)).json()
    assert recovered["state"] == "ready"
    assert recovered["telemetry"]["live"] is False
    assert "error" not in recovered
