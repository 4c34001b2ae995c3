"""``vitalcast token revoke NAME`` against a running ``vitalcast serve`` (real processes, each
database): every local token issued to NAME before it is refused on HTTP (401 TOKEN_REVOKED) and
on Socket.IO connect, an open socket is closed with the reason, a token created afterwards
works, and another user is untouched. Embedded, the server learns it from its revocation poll."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import httpx
import socketio

from tests.accounts import new_user
from tests.processes import run_cli, serve_subprocess, vitalcast_env


async def _connect(url: str, token: str) -> tuple[socketio.AsyncClient, dict[str, Any]]:
    sio = socketio.AsyncClient(reconnection=False)
    seen: dict[str, Any] = {"errors": [], "refused": [], "closed": asyncio.Event()}
    sio.on("error", seen["errors"].append)
    sio.on("connect_error", seen["refused"].append)

    async def closed(*_reason: Any) -> None:
        seen["closed"].set()

    sio.on("disconnect", closed)
    with contextlib.suppress(socketio.exceptions.ConnectionError):
        await sio.connect(url, auth={"token": token}, transports=["websocket"], wait_timeout=10)
    return sio, seen


async def test_token_revoke_refuses_older_tokens_everywhere(
    database_url: str, tmp_path: Path
) -> None:
    name = "revoke-me"
    _user_id, token = await new_user(database_url, name)
    _other_id, other = await new_user(database_url)
    env = vitalcast_env(tmp_path / "data", database_url=database_url, revocation_poll_ms="200")
    with serve_subprocess(env, tmp_path / "server.log") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            mine = {"Authorization": f"Bearer {token}"}
            assert (await client.get("/api/v1/sessions", headers=mine)).status_code == 200
            sio, seen = await _connect(server.url, token)
            bystander, _ = await _connect(server.url, other)
            assert sio.connected and bystander.connected

            done = await asyncio.to_thread(run_cli, ["token", "revoke", name], env)
            assert done.returncode == 0, done.stderr
            await asyncio.wait_for(seen["closed"].wait(), 30)
            assert [e["code"] for e in seen["errors"]] == ["TOKEN_REVOKED"]
            assert bystander.connected

            refused = await client.get("/api/v1/sessions", headers=mine)
            assert refused.status_code == 401
            assert refused.json()["code"] == "TOKEN_REVOKED"
            again, again_seen = await _connect(server.url, token)
            assert not again.connected
            assert again_seen["refused"][0]["message"] == "TOKEN_REVOKED"

            created = await asyncio.to_thread(run_cli, ["token", "create", name], env)
            fresh = {"Authorization": f"Bearer {created.stdout.strip()}"}
            assert (await client.get("/api/v1/sessions", headers=fresh)).status_code == 200
            others = {"Authorization": f"Bearer {other}"}
            assert (await client.get("/api/v1/sessions", headers=others)).status_code == 200
            await bystander.disconnect()

        missing = await asyncio.to_thread(run_cli, ["token", "revoke", "nobody-here"], env)
        assert missing.returncode == 1
