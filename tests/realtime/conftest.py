"""Realtime fixtures: the real app served by uvicorn on a free loopback port (in a thread of this
process, or as ``vitalcast serve`` subprocesses) and real python-socketio clients."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import socketio
import uvicorn

from tests.conftest import TEST_SECRET
from vitalcast.app import create_app
from vitalcast.settings import Settings

START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    """The app served by uvicorn in a thread with its own event loop."""

    url: str
    app: Any
    loop: asyncio.AbstractEventLoop

    @property
    def container(self) -> Any:
        return self.app.state.container

    def run(self, coro: Awaitable[Any], timeout_s: float = 10.0) -> Any:
        """Run ``coro`` on the server's loop (the server's objects live there)."""
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return future.result(timeout_s)


@contextlib.contextmanager
def serve_in_thread(settings: Settings) -> Iterator[LiveServer]:
    """Serve ``create_app(settings)`` on 127.0.0.1:<free port> until the block exits."""
    app = create_app(settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="on", log_config=None, access_log=False, loop="asyncio")
    server = uvicorn.Server(config)
    loops: list[asyncio.AbstractEventLoop] = []

    def run() -> None:
        # The runner cancels what is left (e.g. Engine.IO ping tasks) before closing its loop.
        with asyncio.Runner() as runner:
            loops.append(runner.get_loop())
            runner.run(server.serve(sockets=[sock]))

    thread = threading.Thread(target=run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield LiveServer(url=f"http://127.0.0.1:{port}", app=app, loop=loops[0])
    finally:
        server.should_exit = True
        thread.join(START_TIMEOUT_S)
        sock.close()


@dataclass
class ServerProcess:
    """One ``vitalcast serve`` subprocess."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_healthy(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited early:\n{log_path.read_text(errors='replace')}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not become healthy:\n{log_path.read_text(errors='replace')}")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def subprocess_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """The environment of a ``vitalcast`` subprocess: VITALCAST_<KEY> for each setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITALCAST_")}
    env["VITALCAST_SECRET"] = TEST_SECRET
    env["VITALCAST_DATA_DIR"] = str(tmp_path / "data")
    env["VITALCAST_LOG_LEVEL"] = "info"
    for key, value in settings.items():
        env[f"VITALCAST_{key.upper()}"] = value
    return env


@contextlib.contextmanager
def spawn(
    args: list[str], env: dict[str, str], log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``python -m vitalcast ARGS`` with its output in ``log_path``; stopped on exit."""
    with log_path.open("wb") as log_file:
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


@contextlib.contextmanager
def serve_subprocesses(env: dict[str, str], log_paths: list[Path]) -> Iterator[list[ServerProcess]]:
    """One ``vitalcast serve`` per log path, each on a free loopback port, started together and
    all healthy before the block starts."""
    with contextlib.ExitStack() as stack:
        servers = []
        for log_path in log_paths:
            port = free_port()
            process = stack.enter_context(
                spawn(["serve", "--host", "127.0.0.1", "--port", str(port)], env, log_path)
            )
            servers.append(ServerProcess(f"http://127.0.0.1:{port}", process, log_path))
        for server in servers:
            wait_healthy(server.url, server.process, server.log_path)
        yield servers


@dataclass
class SocketClient:
    """A real python-socketio client that records every event it receives, by name."""

    sio: socketio.AsyncClient
    events: dict[str, asyncio.Queue[Any]] = field(
        default_factory=lambda: defaultdict(asyncio.Queue)
    )
    connect_errors: list[Any] = field(default_factory=list)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)

    async def call(self, event: str, data: Any = None, timeout_s: float = 10.0) -> Any:
        return await self.sio.call(event, data, timeout=timeout_s)

    async def next(self, event: str, timeout_s: float = 10.0) -> Any:
        """The next ``event`` received (waits up to ``timeout_s``)."""
        return await asyncio.wait_for(self.events[event].get(), timeout_s)

    async def none_within(self, event: str, window_s: float) -> bool:
        """True when no ``event`` arrives during ``window_s`` seconds."""
        try:
            await asyncio.wait_for(self.events[event].get(), window_s)
        except TimeoutError:
            return True
        return False

    def drain(self, event: str) -> list[Any]:
        queue = self.events[event]
        items = []
        while not queue.empty():
            items.append(queue.get_nowait())
        return items


ClientFactory = Callable[..., Awaitable[SocketClient]]


@pytest.fixture
async def socket_client() -> AsyncIterator[ClientFactory]:
    """``await socket_client(url, token)`` → a connected SocketClient; all closed at teardown.

    ``connect=False`` returns it unconnected, to observe a refused connection.
    """
    made: list[SocketClient] = []

    async def make(url: str, token: str | None, *, connect: bool = True) -> SocketClient:
        sio = socketio.AsyncClient(reconnection=False)
        client = SocketClient(sio)

        @sio.on("*")
        async def any_event(event: str, data: Any = None) -> None:
            client.events[event].put_nowait(data)

        @sio.on("connect_error")
        async def connect_error(data: Any) -> None:
            client.connect_errors.append(data)

        @sio.on("disconnect")
        async def disconnect(*_reason: Any) -> None:
            client.disconnected.set()

        made.append(client)
        if connect:
            await sio.connect(
                url,
                auth={"token": token} if token is not None else None,
                transports=["websocket"],
                wait_timeout=10,
            )
        return client

    yield make
    for client in made:
        if client.sio.connected:
            await client.sio.disconnect()
