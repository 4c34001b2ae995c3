"""HTTP, metrics and process helpers for the scaled-out queue tests (servers and workers run as
real ``python -m vitalcast`` subprocesses)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import TEST_SECRET
from tests.ingest.helpers import now_ms
from vitalcast.auth import issue_token
from vitalcast.db.engine import Database, create_engine
from vitalcast.sessions import repository as session_repository

START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def subprocess_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """The environment of a ``vitalcast`` subprocess: VITALCAST_<KEY> for each setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITALCAST_")}
    env["VITALCAST_SECRET"] = TEST_SECRET
    env["VITALCAST_DATA_DIR"] = str(tmp_path / "data")
    env["VITALCAST_LOG_LEVEL"] = "info"
    for key, value in settings.items():
        env[f"VITALCAST_{key.upper()}"] = value
    return env


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@contextlib.contextmanager
def spawn(
    args: list[str], env: dict[str, str], log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m vitalcast ARGS`` with its output in ``log_path``; SIGTERMed on exit."""
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "vitalcast", *args],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            yield process
        finally:
            stop_process(process)


@dataclass
class ServerProcess:
    """One ``vitalcast serve`` subprocess."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def serve_subprocess(env: dict[str, str], log_path: Path) -> Iterator[ServerProcess]:
    """``vitalcast serve`` on a free loopback port, answering /healthz before the block runs."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with spawn(["serve", "--host", "127.0.0.1", "--port", str(port)], env, log_path) as process:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{log_path.read_text(errors='replace')}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        yield ServerProcess(url, process, log_path)


async def new_user(database_url: str, name: str | None = None) -> tuple[str, str]:
    """(user_id, token) of a new user in the database the processes share."""
    db = Database(create_engine(database_url))
    try:
        async with db.write() as conn:
            user_id = await session_repository.get_or_create_user(
                conn, name or f"q-{uuid.uuid4().hex[:8]}", now_ms=now_ms()
            )
    finally:
        await db.dispose()
    return user_id, issue_token(TEST_SECRET, user_id, now_s=int(time.time()), ttl_s=3600)


class Api:
    """The public HTTP API of one server, as one user."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self._headers = {"Authorization": f"Bearer {token}"}

    async def create_session(self, **body: Any) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.url) as http:
            response = await http.post("/api/v1/sessions", json=body, headers=self._headers)
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def end_session(self, session_id: str, **body: Any) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.url) as http:
            response = await http.post(
                f"/api/v1/sessions/{session_id}/end", json=body, headers=self._headers
            )
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def ingest(
        self, samples: list[dict[str, Any]], http: httpx.AsyncClient | None = None
    ) -> int:
        """POST the samples; the user's change_seq after it."""
        async with contextlib.AsyncExitStack() as stack:
            client = http or await stack.enter_async_context(httpx.AsyncClient(base_url=self.url))
            response = await client.post(
                f"{self.url}/api/v1/samples", json={"samples": samples}, headers=self._headers
            )
        assert response.status_code == 200, response.text
        return int(response.json()["change_seq"])

    async def telemetry(self, session_id: str, **params: Any) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.url) as http:
            return await http.get(
                f"/api/v1/sessions/{session_id}/telemetry", params=params, headers=self._headers
            )

    async def wait_state(
        self,
        session_id: str,
        state: str,
        *,
        watermark: int | None = None,
        timeout_s: float = 20,
        **params: Any,
    ) -> dict[str, Any]:
        """Poll the telemetry GET until it answers ``state`` (at ``watermark`` when given)."""
        deadline = time.monotonic() + timeout_s
        while True:
            response = await self.telemetry(session_id, **params)
            assert response.status_code < 500, response.text
            body = dict(response.json())
            payload = body.get("telemetry") or {}
            if body["state"] == state and (
                watermark is None or payload.get("source_watermark") == watermark
            ):
                return body
            assert time.monotonic() < deadline, body
            await asyncio.sleep(0.1)


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` in Prometheus text whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        metric, _, label_text = series.partition("{")
        if metric != name:
            continue
        if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            total += float(value)
    return total


async def scrape(url: str) -> str:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"{url}/metrics")).text


async def computes(url: str) -> float:
    """Computes that ran in the process behind ``url`` (every outcome)."""
    return metric_sum(await scrape(url), "vitalcast_computes_total")


@dataclass
class WorkerProcess:
    """One ``vitalcast worker`` subprocess with its /metrics port."""

    process: subprocess.Popen[bytes]
    metrics_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)


@contextlib.contextmanager
def worker_subprocess(env: dict[str, str], log_path: Path, *args: str) -> Iterator[WorkerProcess]:
    """``vitalcast worker`` consuming the env's queue, started (``worker_started`` logged)."""
    port = free_port()
    with spawn(["worker", "--metrics-port", str(port), *args], env, log_path) as process:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "worker_started" not in log_path.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{log_path.read_text(errors='replace')}")
            time.sleep(0.05)
        yield WorkerProcess(process, f"http://127.0.0.1:{port}", log_path)


def redis_answers(url: str) -> bool:
    """The Redis at ``url`` answers PING (synchronous, for module-scoped set-up)."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


async def run_cli(
    args: list[str], env: dict[str, str], timeout_s: float = 120
) -> tuple[int, str, str]:
    """``python -m vitalcast ARGS`` to completion: (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "vitalcast",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    return int(process.returncode or 0), out.decode(), err.decode()
