"""The Socket.IO surface against a real uvicorn server and real python-socketio clients."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import jwt
import pytest
import socketio

from tests.processes import CLIENT_TLS
from tests.realtime.conftest import ClientFactory, LiveServer, serve_in_thread, updated_fields
from vitalcast.clock import ManualClock
from vitalcast.settings import Settings
from vitalcast.telemetry.ports import TelemetryUpdate
from vitalcast.wiring import Seams

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


async def create_session(url: str, token: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, verify=CLIENT_TLS) as http:
        response = await http.post(
            "/api/v1/sessions", json={}, headers={"Authorization": f"Bearer {token}"}
        )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def end_session(url: str, token: str, session_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, verify=CLIENT_TLS) as http:
        response = await http.post(
            f"/api/v1/sessions/{session_id}/end",
            json={},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert response.status_code == 200, response.text
    return dict(response.json())


def broadcast_updated(
    live: LiveServer, session_id: str, source_watermark: int, **changes: Any
) -> None:
    """session.updated through the server's own broadcaster, as a finished compute sends it."""
    fields = updated_fields(session_id, source_watermark, **changes)
    live.run(live.parts.broadcaster.session_updated(TelemetryUpdate(**fields)))


async def connected_gauge(url: str) -> float:
    async with httpx.AsyncClient(base_url=url, verify=CLIENT_TLS) as http:
        text = (await http.get("/metrics")).text
    line = next(ln for ln in text.splitlines() if ln.startswith("vitalcast_socketio_clients "))
    return float(line.split()[1])


async def gauge_settles_at(url: str, expected: float, timeout_s: float = 10.0) -> bool:
    """True once the connected-clients gauge reads ``expected`` (a disconnect is asynchronous)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (value := await connected_gauge(url)) != expected:
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return value == expected


@sqlite_only
async def test_connect_refuses_missing_bad_and_expired_tokens(
    live: LiveServer, users: Any, socket_client: ClientFactory
) -> None:
    """Without a valid token the handshake is refused with the token's error code as reason."""
    _user, expired = await users.create(ttl_s=-10)
    cases = {None: "UNAUTHENTICATED", "not-a-jwt": "TOKEN_INVALID", expired: "TOKEN_EXPIRED"}
    for token, code in cases.items():
        client = await socket_client(live.url, token, connect=False)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.sio.connect(
                live.url, auth={"token": token}, transports=["websocket"], wait_timeout=10
            )
        [error] = client.connect_errors
        assert error["message"] == code
        assert error["data"]["code"] == code
    assert await connected_gauge(live.url) == 0


@sqlite_only
async def test_connected_clients_gauge_follows_connects_and_disconnects(
    live: LiveServer, users: Any, socket_client: ClientFactory
) -> None:
    """/metrics counts the sockets connected to this node."""
    _user, token = await users.create()
    first = await socket_client(live.url, token)
    second = await socket_client(live.url, token)
    assert await connected_gauge(live.url) == 2
    await first.sio.disconnect()
    assert await gauge_settles_at(live.url, 1)
    await second.sio.disconnect()
    assert await gauge_settles_at(live.url, 0)


async def test_owner_subscribes_and_others_are_refused(
    live: LiveServer, users: Any, socket_client: ClientFactory
) -> None:
    """Only the owner joins a session's room; a stranger gets SESSION_NOT_FOUND and no events."""
    _owner, owner_token = await users.create()
    _stranger, stranger_token = await users.create()
    session = await create_session(live.url, owner_token)
    owner = await socket_client(live.url, owner_token)
    stranger = await socket_client(live.url, stranger_token)

    ack = await owner.call("subscribe", {"session_id": session["id"]})
    assert ack["ok"] is True
    assert ack["session_id"] == session["id"]
    assert ack["session_watermark"] == session["source_watermark"]
    assert ack["live"] is True
    assert isinstance(ack["state"], str)

    refused = await stranger.call("subscribe", {"session_id": session["id"]})
    assert refused == {"ok": False, "code": "SESSION_NOT_FOUND", "message": "Session not found."}
    absent = await stranger.call("subscribe", {"session_id": str(uuid.uuid4())})
    assert absent["code"] == "SESSION_NOT_FOUND"

    ended = await end_session(live.url, owner_token, session["id"])
    owner_status = await owner.next("session.status")
    assert owner_status["session_id"] == session["id"]
    assert owner_status["status"] == "completed"
    assert owner_status["source_watermark"] == ended["source_watermark"]
    # The marker: the stranger's own new session, announced to the stranger's sockets after it.
    theirs = await create_session(live.url, stranger_token)
    assert await stranger.before("session.status", lambda e: e["session_id"] == theirs["id"]) == []


@sqlite_only
async def test_session_status_reaches_subscribers_and_owner_sockets(
    live: LiveServer, users: Any, socket_client: ClientFactory
) -> None:
    """session.status goes to the session room and to every socket of its owner, exactly once
    (nothing else arrives before the status of a session created afterwards)."""
    _owner, token = await users.create()
    watcher = await socket_client(live.url, token)
    session = await create_session(live.url, token)
    started = await watcher.next("session.status")
    assert started == {
        "v": 1,
        "type": "session.status",
        "session_id": session["id"],
        "status": "active",
        "start_ms": session["start_ms"],
        "end_ms": None,
        "source_watermark": session["source_watermark"],
        "live": True,
    }
    assert (await watcher.call("subscribe", {"session_id": session["id"]}))["ok"] is True
    await end_session(live.url, token, session["id"])
    ended = await watcher.next("session.status")
    assert ended["status"] == "completed"
    assert ended["live"] is False
    assert ended["end_ms"] is not None
    later = await create_session(live.url, token)
    assert await watcher.before("session.status", lambda e: e["session_id"] == later["id"]) == []


@sqlite_only
async def test_cancelled_session_status_and_its_event(
    live: LiveServer, users: Any, socket_client: ClientFactory
) -> None:
    """Cancelling a live session ends it as cancelled (not live, ended now, watermark bumped),
    its owner's sockets get one session.status saying so, cancelling again changes nothing and
    ending it afterwards is a 409."""
    _owner, token = await users.create()
    auth = {"Authorization": f"Bearer {token}"}
    watcher = await socket_client(live.url, token)
    session = await create_session(live.url, token)
    assert (await watcher.next("session.status"))["status"] == "active"
    async with httpx.AsyncClient(base_url=live.url) as http:
        cancel = await http.post(f"/api/v1/sessions/{session['id']}/cancel", headers=auth)
        again = await http.post(f"/api/v1/sessions/{session['id']}/cancel", headers=auth)
        read = await http.get(f"/api/v1/sessions/{session['id']}", headers=auth)
        end = await http.post(f"/api/v1/sessions/{session['id']}/end", json={}, headers=auth)
    assert cancel.status_code == 200
    cancelled = cancel.json()
    assert cancelled["status"] == "cancelled" and cancelled["live"] is False
    assert cancelled["end_ms"] is not None and cancelled["end_ms"] >= session["start_ms"]
    assert cancelled["source_watermark"] > session["source_watermark"]
    assert again.status_code == 200 and again.json() == cancelled
    assert read.json() == cancelled
    assert end.status_code == 409
    assert end.json()["code"] == "SESSION_NOT_ACTIVE"

    assert await watcher.next("session.status") == {
        "v": 1,
        "type": "session.status",
        "session_id": session["id"],
        "status": "cancelled",
        "start_ms": session["start_ms"],
        "end_ms": cancelled["end_ms"],
        "source_watermark": cancelled["source_watermark"],
        "live": False,
    }
    later = await create_session(live.url, token)
    assert await watcher.before("session.status", lambda e: e["session_id"] == later["id"]) == []


@sqlite_only
async def test_session_updated_envelope_reaches_only_the_room(
    live: LiveServer, users: Any, socket_client: ClientFactory
) -> None:
    """The broadcaster's session.updated is the DESIGN envelope, delivered to the room only."""
    _owner, token = await users.create()
    first = await create_session(live.url, token)
    second = await create_session(live.url, token)
    subscriber = await socket_client(live.url, token)
    other = await socket_client(live.url, token)
    assert (await subscriber.call("subscribe", {"session_id": first["id"]}))["ok"] is True
    assert (await other.call("subscribe", {"session_id": second["id"]}))["ok"] is True

    broadcast_updated(
        live, first["id"], 43, changed_from_ms=1_699_999_000_000, changed_to_ms=1_699_999_060_000
    )
    event = await subscriber.next("session.updated")
    assert event == {
        "v": 1,
        "type": "session.updated",
        "session_id": first["id"],
        "source_watermark": 43,
        "state": "ready",
        "window_minutes": 60,
        "resolution": "1m",
        "computed_at_ms": 1_700_000_000_000,
        "live": True,
        "changed": {"from_ms": 1_699_999_000_000, "to_ms": 1_699_999_060_000},
        "base_watermark": None,
    }
    broadcast_updated(live, second["id"], 44)
    assert await other.before("session.updated", lambda e: e["session_id"] == second["id"]) == []


@sqlite_only
async def test_unsubscribe_stops_events(
    live: LiveServer, users: Any, socket_client: ClientFactory
) -> None:
    """After unsubscribe the socket no longer receives the session's session.updated (nothing
    arrives before the update of a session it is still subscribed to)."""
    _owner, token = await users.create()
    session = await create_session(live.url, token)
    still = await create_session(live.url, token)
    client = await socket_client(live.url, token)
    assert (await client.call("subscribe", {"session_id": session["id"]}))["ok"] is True
    assert (await client.call("subscribe", {"session_id": still["id"]}))["ok"] is True
    assert await client.call("unsubscribe", {"session_id": session["id"]}) == {
        "ok": True,
        "session_id": session["id"],
    }
    broadcast_updated(live, session["id"], 1)
    broadcast_updated(live, still["id"], 2)
    assert await client.before("session.updated", lambda e: e["session_id"] == still["id"]) == []


@sqlite_only
async def test_malformed_payloads_get_validation_errors(
    live: LiveServer, users: Any, socket_client: ClientFactory
) -> None:
    """Bad subscribe payloads and unknown events are answered with error codes; the socket lives on."""
    _owner, token = await users.create()
    session = await create_session(live.url, token)
    client = await socket_client(live.url, token)
    bad_payloads: list[Any] = [
        None,
        "just a string",
        [session["id"]],
        {},
        {"session_id": "not-a-uuid"},
        {"session_id": 42},
        {"session_id": session["id"], "since_watermark": -1},
        {"session_id": session["id"], "since_watermark": "7"},
        {"session_id": session["id"], "since_watermark": True},
        {"session_id": session["id"], "since_watermark": 1.5},
        {"session_id": session["id"], "extra": 1},
    ]
    for payload in bad_payloads:
        ack = await client.call("subscribe", payload)
        assert ack["ok"] is False, payload
        assert ack["code"] == "VALIDATION_ERROR", payload
        assert ack["message"]
    assert (await client.call("unsubscribe", {"session": 1}))["code"] == "VALIDATION_ERROR"
    assert (await client.call("session:join", {"sessionId": session["id"]}))["code"] == (
        "UNKNOWN_EVENT"
    )
    assert client.sio.connected
    assert (await client.call("subscribe", {"session_id": session["id"]}))["ok"] is True


@sqlite_only
async def test_flooding_socket_is_rate_limited_and_others_are_served(
    settings: Settings, users: Any, socket_client: ClientFactory
) -> None:
    """Beyond the per-socket limit events are refused with RATE_LIMITED; other sockets are unaffected."""
    limited = settings.model_copy(update={"rate_limit_socket_events": "10/minute"})
    _owner, token = await users.create()
    with serve_in_thread(limited) as live:
        session = await create_session(live.url, token)
        flooder = await socket_client(live.url, token)
        bystander = await socket_client(live.url, token)
        acks = await asyncio.gather(
            *(flooder.call("subscribe", {"session_id": session["id"]}) for _ in range(30))
        )
        accepted = [a for a in acks if a["ok"]]
        refused = [a for a in acks if not a["ok"]]
        assert len(accepted) == 10
        assert len(refused) == 20
        assert {a["code"] for a in refused} == {"RATE_LIMITED"}
        assert all(1 <= a["retry_after_seconds"] <= 60 for a in refused)
        assert (await flooder.call("unsubscribe", {"session_id": session["id"]}))["code"] == (
            "RATE_LIMITED"
        )

        assert (await bystander.call("subscribe", {"session_id": session["id"]}))["ok"] is True
        broadcast_updated(live, session["id"], 5)
        assert (await bystander.next("session.updated"))["source_watermark"] == 5
        assert (await flooder.next("session.updated"))["source_watermark"] == 5
        assert flooder.sio.connected


@sqlite_only
async def test_socket_is_disconnected_when_its_token_expires(
    settings: Settings, users: Any, socket_client: ClientFactory
) -> None:
    """A socket whose token expires gets error TOKEN_EXPIRED and is disconnected by the server.

    Both tokens are valid for hours, so the handshake never races an expiry however slow the
    machine; the server's clock stands one second before the short one's ``exp``, so the server
    expires that socket one second after it connected."""
    _owner, short = await users.create(ttl_s=3600)
    _owner2, long = await users.create(ttl_s=24 * 3600)
    expires_ms = jwt.decode(short, options={"verify_signature": False})["exp"] * 1000
    with serve_in_thread(settings, Seams(clock=ManualClock(expires_ms - 1000))) as live:
        expiring = await socket_client(live.url, short)
        lasting = await socket_client(live.url, long)
        assert (await expiring.next("error")) == {
            "code": "TOKEN_EXPIRED",
            "message": "The token has expired.",
        }
        await asyncio.wait_for(expiring.disconnected.wait(), 10)
        assert not expiring.sio.connected
        assert lasting.sio.connected
        assert await gauge_settles_at(live.url, 1)


@sqlite_only
async def test_a_room_event_is_encoded_once_and_reaches_every_subscriber(
    live: LiveServer, users: Any, socket_client: ClientFactory
) -> None:
    """The server encodes session.updated once for its room, however many sockets are in it
    (python-socketio's manager builds one packet per emit and Engine.IO caches its encoding),
    and every socket of the room gets it."""
    _owner, token = await users.create()
    session = await create_session(live.url, token)
    watchers = [await socket_client(live.url, token) for _ in range(6)]
    for watcher in watchers:
        assert (await watcher.call("subscribe", {"session_id": session["id"]}))["ok"] is True
    sio = live.parts.sio
    encoded: list[str] = []

    class CountingPacket(sio.packet_class):  # type: ignore[name-defined,misc]
        def encode(self) -> Any:
            encoded.append(str(self.data[0] if self.data else ""))
            return super().encode()

    stock, sio.packet_class = sio.packet_class, CountingPacket
    try:
        broadcast_updated(live, session["id"], 7)
        events = [await watcher.next("session.updated") for watcher in watchers]
    finally:
        sio.packet_class = stock
    assert [e["source_watermark"] for e in events] == [7] * len(watchers)
    assert encoded.count("session.updated") == 1
