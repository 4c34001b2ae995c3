"""Realtime fixtures: the real app served by uvicorn on a free loopback port in a thread of this
process (``vitalcast serve`` subprocesses come from ``tests.processes``) and real python-socketio
clients."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pytest
import socketio
import uvicorn

from vitalcast.app import create_app
from vitalcast.settings import Settings
from vitalcast.wiring import NO_SEAMS, Seams, ServerParts

START_TIMEOUT_S = 60.0


@dataclass
class LiveServer:
    """The app served by uvicorn in a thread with its own event loop."""

    url: str
    app: Any
    loop: asyncio.AbstractEventLoop

    @property
    def parts(self) -> ServerParts:
        return self.app.state.parts

    def run(self, coro: Awaitable[Any], timeout_s: float = 10.0) -> Any:
        """Run ``coro`` on the server's loop (the server's objects live there)."""
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return future.result(timeout_s)


@contextlib.contextmanager
def serve_in_thread(settings: Settings, seams: Seams = NO_SEAMS) -> Iterator[LiveServer]:
    """Serve ``create_app(settings, seams)`` on 127.0.0.1:<free port> until the block exits."""
    app = create_app(settings, seams)
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


@contextlib.asynccontextmanager
async def serve_on_this_loop(sio: socketio.AsyncServer) -> AsyncIterator[int]:
    """Serve ``sio`` alone (no app around it) by uvicorn on this test's own loop, on
    127.0.0.1:<free port> (yielded) until the block exits, then shut it down: tests of
    Engine.IO's sockets look at their tasks and waits from the loop that runs them."""
    config = uvicorn.Config(
        socketio.ASGIApp(sio), host="127.0.0.1", port=0, log_config=None, lifespan="off"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.05)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        await sio.shutdown()
        server.should_exit = True
        await task


@pytest.fixture
def live(settings: Settings) -> Iterator[LiveServer]:
    """The app on the test's settings, served in a thread for the whole test."""
    with serve_in_thread(settings) as server:
        yield server


def updated_fields(session_id: str, source_watermark: int, **changes: Any) -> dict[str, Any]:
    """The fields of a ``TelemetryUpdate`` for a ready live 1 m answer."""
    return {
        "session_id": session_id,
        "source_watermark": source_watermark,
        "state": "ready",
        "window_minutes": 60,
        "resolution": "1m",
        "computed_at_ms": 1_700_000_000_000,
        "live": True,
        "changed_from_ms": None,
        "changed_to_ms": None,
        "base_watermark": None,
    } | changes


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

    async def next(self, event: str, timeout_s: float = 30.0) -> Any:
        """The next ``event`` received (waits up to ``timeout_s``)."""
        return await asyncio.wait_for(self.events[event].get(), timeout_s)

    async def before(
        self, event: str, marker: Callable[[Any], bool], timeout_s: float = 30.0
    ) -> list[Any]:
        """Every ``event`` received before the first one ``marker`` accepts, waiting for that one
        up to ``timeout_s``. How a test shows that something did *not* arrive: it causes a later
        event that must arrive on the same socket, then checks what came before it (one server
        sends to one socket in order), instead of sleeping and hoping nothing was still coming."""
        earlier = []
        async with asyncio.timeout(timeout_s):
            while not marker(data := await self.events[event].get()):
                earlier.append(data)
        return earlier

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
