"""A WebSocket's reader waits for the client's next packet without a task and a timer per wait.

python-engineio (4.15) reads a WebSocket in ``AsyncSocket._websocket_handler``: for every packet
the client sends (for a watcher: a pong every ``ping_interval``) it starts a task for the read
and waits for it with ``asyncio.wait_for(task, ping_interval + ping_timeout)``. That is about 20
objects the garbage collector tracks (the task, its coroutines, the wait's future, the timer
handle and their callbacks), alive until the client's next packet, 25 s later: they outlive
every young collection, so each is traversed in the young and the middle generation before it
dies. A server holding 5,000 sockets renews 200 of them a second, and the young generation
fills with them while CPython's allocation count barely rises (the new objects replace old
ones): after the 30 s between two capacity steps a young collection found about 120,000
objects (22,000 coroutines, 8,000 futures) and held the loop 115 ms, and the middle generation
gathered what survived ten of them (a 339 ms pause in the 1,000-session step, ``bench/capacity``).

The timeout guards nothing a WebSocket needs: a client that stops answering is closed by the
ping check (``realtime/keepalive``), whose CLOSE packet ends the WebSocket
(``realtime/frames``: the gate closes it after that packet), and the ended WebSocket ends this
read; the monitor also ends the writer of a socket it forgets. So ``install`` replaces the
handler with the library's own, except that the read loop awaits the client's next packet
directly: no task, no timer. The upgrade from long-polling and everything after the read (the
packet's handling, the writer, the close) are the library's, line for line.

This is python-engineio past its public API, held to the minor release the tests cover
(``pyproject.toml``), as ``socket_writer`` is.
"""

from __future__ import annotations

import asyncio
from typing import Any

from engineio import async_socket, exceptions, packet

_LIBRARY_HANDLER = async_socket.AsyncSocket._websocket_handler


async def _websocket_handler(self: async_socket.AsyncSocket, ws: Any) -> None:
    """python-engineio's ``_websocket_handler`` (4.15) with the read loop described above.
    ``ws``: the library's WebSocket wrapper of the async mode (Any: untyped)."""

    async def websocket_wait() -> Any:  # Any: str or bytes, as the client sent it
        data = await ws.wait()
        if data and len(data) > self.server.max_http_buffer_size:
            raise ValueError("packet is too large")
        return data

    if self.connected:
        # the socket was already connected, so this is an upgrade
        self.upgrading = True  # hold packet sends during the upgrade

        try:
            pkt = await websocket_wait()
        except OSError:  # pragma: no cover
            return
        decoded_pkt = packet.Packet(encoded_packet=pkt)
        if decoded_pkt.packet_type != packet.PING or decoded_pkt.data != "probe":
            self.server.logger.info("%s: Failed websocket upgrade, no PING packet", self.sid)
            self.upgrading = False
            return
        await ws.send(packet.Packet(packet.PONG, data="probe").encode())
        await self.queue.put(packet.Packet(packet.NOOP))  # end poll

        try:
            pkt = await websocket_wait()
        except OSError:  # pragma: no cover
            self.upgrading = False
            return
        decoded_pkt = packet.Packet(encoded_packet=pkt)
        if decoded_pkt.packet_type != packet.UPGRADE:
            self.upgraded = False
            self.server.logger.info(
                "%s: Failed websocket upgrade, expected UPGRADE packet, received %s instead.",
                self.sid,
                pkt,
            )
            self.upgrading = False
            return
        self.upgraded = True
        self.upgrading = False
    else:
        self.connected = True
        self.upgraded = True

    async def writer() -> None:
        while True:
            packets = None
            try:
                packets = await self.poll()
            except exceptions.QueueEmpty:
                break
            if not packets:
                # empty packet list returned -> connection closed
                break
            try:
                for pkt in packets:
                    await ws.send(pkt.encode())
            except Exception:
                break
        await ws.close()

    writer_task = asyncio.ensure_future(writer())

    self.server.logger.info("%s: Upgrade to websocket successful", self.sid)

    max_size = self.server.max_http_buffer_size
    while True:
        # the only change: the next packet is awaited here, not in a task under wait_for
        try:
            p = await ws.wait()
        except asyncio.CancelledError:  # as the library: a cancelled read ends the connection
            break
        except Exception:
            break
        if p is None:
            # connection closed by client
            break
        if len(p) > max_size:
            break
        pkt = packet.Packet(encoded_packet=p)
        try:
            await self.receive(pkt)
        except exceptions.UnknownPacketError:  # pragma: no cover
            pass
        except exceptions.SocketIsClosedError:  # pragma: no cover
            self.server.logger.info("Receive error -- socket is closed")
            break
        except Exception:  # pragma: no cover
            # if we get an unexpected exception we log the error and exit
            # the connection properly
            self.server.logger.exception("Unknown receive error")

    await self.queue.put(None)  # unlock the writer task so it can exit
    await writer_task
    await self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)


def install() -> None:
    """Make every python-engineio server socket of this process read its WebSocket as above
    (idempotent)."""
    async_socket.AsyncSocket._websocket_handler = _websocket_handler
