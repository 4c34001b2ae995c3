"""Socket.IO clients that send what no library would, against a real server process on each
database: reserved event names (``42["disconnect"]``, ``42["connect", …]``) are ignored, so a
socket cannot cancel its own token expiry; it is still closed within 2 s of its token's expiry
and gets no ``session.updated`` after that."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import httpx
import pytest

from tests.accounts import new_user
from tests.conftest import TEST_SECRET, in_thread
from tests.hardening.engineio_raw import Closed, RawSocket
from tests.ingest.helpers import MINUTE_MS, hr, iso, now_ms
from tests.processes import serve_subprocess, vitalcast_env
from vitalcast.auth import issue_token

TOKEN_TTL_S = 6
CLOSE_BOUND_S = 2.0


def _connected_clients(client: httpx.Client) -> float:
    metrics = client.get("/metrics").text
    found = re.search(r"^vitalcast_socketio_clients (\S+)$", metrics, re.MULTILINE)
    assert found is not None
    return float(found.group(1))


@pytest.mark.slow
def test_a_client_sent_disconnect_does_not_defeat_token_expiry(database_url, tmp_path: Path):
    """After ``42["disconnect"]`` and a forged ``42["connect", …]`` the socket is still served,
    still counted and still in its session's room; when its token expires it gets the
    TOKEN_EXPIRED error, the Socket.IO disconnect and a closed WebSocket within 2 s, and no
    ``session.updated`` after that."""
    env = vitalcast_env(tmp_path / "data", log_level="info", database_url=database_url)
    user_id, long_token = in_thread(asyncio.run, new_user(database_url, "tamperer"))
    headers = {"Authorization": f"Bearer {long_token}"}
    with (
        serve_subprocess(env, tmp_path / "server.log") as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):
        start = now_ms() - 10 * MINUTE_MS
        created = client.post("/api/v1/sessions", json={"started_at": iso(start)}, headers=headers)
        session_id = created.json()["id"]
        issued_s = int(time.time())
        expires_at_s = issued_s + TOKEN_TTL_S
        short_token = issue_token(TEST_SECRET, user_id, now_s=issued_s, ttl_s=TOKEN_TTL_S)

        with RawSocket(server.url) as raw:
            raw.join(short_token)
            assert raw.call(1, "subscribe", {"session_id": session_id})["ok"] is True
            raw.send('42["disconnect"]')
            raw.send('42["disconnect", "client namespace disconnect"]')
            raw.send(json.dumps(["connect", {}, {"token": long_token}]).join(["42", ""]))
            # Handled in order: this answer means the three frames above were taken and ignored.
            assert raw.call(2, "subscribe", {"session_id": session_id})["ok"] is True
            assert _connected_clients(client) == 1

            sample = {"samples": [hr("before-expiry", start + MINUTE_MS)]}
            assert client.post("/api/v1/samples", json=sample, headers=headers).is_success
            raw.next_matching(lambda frame: frame.startswith('42["session.updated"'), 10)

            disconnect = raw.next_matching(
                lambda frame: frame.startswith("41"), expires_at_s + CLOSE_BOUND_S - time.time()
            )
            closed_at_s = time.time()
            bound_s = expires_at_s + CLOSE_BOUND_S - closed_at_s
            assert disconnect == "41"
            assert closed_at_s <= expires_at_s + CLOSE_BOUND_S
            assert [e["code"] for e in raw.events("error")] == ["TOKEN_EXPIRED"]
            with pytest.raises(Closed):  # the WebSocket itself, right after
                raw.next_matching(lambda _frame: False, max(0.1, bound_s))
            updates_after = raw.received[raw.received.index("41") :]
            assert not [f for f in updates_after if f.startswith('42["session.updated"')]

            sample = {"samples": [hr("after-expiry", start + 2 * MINUTE_MS)]}
            assert client.post("/api/v1/samples", json=sample, headers=headers).is_success
            assert _connected_clients(client) == 0
        log = server.log()
    assert "realtime_token_expired" in log
    assert "Traceback" not in log
