"""A WebSocket's reader waits for the client's next packet without a task and a timer of its own
(``realtime.socket_reader``), against real clients over a real uvicorn: the clients' packets
still arrive, and a client that stops answering its pings still loses its connection (the
ping check closes the socket, the monitor ends its writer, which closes the WebSocket)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import socketio
from engineio import async_socket
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.realtime.conftest import serve_on_this_loop
from vitalcast.realtime import keepalive, socket_reader, socket_writer
from vitalcast.realtime.keepalive import TickedSocketIOServer

PING_INTERVAL_S = 1
PING_TIMEOUT_S = 2


@pytest.fixture
async def served(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[TickedSocketIOServer, str]]:
    # the monitor's pass every second, not every 5 s, so that a closed socket goes soon
    monkeypatch.setattr(keepalive, "MONITOR_S", 1.0)
    # as the server: the writer's wait has no timeout either (realtime/socket_writer)
    socket_writer.install()
    sio = TickedSocketIOServer(
        async_mode="asgi", ping_interval=PING_INTERVAL_S, ping_timeout=PING_TIMEOUT_S
    )

    @sio.on("echo")  # type: ignore[misc]  # untyped library
    async def echo(_sid: str, data: str) -> str:
        return data

    async with serve_on_this_loop(sio) as port:
        yield sio, f"127.0.0.1:{port}"


def _read_tasks() -> int:
    """Tasks running python-engineio's per-packet read (``websocket_wait`` under ``wait_for``)."""
    return sum(
        1
        for t in asyncio.all_tasks()
        if getattr(t.get_coro(), "__qualname__", "").endswith("websocket_wait")
    )


async def _echoes(url: str, clients: list[socketio.AsyncClient]) -> None:
    for client in clients:
        await client.connect(f"http://{url}", transports=["websocket"])
    for n, client in enumerate(clients):
        assert await client.call("echo", f"hello-{n}", timeout=10) == f"hello-{n}"


async def test_websocket_readers_wait_without_a_task_each_and_packets_still_arrive(
    served: tuple[TickedSocketIOServer, str],
) -> None:
    """Ten clients' reads wait with no task of their own (the library's handler: one each),
    and what the clients send is answered, also after their pings went round."""
    sio, url = served
    clients = [socketio.AsyncClient(reconnection=False) for _ in range(10)]
    socket_reader.install()
    try:
        await _echoes(url, clients)
        assert _read_tasks() == 0
        await asyncio.sleep(3 * PING_INTERVAL_S)
        assert all(client.connected for client in clients)
        assert len(sio.eio.sockets) == 10
        for n, client in enumerate(clients):
            assert await client.call("echo", f"again-{n}", timeout=10) == f"again-{n}"
    finally:
        for client in clients:
            await client.disconnect()
    # the library's own handler, for comparison: a read task per socket
    async_socket.AsyncSocket._websocket_handler = socket_reader._LIBRARY_HANDLER
    library = [socketio.AsyncClient(reconnection=False) for _ in range(10)]
    try:
        await _echoes(url, library)
        assert _read_tasks() == 10
    finally:
        for client in library:
            await client.disconnect()
        socket_reader.install()


async def test_a_websocket_client_that_stops_answering_loses_its_connection(
    served: tuple[TickedSocketIOServer, str],
) -> None:
    """A client that opens the Engine.IO WebSocket and then never answers a ping: the ping
    check closes its socket, the monitor forgets it and ends its writer, and the client sees
    the WebSocket closed, though no read or write on the server waits with a timeout."""
    sio, url = served
    socket_reader.install()
    async with connect(
        f"ws://{url}/socket.io/?EIO=4&transport=websocket", ping_interval=None
    ) as ws:
        opened = await asyncio.wait_for(ws.recv(), 10)
        assert isinstance(opened, str) and opened.startswith("0")
        assert len(sio.eio.sockets) == 1
        deadline = time.monotonic() + 60
        with pytest.raises(ConnectionClosed):
            while True:
                assert time.monotonic() < deadline, "the silent client kept its WebSocket"
                await asyncio.wait_for(ws.recv(), 60)
    assert not sio.eio.sockets
