"""python-engineio's wait for a socket's next packets, without ``asyncio.wait_for``.

Every Engine.IO socket has a writer that waits for the packets queued for it
(``AsyncSocket.poll``): the first under a timeout of the ping interval plus the ping timeout,
then whatever else is already queued. python-engineio 4.15 waits for the first with
``asyncio.wait_for(queue.get(), timeout)``, which on Python 3.11 wraps the ``get`` in a task of
its own and adds a waiter future and a timer: per packet, that is per watcher of every live
update. A scaled-out server's profile put ``wait_for`` and the task it makes in about a tenth of
its CPU per live update (5 watchers). ``asyncio.timeout`` bounds the same ``get`` in the
writer's own task with one timer.

The contract is the library's: the packets (the first, then the ones queued behind it, up to a
``None``, which stays queued and ends the writer next time), ``[]`` for a ``None`` first, and
``QueueEmpty`` when nothing came in time or the wait was cancelled. Installed when this module
is imported (``realtime.server`` imports it).
"""

from __future__ import annotations

import asyncio

from engineio import exceptions
from engineio.async_socket import AsyncSocket
from engineio.packet import Packet

#: the library's own ``poll`` (tests compare against it)
ENGINEIO_POLL = AsyncSocket.poll


async def poll(self: AsyncSocket) -> list[Packet]:
    """Wait for packets to send to the client (``AsyncSocket.poll``, see the module)."""
    queue = self.queue
    try:
        async with asyncio.timeout(self.server.ping_interval + self.server.ping_timeout):
            first = await queue.get()
        queue.task_done()
    except (TimeoutError, asyncio.CancelledError):
        raise exceptions.QueueEmpty() from None
    if first is None:
        return []
    packets: list[Packet] = [first]
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


setattr(AsyncSocket, "poll", poll)  # noqa: B010  # mypy: a method
