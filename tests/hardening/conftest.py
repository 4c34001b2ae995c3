"""Hardening fixtures: private Redis and PostgreSQL instances on spare loopback ports, which the
fault tests may stop, kill and restart without disturbing anyone else on this machine.

PostgreSQL refuses to run as root, so its cluster is created and run as the ``postgres`` OS user
in a temporary folder it owns, with trust auth on 127.0.0.1 and its socket inside that folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import socketio

from tests.conftest import in_thread
from tests.processes import RedisServer, reap_when_gone, spare_port
from tests.redis_keys import delete_keys
from tests.services import executable, postgres_bin_dir, service_missing
from vitalcast.db.migrate import upgrade


@pytest.fixture
def spare_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A running private Redis on a free port that a test may ``kill`` and ``start``; killed at
    teardown."""
    instance = RedisServer(tmp_path)
    instance.start()
    try:
        yield instance
    finally:
        instance.kill()


def _as_postgres(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", *args], capture_output=True, timeout=60, check=True
    )


@dataclass
class SparePostgres:
    """A PostgreSQL cluster of our own (the installed version's programs in ``bin``), run by the
    ``postgres`` OS user."""

    port: int
    folder: Path
    bin: Path

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        _as_postgres(
            str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E",
            "UTF8", "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder}"
        _as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "log"),
            "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self, mode: str = "immediate") -> None:
        """``immediate`` is a crash: no checkpoint, clients cut off, recovery from WAL on start."""
        _as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def psql(self, sql: str, database: str = "postgres") -> str:
        out = _as_postgres(
            str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-d", database,
            "-At", "-c", sql,
        )  # fmt: skip
        return out.stdout.decode().strip()


@contextlib.contextmanager
def spare_postgres_cluster() -> Iterator[SparePostgres]:
    bin_dir = postgres_bin_dir()
    executable("runuser")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        service_missing("the postgres OS user (it runs the private cluster)")
    folder = Path(tempfile.mkdtemp(prefix="vc-pg-"))
    shutil.chown(folder, "postgres", "postgres")
    instance = SparePostgres(port=spare_port(), folder=folder, bin=bin_dir)
    pg_ctl = str(bin_dir / "pg_ctl")
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
