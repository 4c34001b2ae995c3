"""``WebSocketBroadcaster``: pushes ``session.updated`` and ``session.status`` hints to clients.

Events are hints, never data: ids, watermarks, states and times, no health values (no PHI on the
wire beyond the authorised GET). A client that receives ``session.updated`` re-GETs the payload
with ``If-None-Match``.

Rooms:

- ``session:<id>``: sockets whose ``subscribe`` passed the ownership check;
- ``user:<id>``: every socket of that user, joined on connect, so a session list also learns about
  sessions it has not subscribed to (``session.status`` goes to both rooms).

The same class runs inside a server (emitting through its ``AsyncServer``, which fans out through
Redis when configured) and inside a worker, which is no server and emits through a write-only Redis
manager (``WebSocketBroadcaster.for_worker``). Emitting never raises into the caller: a compute or
a request must not fail because a push did; a failed emit is logged and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import redis.asyncio as aioredis
import socketio
from engineio import packet as eio_packet
from redis.asyncio.client import PubSub
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from socketio import packet as sio_packet

from vitalcast.alerts.models import SESSION_ALERT, Alert
from vitalcast.json_types import JsonObject
from vitalcast.observability import Metrics, get_logger
from vitalcast.realtime import socket_reader, socket_writer
from vitalcast.realtime.keepalive import TickedSocketIOServer
from vitalcast.redis_connections import (
    PUBSUB_MAX_CONNECTIONS,
    HeldPublishes,
    Lane,
    LaneBusy,
    pubsub_client,
)
from vitalcast.sessions.changes import CachedView
from vitalcast.sessions.models import Session
from vitalcast.settings import Settings
from vitalcast.telemetry.ports import TelemetryUpdate

log = get_logger(__name__)

EVENT_VERSION = 1
SESSION_UPDATED = "session.updated"
SESSION_STATUS = "session.status"
NAMESPACE = "/"
# Client events are a few hundred bytes; anything near this is abuse.
MAX_MESSAGE_BYTES = 16_384
# A push is a hint; waiting longer than this for Redis would only delay the compute that emits it.
EMIT_TIMEOUT_S = 2.0
#: the longest pause of the pub/sub listener between two attempts to subscribe again: a
#: server's fan-out from other processes returns at most this long after Redis does (the stock
#: listener's 60 s left a server deaf for up to a minute after an outage of half a minute); an
#: attempt on a Redis that is down costs a refused connection
LISTEN_RETRY_MAX_S = 5.0


def listener_name(channel: str) -> str:
    """The Redis client name of a server's pub/sub listener on ``channel``."""
    return "vitalcast-listener-" + "".join(
        c if c.isalnum() or c in "-_.:" else "_" for c in channel
    )


def session_room(session_id: str) -> str:
    return f"session:{session_id}"


def user_room(user_id: str) -> str:
    return f"user:{user_id}"


def session_updated_event(update: TelemetryUpdate) -> JsonObject:
    """The ``session.updated`` envelope of docs/design.md (v1): ``changed`` is the range of buckets
    whose series changed since the view's previous save (null bounds: unknown), and
    ``base_watermark`` that save's watermark (null: none), so a client holding it can ask for a
    delta (``GET …/telemetry?since_watermark=``)."""
    return {
        "v": EVENT_VERSION,
        "type": SESSION_UPDATED,
        "session_id": update.session_id,
        "source_watermark": update.source_watermark,
        "state": update.state,
        "window_minutes": update.window_minutes,
        "resolution": update.resolution,
        "computed_at_ms": update.computed_at_ms,
        "live": update.live,
        "changed": {"from_ms": update.changed_from_ms, "to_ms": update.changed_to_ms},
        "base_watermark": update.base_watermark,
    }


def session_status_event(session: Session) -> JsonObject:
    """The ``session.status`` envelope: a session started, ended or was cancelled."""
    return {
        "v": EVENT_VERSION,
        "type": SESSION_STATUS,
        "session_id": session.id,
        "status": session.status.value,
        "start_ms": session.start_ms,
        "end_ms": session.end_ms,
        "source_watermark": session.source_watermark,
        "live": session.live,
    }


def session_deleted_event(session: Session) -> JsonObject:
    """The ``session.status`` envelope of a deleted session: the last event of its room."""
    return session_status_event(session) | {"status": "deleted", "live": False}


class Emitter(Protocol):
    """What the broadcaster emits through: an ``AsyncServer`` or a write-only pub/sub manager."""

    async def emit(
        self,
        event: str,
        data: Any,  # Any: python-socketio's emit is untyped (here and below)
        *,
        to: Any,  # Any: as above
        namespace: str,
    ) -> Any: ...  # Any: as above

    async def close_room(self, room: str, namespace: str) -> Any: ...  # Any: as emit


class RoomIndex:
    """Keeps the rooms of each client beside python-socketio's rooms, so that a disconnect
    leaves the client's own rooms instead of scanning every room of the namespace.

    The stock ``basic_disconnect`` copies the namespace's rooms and tests each for the client:
    O(rooms) per disconnect, and one server holds a room per socket and per subscribed session.
    When 5,000 watchers of 1,000 sessions left at once (a load balancer or a network blip drops
    them together), the server's event loop spent 8.7 s in that scan (stack samples: 300 of 343
    in ``basic_disconnect``) and served nothing else. With the index a disconnect costs the
    rooms its client is in. Mixed in before a python-socketio manager; every change to the
    rooms goes through ``basic_enter_room`` and ``basic_leave_room``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # Any: the manager's own arguments
        super().__init__(*args, **kwargs)
        #: (namespace, sid) -> the rooms it is in, the connection room ``None`` and its own too
        self._rooms_of: dict[tuple[str, str], set[str | None]] = {}

    # the manager's own state, declared for the type checker (python-socketio is untyped)
    rooms: dict[str, dict[str | None, Any]]  # Any: a bidict of sid -> Engine.IO sid
    callbacks: dict[str, Any]  # Any: a client's ack callbacks
    pending_connect: dict[str, list[str]]
    pending_disconnect: dict[str, list[str]]

    def basic_enter_room(
        self, sid: str, namespace: str, room: str | None, eio_sid: str | None = None
    ) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)  # type: ignore[misc]
        self._rooms_of.setdefault((namespace, sid), set()).add(room)

    def basic_leave_room(self, sid: str, namespace: str, room: str | None) -> None:
        super().basic_leave_room(sid, namespace, room)  # type: ignore[misc]
        rooms = self._rooms_of.get((namespace, sid))
        if rooms is not None:
            rooms.discard(room)
            if not rooms:
                del self._rooms_of[(namespace, sid)]

    def basic_disconnect(self, sid: str, namespace: str, **_kwargs: Any) -> None:  # Any: unused
        # python-socketio 5.18's basic_disconnect with the scan of every room replaced by the
        # index; the rest (callbacks, pending lists) as it does it
        if namespace not in self.rooms:
            return
        for room in list(self._rooms_of.get((namespace, sid), ())):
            self.basic_leave_room(sid, namespace, room)
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            sids = pending.get(namespace)
            if sids is not None and sid in sids:
                sids.remove(sid)
                if not sids:
                    del pending[namespace]

    def get_rooms(self, sid: str, namespace: str) -> list[str]:
        """The rooms ``sid`` is in (its own included), from the index."""
        return [r for r in self._rooms_of.get((namespace, sid), ()) if r is not None]


class QueuedEmit(socketio.AsyncManager):  # type: ignore[misc]
    """A manager's local delivery that hands a room's packet to its sockets one after another.

    python-socketio's emit encodes a room's packet once, then makes a task per recipient to
    queue it and waits for them all: a task, its scheduling and a done callback per watcher
    per event, for a hand-over that never waits (Engine.IO queues the packet on the socket's
    unbounded queue, and its writer task sends it). Queuing in a loop does the same without
    them, in the same order; a failed hand-over to one socket does not stop the others, as a
    failed task did not. Emits that want acknowledgements keep the library's way. Listed after
    a pub/sub manager (``BoundedRedisManager``), it is the delivery of the events that arrive
    through Redis on this node.
    """

    async def emit(
        self,
        event: str,
        data: Any,  # Any: python-socketio's emit is untyped (here and below)
        namespace: str,
        room: Any = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: Any = None,
        **kwargs: Any,
    ) -> None:
        room = to or room
        if callback is not None or namespace not in self.rooms:
            await super().emit(
                event, data, namespace, room=room, skip_sid=skip_sid, callback=callback, **kwargs
            )
            return
        # the argument handling and the one encoding are python-socketio 5.18's
        args = list(data) if isinstance(data, tuple) else [] if data is None else [data]
        skipped = skip_sid if isinstance(skip_sid, list) else [skip_sid]
        encoded = self.server.packet_class(
            sio_packet.EVENT, namespace=namespace, data=[event, *args]
        ).encode()
        packets = [
            eio_packet.Packet(eio_packet.MESSAGE, p)
            for p in (encoded if isinstance(encoded, list) else [encoded])
        ]
        for sid, eio_sid in self.get_participants(namespace, room):
            if sid in skipped:
                continue
            for one in packets:
                try:
                    await self.server._send_eio_packet(eio_sid, one)
                except Exception as exc:
                    log.debug("realtime_send_failed", error=type(exc).__name__)


class IndexedManager(RoomIndex, QueuedEmit):
    """The in-process manager of an embedded server: rooms indexed by client (``RoomIndex``),
    packets queued in a loop (``QueuedEmit``)."""


class BoundedRedisManager(RoomIndex, socketio.AsyncRedisManager, QueuedEmit):  # type: ignore[misc]
    """``AsyncRedisManager`` on a bounded, blocking connection pool with no socket read timeout,
    whose events from Redis reach this node's sockets through ``QueuedEmit`` (after the pub/sub
    manager in the method order, it is the ``AsyncManager`` the pub/sub manager delivers with).

    The stock manager's pool grows with concurrent publishes (or, when capped, fails them); this
    one caps connections and lets a publish wait briefly for a free one. The read timeout is off
    explicitly so the pub/sub listener never times out on an idle channel (a timed-out listener
    re-subscribes after a pause and loses what was published meanwhile).
    """

    def __init__(
        self,
        url: str,
        *,
        channel: str,
        write_only: bool = False,
        max_connections: int = PUBSUB_MAX_CONNECTIONS,
        held: HeldPublishes | None = None,
    ) -> None:
        self.redis: aioredis.Redis | None = None
        self.pubsub: PubSub | None = None
        self._max_connections = max_connections
        #: a connection of the pool kept for publishing, one publish at a time (``_publish``)
        self._lane = Lane()
        super().__init__(url, channel=channel, write_only=write_only)
        self._retired: set[asyncio.Task[None]] = set()
        #: a queue worker's publishes, held to ride with its jobs' completions (write-only)
        self._held = held if write_only else None
        if self._held is not None:
            self._held.attach(self._send_held)

    def _redis_connect(self) -> None:
        # Called again after a connection error: retire the previous client instead of leaking it.
        previous = self.redis
        # the lane's connection belongs to the previous client's pool, which closes it
        self._lane = Lane()
        self.redis = pubsub_client(self.redis_url, max_connections=self._max_connections)
        self.connected = True
        if previous is not None:
            task = asyncio.get_running_loop().create_task(_close_quietly(previous))
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)

    async def _publish(self, data: Any) -> Any:  # Any: overrides python-socketio's untyped one
        message = self.json.dumps(data)
        if self._held is not None and self._held.hold(self.channel, message):
            # sent with the completion of the job whose compute made it (``HeldPublishes``)
            return 0
        return await self._publish_message(data, message)

    async def _publish_message(self, data: Any, message: str) -> Any:  # Any: as _publish
        client = self.redis if self.connected else None
        if client is not None and not self._lane.busy:
            # PUBLISH on the lane (``redis_connections.Lane``): through the client a publish
            # cost a worker 92 µs of CPU per event (the blocking pool's checkout and release),
            # 48 on the lane (uvloop). A lane that fails is closed, and the stock publish
            # (which retries and reconnects) sends the event: at least once, as the stock
            # retry already was.
            with contextlib.suppress(LaneBusy, RedisError, OSError):
                return await self._lane.call(
                    client.connection_pool, "PUBLISH", self.channel, message
                )
        # The stock publish logs and returns None when Redis stays unreachable after one retry.
        # A write-only manager (a worker) delivers through Redis alone, so that means nobody got
        # the event: raise, and the broadcaster logs it as failed instead of counting it emitted.
        sent = await super()._publish(data)
        if sent is None and self.write_only:
            raise RedisConnectionError("publish to Redis failed")
        return sent

    async def _listen(self) -> AsyncIterator[bytes]:  # overrides python-socketio's
        """The channel's messages (as published: JSON bytes), read straight off a connection
        of their own, subscribed again after a failure (after 1 s, doubling to
        ``LISTEN_RETRY_MAX_S``; what was published meanwhile is lost, as it was).

        The stock listener reads through redis-py's ``PubSub`` (its retrying execute, a message
        dict per message, its handler lookup) and two generators over it: receiving one event
        cost a server about 180-210 µs of CPU, against 125-140 for the same read on a bare
        connection (a loop wake-up is most of that); each live update brings one such event
        per server."""
        channel = self.channel.encode()
        retry_s = 1.0
        while True:
            connection: AbstractConnection | None = None
            try:
                self._redis_connect()
                assert self.redis is not None
                # a connection of the pool's kind, outside its count (the listener's alone),
                # named so that an operator (or a test) can tell it in CLIENT LIST
                pool = self.redis.connection_pool
                listening: AbstractConnection = pool.connection_class(
                    **pool.connection_kwargs, client_name=listener_name(self.channel)
                )
                connection = listening
                await listening.connect()  # type: ignore[no-untyped-call]
                await listening.send_command("SUBSCRIBE", self.channel)
                retry_s = 1.0
                read = listening.read_response
                while True:
                    reply = await read(
                        timeout=math.inf, disconnect_on_error=False, push_request=True
                    )
                    # [b"message", channel, data]; the subscribe confirmation is skipped
                    if (
                        isinstance(reply, list)
                        and len(reply) == 3
                        and reply[0] == b"message"
                        and reply[1] == channel
                    ):
                        yield reply[2]
            except (RedisError, OSError) as exc:
                log.error("realtime_listen_failed", error=type(exc).__name__, retry_s=retry_s)
                await asyncio.sleep(retry_s)
                retry_s = min(retry_s * 2, LISTEN_RETRY_MAX_S)
            finally:
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await connection.disconnect()

    async def _send_held(self, messages: list[tuple[str, str]]) -> None:
        """Held publishes whose job did not complete (or whose completion failed), sent on
        their own; one that cannot be sent is logged, as a failed emit is."""
        for _channel, message in messages:
            try:
                async with asyncio.timeout(EMIT_TIMEOUT_S):
                    await self._publish_message(self.json.loads(message), message)
            except Exception as exc:
                log.warning("realtime_emit_failed", held=True, error=type(exc).__name__)

    async def aclose(self) -> None:
        """Stop listening and close the Redis connections (idempotent)."""
        listener = getattr(self, "thread", None)
        if isinstance(listener, asyncio.Task) and not listener.done():
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
        if self.pubsub is not None:
            await _close_quietly(self.pubsub)
            self.pubsub = None
        if self.redis is not None:
            await _close_quietly(self.redis)
            self.redis = None
        self.connected = False


async def _close_quietly(client: Any) -> None:  # Any: redis-py clients and pubsubs
    try:
        await client.aclose()
    except Exception:
        log.debug("redis_close_failed")


def redis_manager(
    settings: Settings, *, write_only: bool, held: HeldPublishes | None = None
) -> BoundedRedisManager:
    """The Socket.IO Redis manager of a server (``write_only=False``) or a worker (whose
    publishes ``held`` may carry)."""
    if not settings.redis_url:
        raise ValueError("redis_url is required for a Socket.IO Redis manager")
    return BoundedRedisManager(
        settings.redis_url, channel=settings.socketio_channel, write_only=write_only, held=held
    )


def socketio_server(settings: Settings) -> tuple[socketio.AsyncServer, BoundedRedisManager | None]:
    """The Socket.IO server of one server process and, when Redis is configured, the client
    manager through which its emits reach every node. Handlers are registered by
    ``realtime.server.RealtimeServer``; the broadcaster only emits through it."""
    manager = redis_manager(settings, write_only=False) if settings.redis_url else None
    socket_writer.install()  # a WebSocket's writer waits without a timer (why: socket_writer)
    socket_reader.install()  # and its reader without a task and a timer per packet (why: there)
    # its keepalive (monitor and pings) on the loop's shared ticks: realtime/keepalive.py
    sio = TickedSocketIOServer(
        async_mode="asgi",
        client_manager=manager if manager is not None else IndexedManager(),
        max_http_buffer_size=MAX_MESSAGE_BYTES,
        logger=False,
        engineio_logger=False,
    )
    return sio, manager


class WebSocketBroadcaster:
    """Emits realtime hints to rooms; implements ``TelemetryListener`` and ``session_status``."""

    def __init__(
        self,
        emitter: Emitter,
        *,
        metrics: Metrics | None = None,
        owned_manager: BoundedRedisManager | None = None,
    ) -> None:
        self._emitter = emitter
        self._metrics = metrics
        self._owned_manager = owned_manager
        #: ``events_emitted`` by event type, looked up once (``labels`` validates and locks)
        self._emitted: dict[str, Any] = {}  # Any: a prometheus counter's child

    @classmethod
    def for_server(
        cls,
        sio: socketio.AsyncServer,
        manager: BoundedRedisManager | None,
        *,
        metrics: Metrics | None = None,
    ) -> WebSocketBroadcaster:
        """A broadcaster emitting through the server's own Socket.IO server (and its Redis
        manager, which it closes on ``close``)."""
        return cls(sio, metrics=metrics, owned_manager=manager)

    @classmethod
    def for_worker(
        cls,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        held: HeldPublishes | None = None,
    ) -> WebSocketBroadcaster:
        """A broadcaster for a process that is not a server: emits through a write-only Redis
        manager on ``settings.socketio_channel``; every server on that channel delivers. With
        ``held``, a publish made while a queue job runs goes out with the job's completion."""
        manager = redis_manager(settings, write_only=True, held=held)
        return cls(manager, metrics=metrics, owned_manager=manager)

    async def session_updated(self, update: TelemetryUpdate) -> None:
        """Tell the subscribers of the session that a payload was saved (never raises)."""
        event = session_updated_event(update)
        await self._emit(SESSION_UPDATED, event, session_room(update.session_id), update.session_id)

    async def sessions_changed(
        self, sessions: Sequence[Session], views: Sequence[CachedView]
    ) -> None:
        """Nothing to push yet: the recompute that ingest scheduled emits ``session.updated``."""

    async def session_status(self, session: Session) -> None:
        """Tell the session's subscribers and its owner's sockets that it started, ended or was
        cancelled (never raises)."""
        rooms = [session_room(session.id), user_room(session.user_id)]
        await self._emit(SESSION_STATUS, session_status_event(session), rooms, session.id)

    async def session_deleted(self, session: Session) -> None:
        """Tell the session's subscribers and its owner's sockets that it is gone, then empty
        its room on every node, which ends every subscription to it (never raises)."""
        rooms = [session_room(session.id), user_room(session.user_id)]
        await self._emit(SESSION_STATUS, session_deleted_event(session), rooms, session.id)
        try:
            async with asyncio.timeout(EMIT_TIMEOUT_S):
                await self._emitter.close_room(session_room(session.id), NAMESPACE)
        except Exception as exc:
            log.warning(
                "realtime_close_room_failed", session_id=session.id, error=type(exc).__name__
            )

    async def session_alert(self, alert: Alert) -> None:
        """Tell the session's subscribers (owner and shares) of a newly announced alert
        episode (never raises)."""
        await self._emit(
            SESSION_ALERT, alert.event(), session_room(alert.session_id), alert.session_id
        )

    async def close(self) -> None:
        """Release the write-only manager's Redis connections, if this broadcaster owns one."""
        if self._owned_manager is not None:
            await self._owned_manager.aclose()

    async def _emit(
        self, event: str, data: JsonObject, to: str | list[str], session_id: str
    ) -> None:
        try:
            async with asyncio.timeout(EMIT_TIMEOUT_S):
                await self._emitter.emit(event, data, to=to, namespace=NAMESPACE)
        except Exception as exc:
            log.warning(
                "realtime_emit_failed", type=event, session_id=session_id, error=type(exc).__name__
            )
            return
        if self._metrics is not None:
            emitted = self._emitted.get(event)
            if emitted is None:
                emitted = self._emitted[event] = self._metrics.events_emitted.labels(type=event)
            emitted.inc()
