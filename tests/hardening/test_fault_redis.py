"""Redis dies during a live session in the scaled-out mode (server + worker subprocesses on
PostgreSQL and a private Redis): the server's subscribed clients keep getting ``session.updated``
from in-process computes, nothing answers 5xx, and when Redis returns the queue, the worker and
the Redis fan-out carry the updates again without any restart."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from tests.accounts import new_user
from tests.hardening.conftest import Subscriber, subscriber
from tests.ingest.helpers import hr, now_ms
from tests.processes import START_TIMEOUT_S, RedisServer, serve_subprocess, spawn, vitalcast_env

pytestmark = pytest.mark.slow

UPDATE_TIMEOUT_S = 30.0
# After Redis returns, the server's pub/sub listener subscribes again on its backoff (1, 2, 4, 5 s).
RECOVERY_TIMEOUT_S = 60.0
OUTAGE_INGESTS = 3


def computes(metrics_text: str) -> float:
    """How many computes this process ran (``vitalcast_computes_total``, all outcomes)."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics_text.splitlines()
        if line.startswith("vitalcast_computes_total{")
    )


async def _ingest(api: httpx.AsyncClient, n: int) -> int:
    """One heart-rate sample of a minute ago into the live session; the new watermark."""
    response = await api.post(
        "/api/v1/samples", json={"samples": [hr(f"live-{n}", now_ms() - 60_000, value=70 + n)]}
    )
    assert response.status_code == 200, response.text
    return int(response.json()["change_seq"])


async def _wait_mode(api: httpx.AsyncClient, mode: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (await api.get("/readyz")).json()["mode"] != mode:
        assert time.monotonic() < deadline, f"/readyz never said {mode}"
        await asyncio.sleep(0.2)


async def _no_server_errors(api: httpx.AsyncClient, session_id: str) -> None:
    for path in (f"/api/v1/sessions/{session_id}/telemetry", f"/api/v1/sessions/{session_id}"):
        assert (await api.get(path)).status_code < 500


async def _expect_update(
    client: Subscriber, watermark: int, timeout_s: float = UPDATE_TIMEOUT_S
) -> None:
    event = await client.update_reaching(watermark, timeout_s)
    assert event["state"] == "ready" and event["live"] is True


async def test_redis_outage_keeps_local_subscribers_updated_and_recovers(
    spare_pg_url: str, spare_redis: RedisServer, tmp_path: Path
) -> None:
    """Redis killed mid-session: 3 ingests still reach the server's subscriber (computed in the
    server), GETs stay below 500, /readyz says degraded; Redis restarted: the next ingest is
    computed by the worker and reaches the subscriber through the Redis fan-out. (The server
    computes no live update inline here, so that every compute outside the outage is the
    worker's: ``tests/queue/test_inline_live_updates.py`` covers the server's own.)"""
    _user_id, token = await new_user(spare_pg_url, "live")
    env = vitalcast_env(
        tmp_path / "data",
        log_level="warning",
        database_url=spare_pg_url,
        redis_url=spare_redis.url,
        inline_live_updates="false",
    )
    with (
        serve_subprocess(env, tmp_path / "server.log") as server,
        spawn(["worker"], env, tmp_path / "worker.log") as worker,
    ):
        async with httpx.AsyncClient(
            base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=10
        ) as api:
            session = (await api.post("/api/v1/sessions", json={})).json()
            async with subscriber(server.url, token) as client:
                assert (await client.subscribe(session["id"]))["ok"] is True
                # the worker was only spawned: its start-up is part of this first wait
                await _expect_update(client, await _ingest(api, 0), START_TIMEOUT_S)
                assert computes((await api.get("/metrics")).text) == 0, "the worker computes"

                spare_redis.kill()
                for n in range(1, 1 + OUTAGE_INGESTS):
                    await _expect_update(client, await _ingest(api, n))
                    await _no_server_errors(api, session["id"])
                ready = (await api.get("/readyz")).json()
                assert ready["mode"] == "degraded"
                in_server = computes((await api.get("/metrics")).text)
                assert in_server >= OUTAGE_INGESTS

                spare_redis.start()
                await _wait_mode(api, "scaled_out")
                await _expect_update(client, await _ingest(api, 99), RECOVERY_TIMEOUT_S)
                await _no_server_errors(api, session["id"])
                assert computes((await api.get("/metrics")).text) == in_server
        assert worker.process.poll() is None, worker.log()[-2000:]
        assert "Traceback" not in server.log(), server.log()[-3000:]
