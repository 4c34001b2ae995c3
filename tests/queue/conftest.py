"""Queue fixtures: settings on a unique BullMQ prefix (keys deleted afterwards), a private
redis-server that a test may stop and start, and a real TelemetryWorker factory."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis

from tests.conftest import TEST_SECRET, service_missing
from tests.queue.helpers import free_port
from vitalcast.queue.worker import JobHandler, TelemetryWorker
from vitalcast.settings import Settings


async def delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for start in range(0, len(keys), 500):
            await client.delete(*keys[start : start + 500])
    finally:
        await client.aclose()


@pytest.fixture
async def queue_settings(
    redis_url: str, unique_prefix: str, tmp_path: Path
) -> AsyncIterator[Settings]:
    """Settings whose queue lives under a unique prefix on the shared Redis; keys removed after."""
    settings = Settings(
        data_dir=tmp_path / "data",
        redis_url=redis_url,
        queue_prefix=unique_prefix,
        socketio_channel=f"{unique_prefix}-sio",
        secret=TEST_SECRET,
    )
    yield settings
    await delete_prefix(redis_url, unique_prefix)


class RedisProcess:
    """A redis-server of the test's own on a spare loopback port; never the shared one."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._directory = directory
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            service_missing("redis-server binary")
        self._process = subprocess.Popen(
            [
                str(binary),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self._directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def start_worker() -> AsyncIterator[Any]:
    """Factory: a real TelemetryWorker consuming the settings' queue; stopped at teardown."""
    workers: list[TelemetryWorker] = []

    async def start(
        settings: Settings, handler: JobHandler, concurrency: int = 1
    ) -> TelemetryWorker:
        worker = TelemetryWorker(settings, handler, concurrency=concurrency)
        await worker.start()
        workers.append(worker)
        return worker

    yield start
    await asyncio.gather(*(w.stop(grace_s=1.0) for w in workers))
