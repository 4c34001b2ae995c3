"""Share tokens on Socket.IO: a share's socket hears its one session and nothing of the owner's
other sessions, and is closed with the reason when the share is revoked (on every server, scaled
out) or expires (with no request at all)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import socketio

from tests.accounts import new_user
from tests.conftest import Users
from tests.ingest.helpers import MINUTE_MS, hr, now_ms
from tests.processes import CLIENT_TLS, run_cli, serve_subprocesses, vitalcast_env
from tests.realtime.conftest import ClientFactory, LiveServer, serve_in_thread
from tests.realtime.test_end_to_end import ingest, next_update_at
from tests.realtime.test_socket_server import create_session
from tests.redis_keys import keys_deleted_after
from tests.services import service_missing
from vitalcast.clock import ManualClock
from vitalcast.settings import Settings
from vitalcast.wiring import Seams


async def create_share(url: str, token: str, session_id: str, minutes: int = 60) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, verify=CLIENT_TLS) as http:
        created = await http.post(
            f"/api/v1/sessions/{session_id}/shares",
            json={"expires_in_minutes": minutes},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert created.status_code == 201, created.text
    return dict(created.json())


async def revoke_share(url: str, token: str, share_id: str) -> None:
    async with httpx.AsyncClient(base_url=url, verify=CLIENT_TLS) as http:
        answer = await http.delete(
            f"/api/v1/shares/{share_id}", headers={"Authorization": f"Bearer {token}"}
        )
    assert answer.status_code == 204


async def test_a_share_socket_hears_its_session_until_revoked(
    live: LiveServer, users: Users, socket_client: ClientFactory
) -> None:
    _owner, token = await users.create()
    session = await create_session(live.url, token)
    created = await create_share(live.url, token, session["id"])
    viewer = await socket_client(live.url, created["token"])
    owner = await socket_client(live.url, token)
    assert (await viewer.call("subscribe", {"session_id": session["id"]}))["ok"] is True

    other = await create_session(live.url, token)
    refused = await viewer.call("subscribe", {"session_id": other["id"]})
    assert refused["code"] == "SESSION_NOT_FOUND"
    seq = await ingest(live.url, token, [hr("v1", now_ms() - MINUTE_MS)])
    await next_update_at(viewer, seq)
    # The owner's socket heard the other session start; the share's did not (no user room).
    assert [e["session_id"] for e in viewer.drain("session.status")] == []
    assert other["id"] in [e["session_id"] for e in owner.drain("session.status")]

    await revoke_share(live.url, token, created["id"])
    assert (await viewer.next("error", 10))["code"] == "SHARE_REVOKED"
    await asyncio.wait_for(viewer.disconnected.wait(), 10)
    assert owner.sio.connected
    again = await socket_client(live.url, created["token"], connect=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await again.sio.connect(
            live.url, auth={"token": created["token"]}, transports=["websocket"], wait_timeout=10
        )
    assert again.connect_errors[0]["message"] == "SHARE_REVOKED"


async def test_a_share_subscribe_is_in_the_owners_access_log(
    live: LiveServer, users: Users, socket_client: ClientFactory
) -> None:
    """Every subscribe through a share is a read its owner sees (``subscribe``), one per
    subscribe; the owner's own subscribe and a refused one are not."""
    _owner, token = await users.create()
    session = await create_session(live.url, token)
    other = await create_session(live.url, token)
    created = await create_share(live.url, token, session["id"])
    viewer = await socket_client(live.url, created["token"])
    owner = await socket_client(live.url, token)
    for _ in range(2):
        assert (await viewer.call("subscribe", {"session_id": session["id"]}))["ok"] is True
    assert (await viewer.call("subscribe", {"session_id": other["id"]}))["ok"] is False
    assert (await owner.call("subscribe", {"session_id": session["id"]}))["ok"] is True
    live.run(live.parts.share_access.flush())
    async with httpx.AsyncClient(base_url=live.url) as http:
        log = await http.get(
            f"/api/v1/shares/{created['id']}/access",
            headers={"Authorization": f"Bearer {token}"},
        )
    assert log.status_code == 200
    assert [item["kind"] for item in log.json()["items"]] == ["subscribe", "subscribe"]


async def test_a_share_socket_is_closed_when_the_share_expires(
    settings: Settings, users: Users, socket_client: ClientFactory
) -> None:
    """No request needed: the server's clock stands one second before the share's end when the
    socket connects, and the server closes it with SHARE_EXPIRED."""
    clock = ManualClock(now_ms())
    _owner, token = await users.create()
    with serve_in_thread(settings, Seams(clock=clock)) as live:
        session = await create_session(live.url, token)
        created = await create_share(live.url, token, session["id"], minutes=1)
        clock.advance(MINUTE_MS - 1000)
        viewer = await socket_client(live.url, created["token"])
        owner = await socket_client(live.url, token)
        assert (await viewer.next("error", 30))["code"] == "SHARE_EXPIRED"
        await asyncio.wait_for(viewer.disconnected.wait(), 10)
        assert owner.sio.connected


@pytest.mark.slow
async def test_revocations_close_sockets_on_every_server_within_a_second(
    pg_database_url: str | None,
    redis_url: str,
    unique_prefix: str,
    tmp_path: Path,
    socket_client: ClientFactory,
) -> None:
    """Scaled out (two servers, PostgreSQL, Redis): a share revoked through server A closes its
    socket on server B, and ``vitalcast token revoke`` closes the user's socket on B, each
    pushed (revocation polling off) and printed with its delay after the revocation's answer."""
    if pg_database_url is None:
        service_missing("PostgreSQL")
    assert pg_database_url is not None
    env = vitalcast_env(
        tmp_path / "data",
        database_url=pg_database_url,
        redis_url=redis_url,
        socketio_channel=f"{unique_prefix}-sio",
        queue_prefix=unique_prefix,
        rate_limit_prefix=f"{unique_prefix}-rl",
        # Only pub/sub may carry the revocations here.
        revocation_poll_ms="0",
    )
    name = f"scaled-{unique_prefix}"
    _user_id, token = await new_user(pg_database_url, name)
    async with keys_deleted_after(redis_url, f"{unique_prefix}*"):
        with serve_subprocesses(env, [tmp_path / "a.log", tmp_path / "b.log"]) as (a, b):
            session = await create_session(a.url, token)
            created = await create_share(a.url, token, session["id"])
            viewer = await socket_client(b.url, created["token"])
            owner = await socket_client(b.url, token)
            assert (await viewer.call("subscribe", {"session_id": session["id"]}))["ok"]

            await revoke_share(a.url, token, created["id"])
            answered = time.monotonic()
            await asyncio.wait_for(viewer.disconnected.wait(), 10)
            share_closed_s = time.monotonic() - answered
            assert (await viewer.next("error", 1))["code"] == "SHARE_REVOKED"
            assert owner.sio.connected

            done = await asyncio.to_thread(run_cli, ["token", "revoke", name], env)
            answered = time.monotonic()
            assert done.returncode == 0, done.stderr
            await asyncio.wait_for(owner.disconnected.wait(), 10)
            user_closed_s = time.monotonic() - answered
            assert (await owner.next("error", 1))["code"] == "TOKEN_REVOKED"
    # Revocation polling is off, so only the pub/sub push can have closed them; the times are
    # printed, not bounded (a loaded CI machine stretches them, the mechanism stays the same).
    print(f"share socket closed after {share_closed_s:.3f} s, user socket {user_closed_s:.3f} s")
