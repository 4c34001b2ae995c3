"""Engine.IO polling abuse against a real server process: POSTs over the packet limit, and packet
types a client never sends, are answered at once (python-engineio left them hanging until the
client polled, which an attacker never does), and the server still stops on SIGTERM within its
grace period afterwards."""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.hardening.engineio_raw import RawPolling
from tests.processes import ServerProcess, free_port, spawn, vitalcast_env, wait_healthy
from vitalcast.realtime.broadcaster import MAX_MESSAGE_BYTES

GRACE_S = 5
# An answer must come within this; python-engineio never answered at all.
ANSWER_TIMEOUT_S = 1.0


@pytest.mark.slow
def test_oversize_and_unexpected_polling_posts_are_answered_and_sigterm_stops_the_server(
    tmp_path: Path,
) -> None:
    """Fifty oversize polling POSTs at once (17 KB and 3 MB) each get 413 BODY_TOO_LARGE within
    a second, packet types a client never sends get 400 MALFORMED_PACKET, a well-formed POST
    is still served, and then SIGTERM ends the server within its grace period."""
    env = vitalcast_env(tmp_path / "data", log_level="info")
    port = free_port()
    args = ["serve", "--port", str(port), "--shutdown-grace", str(GRACE_S)]
    with spawn(args, env, tmp_path / "server.log") as child:
        server = ServerProcess(child.process, child.log_path, f"http://127.0.0.1:{port}")
        wait_healthy(server)
        sockets = [RawPolling(server.url, timeout_s=ANSWER_TIMEOUT_S) for _ in range(5)]
        bodies = [b"4" + b"x" * (MAX_MESSAGE_BYTES + 600)] * 45 + [b"4" + b"x" * 3_000_000] * 5

        def post(index: int) -> httpx.Response:
            return sockets[index % len(sockets)].post(bodies[index])

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(post, range(len(bodies))))
        assert [a.status_code for a in answers] == [413] * len(bodies)
        assert {a.json()["code"] for a in answers} == {"BODY_TOO_LARGE"}
        for unexpected in (b"0", b"2", b"6", b"9", b"4x", b"b!!!", b"\xff"):
            answer = sockets[0].post(unexpected)
            assert answer.status_code == 400, unexpected
            assert answer.json()["code"] == "MALFORMED_PACKET"
        assert sockets[0].post(b"3").status_code == 200, "a pong is still taken"
        for raw in sockets:
            raw.close()

        child.process.send_signal(signal.SIGTERM)
        child.process.wait(GRACE_S + 2)
        log = child.log()
    # uvicorn ends a graceful shutdown by re-raising the signal it stopped for.
    assert child.process.returncode in (0, -signal.SIGTERM), log[-3000:]
    assert "Traceback" not in log
    assert "server_stopped" in log
