"""PostgreSQL crashes in the middle of an ingest load against a real server process: nothing that
was acknowledged is lost, requests during the outage get 503 DATABASE_UNAVAILABLE with a
Retry-After that agrees with the body, and the same requests succeed when retried."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

import httpx
import pytest
import sqlalchemy as sa

from tests.accounts import new_user
from tests.hardening.conftest import SparePostgres
from tests.ingest.helpers import MINUTE_MS, hr, now_ms
from tests.processes import serve_subprocess, vitalcast_env
from vitalcast.db.engine import Database, create_engine
from vitalcast.db.tables import health_samples

pytestmark = pytest.mark.slow

CLIENTS = 4
BATCHES_PER_CLIENT = 30
BATCH = 25
OUTAGE_S = 2.0
TOTAL = CLIENTS * BATCHES_PER_CLIENT * BATCH


@dataclass
class Tally:
    acked: set[str] = field(default_factory=set)
    statuses: Counter[int] = field(default_factory=Counter)
    outage_answers: list[tuple[str, str, int | None]] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


async def _client(
    base: str, token: str, client_no: int, tally: Tally, started: asyncio.Event
) -> None:
    """Send this client's batches one after another; retry each until it is acknowledged."""
    headers = {"Authorization": f"Bearer {token}"}
    at = now_ms() - 30 * MINUTE_MS
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        for batch_no in range(BATCHES_PER_CLIENT):
            ids = [f"c{client_no}-b{batch_no}-{i}" for i in range(BATCH)]
            body = {"samples": [hr(rid, at + i * 1000, value=60 + i) for i, rid in enumerate(ids)]}
            while True:
                response = await client.post("/api/v1/samples", json=body, headers=headers)
                tally.statuses[response.status_code] += 1
                if response.status_code == 200:
                    tally.acked.update(ids)
                    if len(tally.acked) >= TOTAL // 4:
                        started.set()
                    break
                if response.status_code != 503:
                    tally.unexpected.append(f"{response.status_code} {response.text[:200]}")
                    return
                problem = response.json()
                tally.outage_answers.append(
                    (
                        response.headers.get("content-type", ""),
                        problem.get("code", ""),
                        problem.get("retry_after_seconds"),
                    )
                )
                assert response.headers["Retry-After"] == str(problem["retry_after_seconds"])
                await asyncio.sleep(int(response.headers["Retry-After"]))


async def _stored_ids(url: str) -> set[str]:
    db = Database(create_engine(url))
    try:
        async with db.read() as conn:
            return set(await conn.scalars(sa.select(health_samples.c.record_id)))
    finally:
        await db.dispose()


async def test_postgres_crash_during_ingest_loses_nothing_acknowledged(
    spare_postgres: SparePostgres, spare_pg_url: str, tmp_path
) -> None:
    """Crash PostgreSQL (immediate stop: no checkpoint) while 4 clients ingest, restart it after
    2 s: every acknowledged sample is stored, the outage answered only 503 problems with
    Retry-After, and every batch was acknowledged on retry."""
    _user_id, token = await new_user(spare_pg_url, "loader")
    env = vitalcast_env(
        tmp_path / "data",
        log_level="warning",
        database_url=spare_pg_url,
        rate_limit_ingest="100000/minute",
    )
    with serve_subprocess(env, tmp_path / "server.log") as server:
        tally = Tally()
        started = asyncio.Event()
        load = asyncio.gather(
            *(_client(server.url, token, n, tally, started) for n in range(CLIENTS))
        )
        # Crash (no checkpoint) with a quarter of the load acknowledged: restart must replay it.
        await asyncio.wait_for(started.wait(), 60)
        await asyncio.to_thread(spare_postgres.stop, "immediate")
        acked_before_restart = len(tally.acked)
        await asyncio.sleep(OUTAGE_S)
        await asyncio.to_thread(spare_postgres.start)
        await asyncio.wait_for(load, 120)
        server_log = server.log()

    assert tally.unexpected == [], server_log[-3000:]
    assert tally.statuses[503] >= 1, "no request hit the outage"
    assert set(tally.outage_answers) <= {("application/problem+json", "DATABASE_UNAVAILABLE", 2)}
    assert 0 < acked_before_restart < TOTAL
    assert len(tally.acked) == TOTAL
    stored = await _stored_ids(spare_pg_url)
    assert tally.acked <= stored
    assert len(stored) == len(tally.acked)
