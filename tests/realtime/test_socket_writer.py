"""A WebSocket's writer waits for its next packet without a timer (``realtime.socket_writer``):
what it returns is the library's, and a polling transport keeps the library's timed wait."""

from __future__ import annotations

import asyncio
import gc

import engineio
from engineio import async_socket, packet

from vitalcast.realtime import socket_writer


def _sockets(n: int, *, upgraded: bool) -> list[async_socket.AsyncSocket]:
    server = engineio.AsyncServer(async_mode="asgi")
    sockets = []
    for i in range(n):
        socket = async_socket.AsyncSocket(server, f"sid-{i}")
        socket.upgraded = upgraded
        sockets.append(socket)
    return sockets


async def _while_waiting(sockets: list[async_socket.AsyncSocket]) -> tuple[int, float]:
    """While every socket's poll waits for a packet: how many timer handles (asyncio's or
    uvloop's) and how many objects the garbage collector tracks per socket were made for the
    waits (what is older is frozen out of the count)."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        polls = [asyncio.ensure_future(s.poll()) for s in sockets]
        await asyncio.sleep(0)
        young = gc.get_objects(0)
        timers = sum(1 for o in young if type(o).__name__ == "TimerHandle")
        per_socket = len(young) / len(sockets)
        del young
    finally:
        gc.enable()
        gc.unfreeze()
    for socket in sockets:
        await socket.queue.put(None)
    assert await asyncio.gather(*polls) == [[] for _ in sockets]
    return timers, per_socket


async def test_a_websocket_writer_waits_without_a_timer() -> None:
    """Fifty WebSockets waiting for their next packet hold no timer and a few tracked objects
    each; with the library's poll each held a timer (its wait_for) and a dozen more objects,
    renewed at every event the socket is sent."""
    socket_writer.install()
    timers, lean = await _while_waiting(_sockets(50, upgraded=True))
    assert timers == 0
    async_socket.AsyncSocket.poll = socket_writer._LIBRARY_POLL
    try:
        timers, library = await _while_waiting(_sockets(50, upgraded=True))
    finally:
        socket_writer.install()
    assert timers == 50
    assert library >= lean + 8, (lean, library)


async def test_a_polling_transport_keeps_the_timed_wait() -> None:
    """A long-poll still waits with the library's timeout: one timer per waiting socket."""
    socket_writer.install()
    timers, _per_socket = await _while_waiting(_sockets(20, upgraded=False))
    assert timers == 20


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
