"""Ingest → compute → save → ``session.updated`` on a real server, and resume after a reconnect."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from tests.ingest.helpers import MINUTE_MS, hr, now_ms
from tests.processes import CLIENT_TLS
from tests.realtime.conftest import ClientFactory, LiveServer, SocketClient
from tests.realtime.test_socket_server import create_session


async def ingest(url: str, token: str, samples: list[dict[str, Any]]) -> int:
    """POST the samples; the user's change_seq after it."""
    async with httpx.AsyncClient(base_url=url, verify=CLIENT_TLS) as http:
        response = await http.post(
            "/api/v1/samples",
            json={"samples": samples},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert response.status_code == 200, response.text
    return int(response.json()["change_seq"])


async def telemetry(url: str, token: str, session_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, verify=CLIENT_TLS) as http:
        response = await http.get(
            f"/api/v1/sessions/{session_id}/telemetry",
            headers={"Authorization": f"Bearer {token}"},
        )
    assert response.status_code in (200, 202), response.text
    return dict(response.json())


async def wait_ready(url: str, token: str, session_id: str, watermark: int) -> dict[str, Any]:
    """The default-window telemetry once it is ready at ``watermark`` (polls for up to 60 s)."""
    deadline = time.monotonic() + 60
    while True:
        body = await telemetry(url, token, session_id)
        payload = body.get("telemetry") or {}
        if body["state"] == "ready" and payload.get("source_watermark") == watermark:
            return body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.1)


async def next_update_at(client: SocketClient, watermark: int, timeout_s: float = 30) -> Any:
    """The first session.updated carrying ``watermark`` or a newer one."""
    deadline = time.monotonic() + timeout_s
    while True:
        event = await client.next("session.updated", max(0.01, deadline - time.monotonic()))
        if event["source_watermark"] >= watermark:
            return event


async def test_ingest_pushes_session_updated_and_get_is_ready(
    live: LiveServer, users: Any, socket_client: ClientFactory
) -> None:
    """A subscriber receives session.updated after an ingest; a GET at its watermark is ready."""
    _user, token = await users.create()
    session = await create_session(live.url, token)
    client = await socket_client(live.url, token)
    assert (await client.call("subscribe", {"session_id": session["id"]}))["ok"] is True

    start = now_ms()
    seq = await ingest(
        live.url, token, [hr(f"r{i}", start - i * MINUTE_MS, 70 + i) for i in range(5)]
    )
    event = await next_update_at(client, seq)
    assert event["source_watermark"] == seq
    assert event["session_id"] == session["id"]
    assert event["state"] == "ready"
    assert event["live"] is True
    assert set(event) == {
        "v",
        "type",
        "session_id",
        "source_watermark",
        "state",
        "window_minutes",
        "resolution",
        "computed_at_ms",
        "live",
        "changed",
        "base_watermark",
    }
    body = await telemetry(live.url, token, session["id"])
    assert body["state"] == "ready"
    assert body["telemetry"]["source_watermark"] == event["source_watermark"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_resume_sends_exactly_one_update_with_the_latest_watermark(
    live: LiveServer, users: Any, socket_client: ClientFactory
) -> None:
    """Disconnect, ingest twice, resubscribe with since_watermark: one session.updated, latest."""
    _user, token = await users.create()
    session = await create_session(live.url, token)
    client = await socket_client(live.url, token)
    assert (await client.call("subscribe", {"session_id": session["id"]}))["ok"] is True
    first = await ingest(live.url, token, [hr("a", now_ms() - MINUTE_MS)])
    seen = (await next_update_at(client, first))["source_watermark"]
    await client.sio.disconnect()

    await ingest(live.url, token, [hr("b", now_ms() - 2 * MINUTE_MS)])
    latest = await ingest(live.url, token, [hr("c", now_ms() - 3 * MINUTE_MS)])
    await wait_ready(live.url, token, session["id"], latest)

    back = await socket_client(live.url, token)
    ack = await back.call("subscribe", {"session_id": session["id"], "since_watermark": seen})
    assert ack["ok"] is True
    assert ack["state"] == "ready"
    assert ack["source_watermark"] == latest
    event = await back.next("session.updated")
    assert event["source_watermark"] == latest
    assert event["state"] == "ready"

    current = await socket_client(live.url, token)
    ack = await current.call("subscribe", {"session_id": session["id"], "since_watermark": latest})
    assert ack["ok"] is True

    # The marker: one more ingest, whose update both sockets must get; before it, neither got
    # anything (no second catch-up for the resumed socket, none at all for the current one).
    marker = await ingest(live.url, token, [hr("d", now_ms() - 4 * MINUTE_MS)])
    for resumed in (back, current):
        earlier = await resumed.before("session.updated", lambda e: e["source_watermark"] >= marker)
        assert earlier == []


async def test_a_session_ended_through_the_service_precomputes_and_tells_subscribers(
    live: LiveServer, users: Any, socket_client: ClientFactory
) -> None:
    """Ending a session through ``SessionService.end`` (what the demo does when the server stops,
    with no HTTP route involved) emits ``session.status`` and precomputes the default window at
    1m and 5m, each announced by ``session.updated``."""
    user_id, token = await users.create()
    session = await create_session(live.url, token)
    client = await socket_client(live.url, token)
    assert (await client.call("subscribe", {"session_id": session["id"]}))["ok"] is True
    start = now_ms()
    await ingest(live.url, token, [hr(f"e{i}", start - i * MINUTE_MS, 70 + i) for i in range(5)])

    ended = live.run(live.parts.sessions.end(user_id, session["id"], end_ms=None))
    status = await client.next("session.status")
    while status["status"] != "completed":
        status = await client.next("session.status")
    assert (status["session_id"], status["live"]) == (session["id"], False)
    assert status["end_ms"] == ended.end_ms

    precomputed = set()
    while precomputed != {"1m", "5m"}:
        event = await next_update_at(client, ended.source_watermark)
        if event["live"] is False and event["window_minutes"] == 60:
            precomputed.add(event["resolution"])
    async with httpx.AsyncClient(base_url=live.url) as http:
        for resolution in ("1m", "5m"):
            response = await http.get(
                f"/api/v1/sessions/{session['id']}/telemetry",
                params={"resolution": resolution},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert response.json()["state"] == "ready", resolution
