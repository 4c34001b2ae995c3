"""Engine.IO's keepalive on shared ticks (``realtime/keepalive.py``), against real clients over
a real uvicorn: clients that answer their pings stay connected, their pings wait on a few shared
ticks rather than a task each, and a client that stops answering is closed and forgotten by the
monitor (python-engineio's own monitor is off)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import socketio
from engineio.async_socket import AsyncSocket

from tests.realtime.conftest import serve_on_this_loop
from vitalcast.realtime.keepalive import TickedEngineServer, TickedSocketIOServer

#: seconds: short, so that the test sees several pings and a timeout (the timeout long enough
#: that a loaded machine does not end a healthy client)
PING_INTERVAL_S = 1
PING_TIMEOUT_S = 5


class _CountingEngine(TickedEngineServer):
    """Counts the pings sent to each socket, and the passes that sent them."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pinged: Counter[str] = Counter()
        self.passes = 0

    async def _send_pings(self, sockets: list[AsyncSocket]) -> None:
        self.passes += 1
        self.pinged.update(s.sid for s in sockets)
        await super()._send_pings(sockets)


class _CountingServer(TickedSocketIOServer):
    def _engineio_server_class(self) -> type[TickedEngineServer]:
        return _CountingEngine


@pytest.fixture
async def served() -> AsyncIterator[tuple[TickedSocketIOServer, str]]:
    sio = _CountingServer(
        async_mode="asgi", ping_interval=PING_INTERVAL_S, ping_timeout=PING_TIMEOUT_S
    )
    async with serve_on_this_loop(sio) as port:
        yield sio, f"http://127.0.0.1:{port}"


def _ping_tasks() -> int:
    """Tasks running python-engineio's own per-socket ping (none: the pings wait on ticks)."""
    return sum(
        1
        for t in asyncio.all_tasks()
        if getattr(t.get_coro(), "__qualname__", "") == AsyncSocket._send_ping.__qualname__
    )


async def test_clients_that_answer_stay_and_their_pings_share_ticks(
    served: tuple[TickedSocketIOServer, str],
) -> None:
    sio, url = served
    engine = sio.eio
    assert isinstance(engine, TickedEngineServer)
    clients = [socketio.AsyncClient(reconnection=False) for _ in range(10)]
    for client in clients:
        await client.connect(url, transports=["websocket"])
    try:
        sockets = list(engine.sockets.values())
        assert len(sockets) == 10
        # every socket is pinged three times (a ping follows an answered one), in passes
        # that each ping several sockets, and no ping runs as a task of its own
        assert isinstance(engine, _CountingEngine)
        deadline = time.monotonic() + 60
        while len(engine.pinged) < 10 or min(engine.pinged.values()) < 3:
            assert time.monotonic() < deadline, "the pings did not go round"
            assert _ping_tasks() == 0
            await asyncio.sleep(0.05)
        assert engine.passes < sum(engine.pinged.values()) / 2
        await asyncio.sleep(PING_INTERVAL_S + PING_TIMEOUT_S)
        assert all(client.connected for client in clients)
        assert len(engine.sockets) == 10
    finally:
        for client in clients:
            await client.disconnect()


async def test_a_polling_client_that_stops_answering_is_closed_and_forgotten(
    served: tuple[TickedSocketIOServer, str],
) -> None:
    sio, url = served
    async with httpx.AsyncClient(base_url=url) as http:
        opened = await http.get("/socket.io/", params={"EIO": "4", "transport": "polling"})
        assert opened.status_code == 200
        sid = orjson.loads(opened.text[1:])["sid"]
    assert sid in sio.eio.sockets
    # it never polls again: its ping goes unanswered, and the monitor's next pass closes it,
    # the one after forgets it
    deadline = time.monotonic() + 60
    while sid in sio.eio.sockets:
        assert time.monotonic() < deadline, "the silent client was not closed"
        await asyncio.sleep(0.2)
