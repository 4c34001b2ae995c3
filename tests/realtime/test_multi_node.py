"""Scaled out: two ``vitalcast serve`` processes and one ``vitalcast worker`` on PostgreSQL and
Redis."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from bullmq import Job, Queue

from tests.accounts import new_user
from tests.ingest.helpers import MINUTE_MS, hr, now_ms
from tests.processes import Child, ServerProcess, serve_subprocesses, spawn, vitalcast_env
from tests.queue.helpers import computes
from tests.realtime.conftest import ClientFactory
from tests.realtime.test_end_to_end import ingest, next_update_at, wait_ready
from tests.realtime.test_socket_server import create_session
from tests.redis_keys import keys_deleted_after
from tests.services import service_missing
from vitalcast.queue.jobs import job_id
from vitalcast.redis_connections import blocking_options
from vitalcast.telemetry.keys import Resolution, TelemetryKey

pytestmark = pytest.mark.slow


def _postgres(url: str | None) -> str:
    """The suite's PostgreSQL database (``service_missing`` when there is none)."""
    if url is None:
        service_missing("PostgreSQL")
    return url


@contextlib.asynccontextmanager
async def _cluster(
    database_url: str, redis_url: str, unique_prefix: str, tmp_path: Path
) -> AsyncIterator[tuple[Child, ServerProcess, ServerProcess]]:
    """A worker and servers A and B on one PostgreSQL database, Redis queue and Socket.IO
    channel of this test's own; their Redis keys are deleted afterwards."""
    env = vitalcast_env(
        tmp_path / "data",
        database_url=database_url,
        redis_url=redis_url,
        socketio_channel=f"{unique_prefix}-sio",
        queue_prefix=unique_prefix,
    )
    async with keys_deleted_after(redis_url, f"{unique_prefix}*"):
        with (
            spawn(["worker"], env, tmp_path / "worker.log") as worker,
            serve_subprocesses(env, [tmp_path / "a.log", tmp_path / "b.log"]) as (node_a, node_b),
        ):
            yield worker, node_a, node_b


async def test_client_on_a_receives_update_for_ingest_via_b_computed_by_worker(
    pg_database_url: str | None,
    redis_url: str,
    unique_prefix: str,
    tmp_path: Path,
    socket_client: ClientFactory,
) -> None:
    """A client on server A gets session.updated for an ingest made through server B and
    computed by the worker; neither server computed it itself."""
    pg = _postgres(pg_database_url)
    _user_id, token = await new_user(pg)
    async with _cluster(pg, redis_url, unique_prefix, tmp_path) as (worker, node_a, node_b):
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
        assert await computes(node_a.url) == 0
        assert await computes(node_b.url) == 0


async def test_a_live_update_computed_by_the_ingesting_server_reaches_both_servers(
    pg_database_url: str | None,
    redis_url: str,
    unique_prefix: str,
    tmp_path: Path,
    socket_client: ClientFactory,
) -> None:
    """Once the session's view is cached (its first, cold compute is the worker's), the next
    live update is computed by server B, which took the ingest: a watcher on B (delivered on
    B's own node) and a watcher on A (through Redis) both get ``session.updated`` at its
    watermark, and the worker ran no compute for it."""
    pg = _postgres(pg_database_url)
    user_id, token = await new_user(pg)
    async with _cluster(pg, redis_url, unique_prefix, tmp_path) as (worker, node_a, node_b):
        session = await create_session(node_b.url, token)
        watchers = [await socket_client(node.url, token) for node in (node_a, node_b)]
        for watcher in watchers:
            subscribed = await watcher.call("subscribe", {"session_id": session["id"]})
            assert subscribed["ok"] is True
        first = await ingest(node_b.url, token, [hr("c0", now_ms() - MINUTE_MS)])
        await wait_ready(node_b.url, token, session["id"], first)
        assert await computes(node_b.url) == 0

        second = await ingest(node_b.url, token, [hr("c1", now_ms())])
        for watcher in watchers:
            event = await next_update_at(watcher, second, timeout_s=30)
            assert (event["session_id"], event["source_watermark"]) == (session["id"], second)
        assert await computes(node_b.url) == 1
        assert await computes(node_a.url) == 0
        assert worker.process.poll() is None, worker.log()
        key = TelemetryKey(session["id"], 60, Resolution.ONE_MINUTE, user_id=user_id)
        queue = Queue(
            "session-telemetry",
            {"connection": blocking_options(redis_url), "prefix": unique_prefix},
        )
        try:
            assert await Job.fromId(queue, job_id(key, second)) is None
        finally:
            await queue.close()
