"""The servers' Socket.IO managers index rooms by client (``RoomIndex``): the same rooms,
callbacks and pending lists as python-socketio's own manager after any sequence of connects,
joins, leaves, closed rooms and disconnects, without scanning every room per disconnect; and
they deliver a room's packet without a task per recipient (``QueuedEmit``), embedded and through
Redis, to the same sockets as python-socketio."""

from __future__ import annotations

import random
from typing import Any

import pytest
import socketio

from tests.conftest import REDIS_URL
from vitalcast.realtime.broadcaster import BoundedRedisManager, IndexedManager

NAMESPACES = ("/", "/other")
ROOMS = tuple(f"session:{i}" for i in range(6))


def canonical(manager: Any, eio_of: dict[str, str]) -> dict[str, Any]:  # Any: untyped manager
    """The manager's state with its random sids replaced by the Engine.IO sids they stand for
    (the two managers draw different sids for the same client)."""
    rooms = {
        ns: {
            ("client", eio_of[room]) if room in eio_of else room: sorted(members.values())
            for room, members in by_room.items()
        }
        for ns, by_room in manager.rooms.items()
    }
    return {
        "rooms": rooms,
        "callbacks": sorted(eio_of.get(sid, sid) for sid in manager.callbacks),
        "pending_connect": {
            ns: sorted(eio_of[s] for s in v) for ns, v in manager.pending_connect.items()
        },
        "pending_disconnect": {
            ns: sorted(eio_of[s] for s in v) for ns, v in manager.pending_disconnect.items()
        },
    }


@pytest.mark.parametrize("seed", range(8))
async def test_indexed_manager_keeps_the_rooms_python_socketio_keeps(seed: int) -> None:
    """Random connects, joins, leaves, closed rooms, pending disconnects and disconnects leave
    both managers in the same state, and the index lists exactly the rooms each client is in."""
    stock, indexed = socketio.AsyncManager(), IndexedManager()
    socketio.AsyncServer(client_manager=stock)
    socketio.AsyncServer(client_manager=indexed)
    rng = random.Random(seed)
    clients: dict[tuple[str, str], dict[int, str]] = {}  # (ns, eio) -> manager index -> sid
    eio_of: tuple[dict[str, str], dict[str, str]] = ({}, {})  # per manager: sid -> eio
    managers = (stock, indexed)
    for step in range(400):
        op = rng.random()
        if op < 0.3 or not clients:
            ns, eio = rng.choice(NAMESPACES), f"eio-{step}"
            sids = {i: await m.connect(eio, ns) for i, m in enumerate(managers)}
            clients[(ns, eio)] = sids
            for i, sid in sids.items():
                eio_of[i][sid] = eio
            continue
        (ns, eio), sids = rng.choice(sorted(clients.items()))
        room = rng.choice(ROOMS)
        for i, m in enumerate(managers):
            if op < 0.55:
                await m.enter_room(sids[i], ns, room)
            elif op < 0.7:
                await m.leave_room(sids[i], ns, room)
            elif op < 0.75:
                await m.close_room(room, ns)
            elif op < 0.8:
                m.pre_disconnect(sids[i], ns)
            elif op < 0.85:
                m._generate_ack_id(sids[i], lambda *_a: None)
            else:
                await m.disconnect(sids[i], ns)
        if op >= 0.85:
            del clients[(ns, eio)]
    assert canonical(indexed, eio_of[1]) == canonical(stock, eio_of[0])
    scanned = {
        (ns, sid): {room for room, members in by_room.items() if sid in members}
        for ns, by_room in indexed.rooms.items()
        for sid in by_room.get(None, {})
    }
    assert indexed._rooms_of == scanned
    for (ns, _eio), sids in clients.items():
        ours = sorted(eio_of[1].get(r, r) for r in indexed.get_rooms(sids[1], ns))
        theirs = sorted(eio_of[0].get(r, r) for r in stock.get_rooms(sids[0], ns))
        assert ours == theirs


class _Recording(socketio.AsyncServer):  # type: ignore[misc]
    """A server whose Engine.IO hand-over records each packet per Engine.IO sid instead of
    sending it; the sids in ``failing`` raise, as a socket gone mid-emit would."""

    def __init__(self, manager: Any, failing: frozenset[str] = frozenset()) -> None:
        super().__init__(client_manager=manager)
        self.sent: dict[str, list[str]] = {}
        self.failing = failing

    async def _send_eio_packet(self, eio_sid: str, eio_pkt: Any) -> None:
        if eio_sid in self.failing:
            raise ConnectionError("gone")
        self.sent.setdefault(eio_sid, []).append(eio_pkt.encode())


async def test_an_emit_reaches_the_sockets_python_socketio_reaches_in_the_same_order() -> None:
    """The indexed manager queues a room's packet on each socket in a loop instead of a task
    per recipient: the same packets reach the same sockets in the same order (rooms, lists of
    rooms, skipped sids), and a socket whose hand-over fails does not stop the others."""
    servers = [
        _Recording(socketio.AsyncManager()),
        _Recording(IndexedManager(), failing=frozenset({"eio-3"})),
    ]
    sids: list[dict[str, str]] = [{}, {}]
    for i, server in enumerate(servers):
        for n in range(6):
            sid = await server.manager.connect(f"eio-{n}", "/")
            sids[i][f"eio-{n}"] = sid
            await server.manager.enter_room(sid, "/", ROOMS[n % 3])
    for i, server in enumerate(servers):
        await server.emit("session.updated", {"n": 1}, to=ROOMS[0])
        await server.emit("session.status", {"n": 2}, to=[ROOMS[1], ROOMS[2]])
        await server.emit("session.updated", ("a", 3), to=ROOMS[1], skip_sid=sids[i]["eio-1"])
        await server.emit("session.alert", None, to=ROOMS[2])
    stock, indexed = servers
    assert stock.sent.pop("eio-3")
    assert indexed.sent == stock.sent
    assert set(indexed.sent) == {"eio-0", "eio-1", "eio-2", "eio-4", "eio-5"}
    assert len(indexed.sent["eio-5"]) == 2


class _Sender(BoundedRedisManager):
    """A worker's write-only manager whose messages are kept instead of published."""

    def __init__(self) -> None:
        super().__init__(REDIS_URL, channel="unused", write_only=True)
        self.published: list[Any] = []  # Any: python-socketio's pub/sub messages

    async def _publish(self, data: Any) -> None:  # Any: as above
        self.published.append(self.json.loads(self.json.dumps(data)))


async def test_events_through_redis_reach_the_sockets_python_socketio_reaches() -> None:
    """A scaled-out server delivers what arrives through Redis with ``QueuedEmit`` (no task per
    recipient): a worker's messages, handed to python-socketio's Redis manager and to ours as
    the pub/sub listener hands them, reach the same sockets with the same packets in the same
    order, and a socket whose hand-over fails does not stop the others."""
    sender = _Sender()
    receiver = BoundedRedisManager(REDIS_URL, channel="unused")
    stock = socketio.AsyncRedisManager(REDIS_URL, channel="unused")
    try:
        servers = [_Recording(stock), _Recording(receiver, failing=frozenset({"eio-3"}))]
        for server in servers:
            for n in range(6):
                sid = await server.manager.connect(f"eio-{n}", "/")
                await server.manager.enter_room(sid, "/", ROOMS[n % 3])
        await sender.emit("session.updated", {"n": 1}, to=ROOMS[0], namespace="/")
        await sender.emit("session.status", {"n": 2}, to=[ROOMS[1], ROOMS[2]], namespace="/")
        await sender.emit("session.updated", ("a", 3), to=ROOMS[1], namespace="/")
        await sender.emit("session.alert", None, to=ROOMS[2], namespace="/")
        for message in sender.published:
            for server in servers:
                await server.manager._handle_emit(message)
        theirs, ours = servers
        assert theirs.sent.pop("eio-3")
        assert ours.sent == theirs.sent
        assert set(ours.sent) == {"eio-0", "eio-1", "eio-2", "eio-4", "eio-5"}
        assert len(ours.sent["eio-4"]) == 2  # room 1: the status, the update with two arguments
    finally:
        await sender.aclose()
        await receiver.aclose()
