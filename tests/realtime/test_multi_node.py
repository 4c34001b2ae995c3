"""Scaled out: two ``vitalcast serve`` processes and one ``vitalcast worker`` on PostgreSQL + Redis."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from tests.conftest import TEST_SECRET, service_missing
from tests.ingest.helpers import MINUTE_MS, hr, now_ms
from tests.realtime.conftest import ClientFactory, serve_subprocesses, spawn, subprocess_env
from tests.realtime.test_end_to_end import ingest, next_update_at, wait_ready
from tests.realtime.test_socket_server import create_session
from vitalcast.auth import issue_token
from vitalcast.db.engine import Database, create_engine
from vitalcast.sessions import repository as session_repository

pytestmark = pytest.mark.slow


async def pg_user(url: str) -> str:
    """A token for a new user in the PostgreSQL database the processes share."""
    db = Database(create_engine(url))
    try:
        async with db.write() as conn:
            user_id = await session_repository.get_or_create_user(
                conn, f"mn-{uuid.uuid4().hex[:8]}", now_ms=now_ms()
            )
    finally:
        await db.dispose()
    return issue_token(TEST_SECRET, user_id, now_s=int(time.time()), ttl_s=3600)


@contextlib.asynccontextmanager
async def redis_keys_removed(url: str, prefix: str) -> AsyncIterator[None]:
    """Delete this test's BullMQ keys afterwards (never FLUSHDB the shared Redis)."""
    try:
        yield
    finally:
        client = aioredis.Redis.from_url(url)
        try:
            async for key in client.scan_iter(match=f"{prefix}*", count=500):
                await client.delete(key)
        finally:
            await client.aclose()


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
    env = subprocess_env(
        tmp_path,
        database_url=pg_database_url,
        redis_url=redis_url,
        socketio_channel=f"{unique_prefix}-sio",
        queue_prefix=unique_prefix,
    )
    token = await pg_user(pg_database_url)
    async with redis_keys_removed(redis_url, unique_prefix):
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

            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            assert await server_computes(node_a.url) == 0
            assert await server_computes(node_b.url) == 0
