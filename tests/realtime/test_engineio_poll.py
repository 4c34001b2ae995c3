"""The Engine.IO writers' wait for packets (``realtime.engineio_poll``) answers as the library's
own ``poll`` does, on real Engine.IO sockets and queues."""

from __future__ import annotations

import asyncio

import engineio
import pytest
from engineio import exceptions, packet
from engineio.async_socket import AsyncSocket

from vitalcast.realtime import engineio_poll

POLLS = {"ours": engineio_poll.poll, "library": engineio_poll.ENGINEIO_POLL}


def socket(ping_interval: float = 25, ping_timeout: float = 20) -> AsyncSocket:
    server = engineio.AsyncServer(ping_interval=ping_interval, ping_timeout=ping_timeout)
    return AsyncSocket(server, "sid")


def test_the_library_socket_polls_with_ours() -> None:
    assert AsyncSocket.poll is engineio_poll.poll


@pytest.mark.parametrize("which", sorted(POLLS))
async def test_packets_queued_come_together_up_to_the_end(which: str) -> None:
    sock = socket()
    pkts = [packet.Packet(packet.MESSAGE, data=f"m{i}") for i in range(3)]
    for pkt in pkts:
        sock.queue.put_nowait(pkt)
    sock.queue.put_nowait(None)
    assert await POLLS[which](sock) == pkts
    # the end stays queued: the next poll says the connection is closed
    assert await POLLS[which](sock) == []
    await asyncio.wait_for(sock.queue.join(), 1)


@pytest.mark.parametrize("which", sorted(POLLS))
async def test_a_packet_queued_later_wakes_the_wait(which: str) -> None:
    sock = socket()
    pkt = packet.Packet(packet.MESSAGE, data="later")
    asyncio.get_running_loop().call_later(0.01, sock.queue.put_nowait, pkt)
    assert await POLLS[which](sock) == [pkt]


@pytest.mark.parametrize("which", sorted(POLLS))
async def test_nothing_in_time_or_a_cancel_is_queue_empty(which: str) -> None:
    with pytest.raises(exceptions.QueueEmpty):
        await POLLS[which](socket(ping_interval=0.02, ping_timeout=0.02))
    waiting = asyncio.ensure_future(POLLS[which](socket()))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(exceptions.QueueEmpty):
        await waiting
