"""Scaled out: two ``vitalcast serve`` processes and one ``vitalcast worker`` on PostgreSQL + Redis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.accounts import new_user
from tests.ingest.helpers import MINUTE_MS, hr, now_ms
from tests.processes import serve_subprocesses, spawn, vitalcast_env
from tests.realtime.conftest import ClientFactory
from tests.realtime.test_end_to_end import ingest, next_update_at, wait_ready
from tests.realtime.test_socket_server import create_session
from tests.redis_keys import keys_deleted_after
from tests.services import service_missing

pytestmark = pytest.mark.slow


async def server_computes(url: str) -> float:
    """Computes that ran inside this server process (sum over outcomes)."""
    async with httpx.AsyncClient(base_url=url) as http:
        text = (await http.get("/metrics")).text
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("vitalcast_computes_total{")
    )


async def test_client_on_a_receives_update_for_ingest_via_b_computed_by_worker(
    pg_database_url: str | None,
    redis_url: str,
    unique_prefix: str,
    tmp_path: Path,
    socket_client: ClientFactory,
) -> None:
    """A client on server A gets session.updated for an ingest made through server B and
    computed by the worker; neither server computed it itself."""
    if pg_database_url is None:
        service_missing("PostgreSQL")
    assert pg_database_url is not None
    env = vitalcast_env(
        tmp_path / "data",
        database_url=pg_database_url,
        redis_url=redis_url,
        socketio_channel=f"{unique_prefix}-sio",
        queue_prefix=unique_prefix,
    )
    _user_id, token = await new_user(pg_database_url)
    async with keys_deleted_after(redis_url, f"{unique_prefix}*"):
        with (
            spawn(["worker"], env, tmp_path / "worker.log") as worker,
            serve_subprocesses(env, [tmp_path / "a.log", tmp_path / "b.log"]) as (node_a, node_b),
        ):
            session = await create_session(node_b.url, token)
            client = await socket_client(node_a.url, token)
            assert (await client.call("subscribe", {"session_id": session["id"]}))["ok"] is True

            seq = await ingest(
                node_b.url, token, [hr(f"mn{i}", now_ms() - i * MINUTE_MS) for i in range(3)]
            )
            event = await next_update_at(client, seq, timeout_s=30)
            assert event["session_id"] == session["id"]
            assert event["source_watermark"] == seq
            body: dict[str, Any] = await wait_ready(node_a.url, token, session["id"], seq)
            assert body["telemetry"]["source_watermark"] == seq

            assert worker.process.poll() is None, worker.log()
            assert await server_computes(node_a.url) == 0
            assert await server_computes(node_b.url) == 0
