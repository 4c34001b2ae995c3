"""Fan-out through Redis: a write-only broadcaster (as in a worker) reaches clients of a server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.realtime.conftest import ClientFactory, serve_in_thread, updated_fields
from tests.realtime.test_socket_server import create_session
from vitalcast.observability import Metrics
from vitalcast.realtime.broadcaster import WebSocketBroadcaster
from vitalcast.settings import Settings
from vitalcast.telemetry.ports import TelemetryUpdate

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def _envelope(session_id: str, watermark: int) -> dict[str, Any]:
    fields = updated_fields(session_id, watermark)
    changed = {"from_ms": fields.pop("changed_from_ms"), "to_ms": fields.pop("changed_to_ms")}
    return {**fields, "changed": changed}


@contextlib.asynccontextmanager
async def worker_broadcaster(
    settings: Settings, metrics: Metrics | None = None
) -> AsyncIterator[WebSocketBroadcaster]:
    broadcaster = WebSocketBroadcaster.for_worker(settings, metrics=metrics)
    try:
        yield broadcaster
    finally:
        await broadcaster.close()


async def test_worker_broadcaster_reaches_server_clients(
    settings: Settings,
    redis_url: str,
    unique_prefix: str,
    users: Any,
    socket_client: ClientFactory,
) -> None:
    """A write-only manager's emits reach the room on a server, in order; a server on another
    channel delivers nothing of them (only what is published on its own channel afterwards)."""
    scaled = settings.model_copy(
        update={"redis_url": redis_url, "socketio_channel": f"{unique_prefix}-sio"}
    )
    elsewhere = settings.model_copy(
        update={"redis_url": redis_url, "socketio_channel": f"{unique_prefix}-other"}
    )
    _owner, token = await users.create()
    with serve_in_thread(scaled) as node, serve_in_thread(elsewhere) as other_node:
        session = await create_session(node.url, token)
        client = await socket_client(node.url, token)
        stranger_channel = await socket_client(other_node.url, token)
        assert (await client.call("subscribe", {"session_id": session["id"]}))["ok"] is True
        assert (await stranger_channel.call("subscribe", {"session_id": session["id"]}))["ok"]

        async with worker_broadcaster(scaled) as broadcaster:
            await broadcaster.session_updated(TelemetryUpdate(**updated_fields(session["id"], 7)))
            await broadcaster.session_updated(TelemetryUpdate(**updated_fields(session["id"], 8)))
            first = await client.next("session.updated", timeout_s=5)
            second = await client.next("session.updated", timeout_s=5)
            assert (first["source_watermark"], second["source_watermark"]) == (7, 8)
            assert first == {"v": 1, "type": "session.updated", **_envelope(session["id"], 7)}
        async with worker_broadcaster(elsewhere) as marker:
            await marker.session_updated(TelemetryUpdate(**updated_fields(session["id"], 9)))
        arrived_first = await stranger_channel.before(
            "session.updated", lambda e: e["source_watermark"] == 9
        )
        assert arrived_first == []


async def test_worker_broadcaster_never_raises_when_redis_is_down(
    settings: Settings, redis_url: str, unique_prefix: str
) -> None:
    """Emitting with Redis unreachable returns normally (a push must not fail a compute) and is
    not counted as emitted; the same emit through a reachable Redis is counted."""
    for url, counted in (("redis://127.0.0.1:1/0", 0.0), (redis_url, 1.0)):
        metrics = Metrics()
        configured = settings.model_copy(
            update={"redis_url": url, "socketio_channel": unique_prefix}
        )
        async with worker_broadcaster(configured, metrics) as broadcaster:
            await broadcaster.session_updated(
                TelemetryUpdate(**updated_fields("00000000-0000-0000-0000-000000000000", 1))
            )
        emitted = metrics.registry.get_sample_value(
            "vitalcast_events_emitted_total", {"type": "session.updated"}
        )
        assert (emitted or 0.0) == counted, url
