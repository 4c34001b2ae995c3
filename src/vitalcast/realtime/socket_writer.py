"""A WebSocket's writer waits for its next packet without a timer of its own.

python-engineio (4.15) runs one writer task per WebSocket: it waits for the socket's next
packet with ``asyncio.wait_for(queue.get(), ping_interval + ping_timeout)`` and closes the
connection when nothing came in that time. Each wait is a task, a future, a timer handle, a
callback and their contexts: 17 objects the garbage collector tracks, renewed at every event
the socket is sent. A server holding 5,000 sockets keeps one such wait alive per socket, and
renewing them barely moves the allocation count that triggers a young collection (the new
wait's allocations cancel the old one's deallocations), so the young generation filled with
them between collections: at 1,000 live sessions (``bench/capacity``) a young collection found
140,000-215,000 objects, about half of them sockets' waits, and stopped the event loop for
60-220 ms each, three or four times in a 20 s step.

The timer guards nothing a WebSocket needs: the connection's reader waits for the client with
the same timeout and, when it fires or the client goes, puts the end of the queue that ends the
writer; the server's pings put a packet in the queue every ``ping_interval`` while the client
answers, and a client that stops answering is closed by the ping check (which also ends the
queue). So ``install`` replaces the socket's ``poll``: on a WebSocket (``upgraded``) it awaits
the queue alone, 4 tracked objects per wait; a polling transport's long-poll keeps the library's
timed wait, which answers its GET when nothing came. What it returns is the library's: the
packets queued (the end of the queue is kept for the next call), an empty list at the end.

This is python-engineio past its public API, held to the minor release the tests cover
(``pyproject.toml``).
"""

from __future__ import annotations

import asyncio

from engineio import async_socket, exceptions, packet

_LIBRARY_POLL = async_socket.AsyncSocket.poll


async def _poll(socket: async_socket.AsyncSocket) -> list[packet.Packet]:
    """The packets to send to the client, waiting for the first; [] when the socket ends."""
    if not socket.upgraded:
        packets: list[packet.Packet] = await _LIBRARY_POLL(socket)
        return packets
    queue: asyncio.Queue[packet.Packet | None] = socket.queue
    try:
        first = await queue.get()
    except asyncio.CancelledError:
        # as the library: a cancelled wait ends the writer, which closes the WebSocket
        raise exceptions.QueueEmpty() from None
    queue.task_done()
    if first is None:
        return []
    packets = [first]
    while True:
        try:
            pkt = queue.get_nowait()
        except asyncio.QueueEmpty:
            break
        queue.task_done()
        if pkt is None:
            queue.put_nowait(None)
            break
        packets.append(pkt)
    return packets


def install() -> None:
    """Make every python-engineio server socket of this process poll as above (idempotent)."""
    async_socket.AsyncSocket.poll = _poll
