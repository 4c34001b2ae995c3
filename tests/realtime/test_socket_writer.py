"""A WebSocket's writer waits for its next packet without a timer (``realtime.socket_writer``):
what it returns is the library's, and a polling transport keeps the library's timed wait."""

from __future__ import annotations

import asyncio
import gc

import engineio
from engineio import async_socket, packet

from vitalcast.realtime import socket_writer


def _timers() -> int:
    """Timer handles alive in this process (asyncio's or uvloop's)."""
    return sum(1 for o in gc.get_objects() if type(o).__name__ == "TimerHandle")


def _sockets(n: int, *, upgraded: bool) -> list[async_socket.AsyncSocket]:
    server = engineio.AsyncServer(async_mode="asgi")
    sockets = []
    for i in range(n):
        socket = async_socket.AsyncSocket(server, f"sid-{i}")
        socket.upgraded = upgraded
        sockets.append(socket)
    return sockets


async def _waiting_timers(sockets: list[async_socket.AsyncSocket]) -> int:
    """How many more timers there are while every socket's poll waits for a packet."""
    before = _timers()
    polls = [asyncio.ensure_future(s.poll()) for s in sockets]
    await asyncio.sleep(0)
    waiting = _timers() - before
    for socket in sockets:
        await socket.queue.put(None)
    assert await asyncio.gather(*polls) == [[] for _ in sockets]
    return waiting


async def test_a_websocket_writer_waits_without_a_timer() -> None:
    """Fifty WebSockets waiting for their next packet hold no timer; with the library's poll
    each held one (its wait_for), which the garbage collector tracked with a dozen more objects
    per socket and event."""
    socket_writer.install()
    assert await _waiting_timers(_sockets(50, upgraded=True)) == 0
    async_socket.AsyncSocket.poll = socket_writer._LIBRARY_POLL
    try:
        assert await _waiting_timers(_sockets(50, upgraded=True)) >= 50
    finally:
        socket_writer.install()


async def test_a_polling_transport_keeps_the_timed_wait() -> None:
    """A long-poll still waits with the library's timeout: one timer per waiting socket."""
    socket_writer.install()
    assert await _waiting_timers(_sockets(20, upgraded=False)) >= 20


async def test_a_websocket_poll_returns_what_was_queued_and_keeps_the_end() -> None:
    """Every packet queued before the wait ends comes out in order in one poll; the end of the
    queue ends that batch and is kept, so the next poll answers [] (the writer stops)."""
    socket_writer.install()
    (socket,) = _sockets(1, upgraded=True)
    first = asyncio.ensure_future(socket.poll())
    await asyncio.sleep(0)
    assert not first.done()
    one = packet.Packet(packet.MESSAGE, data="one")
    await socket.queue.put(one)
    assert await first == [one]
    two, three = packet.Packet(packet.MESSAGE, data="two"), packet.Packet(packet.NOOP)
    for pkt in (two, three, None):
        await socket.queue.put(pkt)
    assert await socket.poll() == [two, three]
    assert await socket.poll() == []
    assert socket.queue.empty()
