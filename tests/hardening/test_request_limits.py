"""Limits before parsing, against a real server process: a 50 MB body to every route the app
serves (Socket.IO's polling and the static files included) is answered 401 or 413 without the
server's memory growing, authentication comes before any byte of a body is read, and a client
that hangs up mid-body costs one info line.

The limits are transport rules and touch no query, so one backend (the embedded SQLite) serves
them; the unknown-user refusals that do query run on both in ``test_authorization``."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.routing import Mount, Route

from tests.conftest import TEST_SECRET
from tests.hardening.engineio_raw import RawPolling
from tests.processes import ServerProcess, run_cli, serve_subprocess, vitalcast_env
from vitalcast.app import create_app
from vitalcast.settings import Settings

BIG = 50 * 1024 * 1024
RSS_GROWTH_LIMIT_KB = 20 * 1024
SOME_SESSION = "00000000-0000-4000-8000-000000000000"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    """A ``vitalcast serve`` on SQLite and a bearer token of an existing user, shared by the
    module's tests: each sends its own requests and none changes what another one checks (the
    user's sessions stay empty, and the log must hold no error and no traceback in all of
    them)."""
    folder = tmp_path_factory.mktemp("limits-server")
    env = vitalcast_env(folder / "data", log_level="info")
    with serve_subprocess(env, folder / "server.log") as running:
        created = run_cli(["token", "create", "alice"], env)
        assert created.returncode == 0, created.stderr
        yield running, created.stdout.strip()


def _targets(folder: Path) -> list[tuple[str, str]]:
    """(method, path) of every route of the app, path parameters filled in: the operations of
    its OpenAPI schema, the routes outside it (the schema itself, /docs, the dashboard page),
    and each mount by a path inside it (the Socket.IO mount is exercised with a real Engine.IO
    session separately)."""
    app = create_app(Settings(secret=TEST_SECRET, data_dir=folder))
    targets = [
        (method.upper(), path.replace("{session_id}", SOME_SESSION))
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    ]
    targets.append(("GET", "/"))
    for route in app.routes:
        if isinstance(route, Route):
            targets += [(method, route.path) for method in sorted(route.methods or ())]
        elif isinstance(route, Mount) and route.path == "/static":
            targets += [("GET", "/static/app.js"), ("POST", "/static/app.js")]
    return targets


def _peak_rss_kb(pid: int) -> int:
    """The process's peak resident memory (VmHWM) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _chunks(total: int, size: int = 1024 * 1024) -> Iterator[bytes]:
    """``total`` bytes as a chunked upload (no Content-Length), so only counting can stop it."""
    chunk = b"x" * size
    for _ in range(total // size):
        yield chunk


@pytest.mark.slow
def test_a_50_mb_body_to_every_route_is_refused_without_memory_growth(server, tmp_path) -> None:
    """Every route answers a declared 50 MB body with 401 (under /api without a valid token,
    before the body) or 413 BODY_TOO_LARGE, as does a chunked 50 MB upload that declares no
    length; the server's peak memory grows by less than 20 MB over all of it, and it keeps
    serving."""
    running, token = server
    auth = {"Authorization": f"Bearer {token}"}
    targets = _targets(tmp_path / "routes")
    assert ("POST", "/api/v1/samples") in targets and ("POST", "/api/v1/sessions") in targets
    big = b"{" + b" " * (BIG - 2) + b"}"
    polling = RawPolling(running.url)
    with httpx.Client(base_url=running.url, timeout=60) as client:
        for method, path in targets:  # warm every route up with an empty body
            if (method, path) != ("DELETE", "/api/v1/me"):  # that would erase the user
                client.request(method, path, headers=auth)
        polling.post(b"")
        before_kb = _peak_rss_kb(running.process.pid)
        answers: dict[str, int] = {}
        for method, path in targets:
            if path.startswith("/api/"):
                refused = client.request(method, path, content=big)
                assert refused.status_code == 401, (method, path)
                assert refused.json()["code"] == "UNAUTHENTICATED"
            response = client.request(method, path, content=big, headers=auth)
            answers[f"{method} {path}"] = response.status_code
            if method != "HEAD":
                assert response.json()["code"] == "BODY_TOO_LARGE", (method, path)
        answers["POST /socket.io/ (polling)"] = polling.post(big).status_code
        for path in ("/api/v1/samples", "/api/v1/sessions"):
            streamed = client.post(path, content=_chunks(BIG), headers=auth)
            answers[f"POST {path} (chunked)"] = streamed.status_code
        answers["POST /socket.io/ (polling, chunked)"] = polling.post(_chunks(BIG)).status_code
        grown_kb = _peak_rss_kb(running.process.pid) - before_kb
        assert client.get("/healthz").status_code == 200
        assert client.get("/api/v1/sessions", headers=auth).json()["items"] == []
    polling.close()
    assert answers == {target: 413 for target in answers}
    assert grown_kb < RSS_GROWTH_LIMIT_KB, f"peak RSS grew {grown_kb} KiB"
    assert "Traceback" not in running.log()


@pytest.mark.slow
def test_authentication_comes_before_the_body(server) -> None:
    """An unauthenticated request is answered 401 while its body has not even been sent: the
    server never waits for (or parses) the body of a caller it does not know."""
    running, _token = server
    port = int(running.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(
            b"POST /api/v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        head = conn.recv(4096)
    assert head.startswith(b"HTTP/1.1 401"), head


@pytest.mark.slow
def test_a_client_leaving_mid_body_is_one_info_line(server) -> None:
    """A client that hangs up half-way through its ingest body ends the request quietly: an
    info line, no error and no traceback."""
    running, token = server
    port = int(running.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(
            b"POST /api/v1/samples HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {token}\r\nContent-Length: 1000000\r\n\r\n".encode()
            + b"[" * 100_000
        )
    deadline = time.monotonic() + 10
    while "client_left_mid_body" not in running.log():
        assert time.monotonic() < deadline, running.log()[-2000:]
        time.sleep(0.05)
    log = running.log()
    assert "Traceback" not in log
    assert '"level": "error"' not in log
