"""The request stack against a real ``vitalcast serve`` process: a flood of frames the frame gate
drops closes the flooding socket (logged once) while ``/healthz`` keeps answering, and a 1 MB
header is refused before it is buffered."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.accounts import new_user
from tests.processes import (
    ServerProcess,
    free_port,
    serve_subprocess,
    spawn,
    vitalcast_env,
    wait_healthy,
)

FLOOD_S = 3.0
FLOODERS = 4


def rss_mb(server: ServerProcess) -> float:
    """The server process's resident memory now (VmRSS), in MB."""
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def healthz_latencies_ms(url: str, seconds: float) -> list[float]:
    latencies = []
    with httpx.Client(base_url=url, timeout=10) as http:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            began = time.perf_counter()
            assert http.get("/healthz").status_code == 200
            latencies.append((time.perf_counter() - began) * 1000)
            time.sleep(0.01)
    return latencies


def test_a_dropped_frame_flood_closes_the_socket_and_healthz_stays_fast(tmp_path):
    """Frames the gate drops (``42["disconnect"]``, acks) were free: 309k in 3 s wrote 38 MB of
    log and pushed /healthz to seconds. Now each spends the socket's event budget: a flooding
    socket is closed, its drops and its flood are logged once each, and /healthz's median stays
    under 50 ms while four clients flood from another process (reconnecting whenever they are
    closed)."""
    env = vitalcast_env(tmp_path / "data", log_level="info")
    with serve_subprocess(env, tmp_path / "server.log") as server:
        quiet = healthz_latencies_ms(server.url, 1.0)
        flooder = subprocess.Popen(
            [sys.executable, "-m", "tests.hardening.frame_flood", server.url, str(FLOOD_S), "4"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(0.3)
            latencies = healthz_latencies_ms(server.url, FLOOD_S - 0.5)
            out, _ = flooder.communicate(timeout=60)
        finally:
            flooder.kill()
        log = server.log()
    closed = json.loads(out)
    p50_ms = statistics.median(latencies)
    print(
        f"healthz p50 {p50_ms:.1f} ms during the flood ({statistics.median(quiet):.1f} ms "
        f"quiet); {len(closed)} connections closed after {closed} frames"
    )
    assert len(closed) >= FLOODERS
    floods = log.count("realtime_frame_flood")
    assert floods >= len(closed)
    # one drop line per connection at most, not one per frame
    assert log.count("realtime_frame_dropped") <= floods + FLOODERS
    # Under 50 ms, or within 10× the quiet median of this run on a machine loaded by other
    # tests; the unbudgeted drops pushed it to 0.8–4 s.
    assert p50_ms < max(50.0, 10 * statistics.median(quiet))


def _send_head(url: str, head: bytes) -> bytes:
    """Send ``head`` on a raw connection and return what the server answers (it may close the
    connection while the head is still being sent)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        try:
            for start in range(0, len(head), 65_536):
                conn.sendall(head[start : start + 65_536])
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        try:
            while chunk := conn.recv(65_536):
                answer += chunk
        except ConnectionResetError:
            pass
        return answer


def test_a_1_mb_header_is_refused_before_it_is_buffered(tmp_path):
    """One 200 MB header line was buffered whole (+628 MB of RSS). Twenty 1 MB headers are
    answered 431 HEADERS_TOO_LARGE, the server's RSS grows by less than 20 MB, and a request
    with ordinary headers (an 8 KB one included) is still answered."""
    env = vitalcast_env(tmp_path / "data", log_level="warning")
    with serve_subprocess(env, tmp_path / "server.log") as server:
        for _ in range(5):
            httpx.get(f"{server.url}/healthz", headers={"X-Pad": "p" * 8_000})
        before = rss_mb(server)
        big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 1_000_000 + b"\r\n\r\n"
        answers = [_send_head(server.url, big) for _ in range(20)]
        grown = rss_mb(server) - before
        normal = httpx.get(f"{server.url}/healthz", headers={"X-Pad": "p" * 8_000})
    print(f"RSS grew {grown:.1f} MB over twenty 1 MB headers")
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert b'"code":"HEADERS_TOO_LARGE"' in answer
    assert normal.status_code == 200
    assert grown < 20


async def test_a_request_cut_at_shutdown_is_answered_and_logs_no_traceback(tmp_path):
    """A request still in flight when the shutdown grace ends (here a POST whose body never
    completes) used to log a CancelledError traceback: it is answered 503 SHUTTING_DOWN
    with Retry-After, logged in one line, and the server exits as usual."""
    data = tmp_path / "data"
    env = vitalcast_env(data, log_level="info")
    port = free_port()
    args = ["serve", "--port", str(port), "--shutdown-grace", "1"]
    with spawn(args, env, tmp_path / "server.log") as child:
        server = ServerProcess(child.process, child.log_path, f"http://127.0.0.1:{port}")
        wait_healthy(server)
        _, token = await new_user(f"sqlite+aiosqlite:///{data / 'vitalcast.db'}", "cut")
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.sendall(
                b"POST /api/v1/samples HTTP/1.1\r\nHost: x\r\n"
                + f"Authorization: Bearer {token}\r\n".encode()
                + b'Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"samples": ['
            )
            await asyncio.sleep(0.5)
            child.process.send_signal(signal.SIGTERM)
            answer = b""
            while chunk := conn.recv(65_536):
                answer += chunk
        child.process.wait(15)
        log = child.log()
    assert answer.startswith(b"HTTP/1.1 503 "), answer[:300]
    assert b"SHUTTING_DOWN" in answer
    assert "Traceback" not in log and "CancelledError" not in log, log[-3000:]
    assert "request_cut_at_shutdown" in log
