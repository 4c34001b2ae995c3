"""A server SIGKILLed between an ingest's commit and the compute it triggered loses nothing: the
change log was committed with the samples, so the next server's compute is incremental from the
partials saved before the crash, and exact (equal to a full recompute).

Real processes: the server that dies holds the lease of every compute that starts once the test
has set its flag (the test-only ``tests.held_server``), so the kill lands after the ingest was
acknowledged and before anything was saved; the next server is a plain ``vitalcast serve`` on the
same database."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.ingest.helpers import MINUTE_MS, hr, now_ms
from tests.processes import (
    ServerProcess,
    free_port,
    serve_subprocess,
    spawn,
    vitalcast_env,
    wait_healthy,
)
from vitalcast.clock import iso_ms
from vitalcast.db.engine import Database, create_engine
from vitalcast.db.tables import session_changes, sessions, telemetry_cache
from vitalcast.telemetry.compute.incremental import compute_view
from vitalcast.telemetry.keys import COMPUTE_VERSION, Resolution, TelemetryKey
from vitalcast.testing import load_session

pytestmark = pytest.mark.slow

DEADLINE_S = 60.0


async def _view(url: str, session_id: str) -> sa.Row[Any] | None:
    db = Database(create_engine(url))
    try:
        async with db.read() as conn:
            return (
                await conn.execute(
                    sa.select(telemetry_cache).where(
                        telemetry_cache.c.session_id == session_id,
                        telemetry_cache.c.window_minutes == 60,
                        telemetry_cache.c.resolution == "1m",
                        telemetry_cache.c.compute_version == COMPUTE_VERSION,
                    )
                )
            ).first()
    finally:
        await db.dispose()


async def _until(predicate: Any, what: str) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {DEADLINE_S} s")


async def _ready(http: httpx.AsyncClient, session_id: str, watermark: int) -> bool:
    """GET the default view (which schedules its compute when stale) until it is ready at
    ``watermark``."""
    body = (await http.get(f"/api/v1/sessions/{session_id}/telemetry")).json()
    return body["state"] == "ready" and body["telemetry"]["source_watermark"] == watermark


async def _full_recompute(url: str, key: TelemetryKey, at_ms: int) -> bytes:
    db = Database(create_engine(url))
    try:
        async with db.read() as conn:
            session = await load_session(conn, key)
            assert session is not None
            return (await compute_view(conn, session, key, at_ms, None)).blob
    finally:
        await db.dispose()


async def test_a_crash_between_ingest_and_compute_loses_nothing(
    database_url: str, users: Any, tmp_path: Path
) -> None:
    """Kill -9 the server while the compute of an acknowledged ingest holds its lease: the next
    server's compute of that view is incremental and equals a full recompute."""
    user_id, token = await users.create()
    headers = {"Authorization": f"Bearer {token}"}
    env = vitalcast_env(tmp_path / "data", database_url=database_url, lease_ms="1500")
    port = free_port()
    start = now_ms() - 20 * MINUTE_MS
    hold = tmp_path / "hold"
    args = [str(hold), "--port", str(port)]
    with spawn(args, env, tmp_path / "held.log", module="tests.held_server") as child:
        held = ServerProcess(child.process, child.log_path, f"http://127.0.0.1:{port}")
        await asyncio.to_thread(wait_healthy, held)
        async with httpx.AsyncClient(base_url=held.url, headers=headers, timeout=10) as http:
            created = await http.post("/api/v1/sessions", json={"started_at": iso_ms(start)})
            session_id = created.json()["id"]
            first = [hr(f"a{i}", start + i * MINUTE_MS, 60.0 + i) for i in range(18)]
            seq = (await http.post("/api/v1/samples", json={"samples": first})).json()["change_seq"]
            await _until(lambda: _ready(http, session_id, seq), "the first compute")
            # from here on, the held server's computes hold their leases until it is killed
            hold.touch()
            second = [hr("late", start + 3 * MINUTE_MS + 7_000, 99.5)]
            second += [hr(f"b{i}", start + (18 + i) * MINUTE_MS, 80.0) for i in range(2)]
            answer = await http.post("/api/v1/samples", json={"samples": second})
            assert answer.status_code == 200
            acknowledged = answer.json()["change_seq"]

            async def leased() -> bool:
                row = await _view(database_url, session_id)
                return row is not None and row.lease_owner is not None

            await _until(leased, "the held compute taking its lease")
        child.process.kill()
        child.process.wait(10)

    row = await _view(database_url, session_id)
    assert row is not None and row.source_watermark == seq  # nothing was saved after the ingest
    db = Database(create_engine(database_url))
    try:
        async with db.read() as conn:
            logged = await conn.scalar(
                sa.select(session_changes.c.prev_seq).where(
                    session_changes.c.session_id == session_id,
                    session_changes.c.change_seq == acknowledged,
                )
            )
            watermark = await conn.scalar(
                sa.select(sessions.c.source_watermark).where(sessions.c.id == session_id)
            )
    finally:
        await db.dispose()
    assert (logged, watermark) == (seq, acknowledged)

    with serve_subprocess(env, tmp_path / "next.log") as server:
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=10) as http:
            await _until(lambda: _ready(http, session_id, acknowledged), "the recompute")
            metrics = (await http.get("/metrics")).text
    assert 'vitalcast_compute_paths_total{path="incremental"} 1.0' in metrics, metrics
    row = await _view(database_url, session_id)
    assert row is not None
    key = TelemetryKey(session_id, 60, Resolution.ONE_MINUTE, user_id=user_id)
    assert row.payload == await _full_recompute(database_url, key, row.computed_at_ms)
