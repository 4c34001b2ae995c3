"""Hardening fixtures: private Redis and PostgreSQL instances on spare loopback ports, which the
fault tests may stop, kill and restart without disturbing anyone else on this machine.

PostgreSQL refuses to run as root, so its cluster is created and run as the ``postgres`` OS user
in a temporary folder it owns, with trust auth on 127.0.0.1 and its socket inside that folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as redis
import socketio

from tests.conftest import TEST_SECRET, in_thread
from vitalcast.db.migrate import upgrade

PG_BIN = Path(os.environ.get("VITALCAST_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def vitalcast_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """The environment of a ``vitalcast`` subprocess: ``VITALCAST_<KEY>`` for each setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITALCAST_")}
    env |= {
        "VITALCAST_SECRET": TEST_SECRET,
        "VITALCAST_DATA_DIR": str(data_dir),
        "VITALCAST_LOG_LEVEL": "warning",
    }
    return env | {f"VITALCAST_{key.upper()}": value for key, value in settings.items()}


@dataclass
class Child:
    """One ``python -m vitalcast …`` subprocess with its output in a log file."""

    process: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def vitalcast_process(args: list[str], env: dict[str, str], log_path: Path) -> Iterator[Child]:
    """Run ``python -m vitalcast ARGS``; terminated (then killed) when the block exits."""
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "vitalcast", *args],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    child = Child(process, log_path)
    reaper = reap_when_gone("kill", "-9", str(process.pid))
    try:
        yield child
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        reaper.kill()
        reaper.wait(5)


@contextlib.contextmanager
def vitalcast_server(env: dict[str, str], log_path: Path) -> Iterator[Child]:
    """``vitalcast serve`` on a free loopback port, answering /healthz before the block runs."""
    port = free_port()
    args = ["serve", "--host", "127.0.0.1", "--port", str(port)]
    with vitalcast_process(args, env, log_path) as child:
        child.url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            if child.process.poll() is not None:
                raise RuntimeError(f"server exited:\n{child.log()[-3000:]}")
            try:
                return httpx.get(f"{child.url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(healthy, "server start")
        yield child


def reap_when_gone(*cleanup: str) -> subprocess.Popen[bytes]:
    """A watchdog that runs ``cleanup`` once this test process is gone, killed included (a
    killed pytest runs no fixture teardown, and a daemon like PostgreSQL outlives its parent).
    Kill the watchdog after a normal teardown."""
    script = 'while kill -0 "$0" 2>/dev/null; do sleep 1; done; exec "$@"'
    return subprocess.Popen(
        ["sh", "-c", script, str(os.getpid()), *cleanup],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _wait(predicate: object, what: str, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not happen within {timeout_s} s")


@dataclass
class SpareRedis:
    """A ``redis-server`` of our own (no persistence) that a test may stop and start again."""

    port: int
    folder: Path
    process: subprocess.Popen[bytes] | None = None
    reaper: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.reaper = reap_when_gone("kill", "-9", str(self.process.pid))
        _wait(self._answers, "redis start")

    def stop(self) -> None:
        """Kill it (SIGKILL: an outage, not a shutdown) and wait until the port is closed."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        if self.reaper is not None:
            self.reaper.kill()
            self.reaper.wait(5)
        self.process = self.reaper = None

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError("redis-server exited")
        try:
            out = subprocess.run(
                ["redis-cli", "-p", str(self.port), "ping"],
                capture_output=True,
                timeout=2,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return False
        return out.stdout.strip() == b"PONG"


@pytest.fixture
def spare_redis(tmp_path: Path) -> Iterator[SpareRedis]:
    """A running private Redis on a free port; killed at teardown."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    instance = SpareRedis(port=free_port(), folder=tmp_path)
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


def _as_postgres(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", *args], capture_output=True, timeout=60, check=True
    )


@dataclass
class SparePostgres:
    """A PostgreSQL 15 cluster of our own, run by the ``postgres`` OS user."""

    port: int
    folder: Path

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        _as_postgres(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E",
            "UTF8", "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder}"
        _as_postgres(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "log"),
            "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self, mode: str = "immediate") -> None:
        """``immediate`` is a crash: no checkpoint, clients cut off, recovery from WAL on start."""
        _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def psql(self, sql: str, database: str = "postgres") -> str:
        out = _as_postgres(
            str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-d", database,
            "-At", "-c", sql,
        )  # fmt: skip
        return out.stdout.decode().strip()


@contextlib.contextmanager
def spare_postgres_cluster() -> Iterator[SparePostgres]:
    if not (PG_BIN / "initdb").exists() or shutil.which("runuser") is None:
        pytest.skip("PostgreSQL 15 binaries or runuser are missing")
    folder = Path(tempfile.mkdtemp(prefix="vc-pg-"))
    shutil.chown(folder, "postgres", "postgres")
    instance = SparePostgres(port=free_port(), folder=folder)
    pg_ctl = str(PG_BIN / "pg_ctl")
    reaper = reap_when_gone(
        "sh", "-c", f"runuser -u postgres -- {pg_ctl} -D {instance.data} -m immediate stop; "
        f"rm -rf {folder}",
    )  # fmt: skip
    try:
        instance.init()
        instance.start()
        yield instance
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            instance.stop("fast")
        shutil.rmtree(folder, ignore_errors=True)
        reaper.kill()
        reaper.wait(5)


@pytest.fixture(scope="session")
def spare_postgres() -> Iterator[SparePostgres]:
    """A private PostgreSQL cluster on a free port for this test run. Tests may crash and restart
    it; each test gets its own database in it (``spare_pg_url``)."""
    with spare_postgres_cluster() as instance:
        yield instance


@pytest.fixture
def spare_pg_url(spare_postgres: SparePostgres) -> str:
    """A fresh, migrated database in the private cluster."""
    name = f"vc_fault_{uuid.uuid4().hex[:10]}"
    spare_postgres.psql(f'CREATE DATABASE "{name}"')
    url = spare_postgres.url(name)
    in_thread(upgrade, url)
    return url


async def delete_keys(url: str, pattern: str) -> int:
    """Delete this test's keys (never a flush: the shared Redis serves other runs too)."""
    client = redis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=pattern, count=500)]
        if keys:
            await client.delete(*keys)
        return len(keys)
    finally:
        await client.aclose()


@pytest.fixture
async def redis_keys_cleanup(redis_url: str, unique_prefix: str) -> AsyncIterator[str]:
    """``unique_prefix``, with every shared-Redis key holding it deleted after the test."""
    yield unique_prefix
    await delete_keys(redis_url, f"*{unique_prefix}*")


@dataclass
class Subscriber:
    """A real python-socketio client that keeps every ``session.updated`` it receives."""

    sio: socketio.AsyncClient
    updates: asyncio.Queue[dict[str, Any]]

    async def subscribe(self, session_id: str) -> dict[str, Any]:
        ack: dict[str, Any] = await self.sio.call(
            "subscribe", {"session_id": session_id}, timeout=10
        )
        return ack

    async def update_reaching(self, watermark: int, timeout_s: float) -> dict[str, Any]:
        """The first ``session.updated`` at ``watermark`` or later (earlier ones are skipped)."""
        async with asyncio.timeout(timeout_s):
            while True:
                event = await self.updates.get()
                if event["source_watermark"] >= watermark:
                    return event


@contextlib.asynccontextmanager
async def subscriber(url: str, token: str) -> AsyncIterator[Subscriber]:
    """A connected Socket.IO client of the server at ``url`` (disconnected on exit)."""
    sio = socketio.AsyncClient(reconnection=False)
    client = Subscriber(sio, asyncio.Queue())

    @sio.on("session.updated")
    async def _updated(data: dict[str, Any]) -> None:
        client.updates.put_nowait(data)

    await sio.connect(url, auth={"token": token}, transports=["websocket"], wait_timeout=10)
    try:
        yield client
    finally:
        await sio.disconnect()
