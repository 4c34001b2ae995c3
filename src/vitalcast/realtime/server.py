"""The Socket.IO surface of one server process, mounted at ``/socket.io/``.

Connect with ``auth: {token}`` (the HTTP bearer token); a missing, bad or expired token is refused
with its code as the reason, and a connected socket is disconnected when its token expires (after
an ``error {code: "TOKEN_EXPIRED"}`` event). Client events, each answered through its ack:

- ``subscribe {session_id, since_watermark?}`` → ``{ok: true, session_id, state,
  source_watermark, session_watermark, live}``. Joins room ``session:<id>`` only for the owner.
  ``source_watermark`` is the cached payload's (what a GET serves now, null when nothing is
  cached), ``session_watermark`` the session's current one. When ``since_watermark`` is older than
  a fresh cached payload, that socket gets one ``session.updated`` at once, so a reconnecting
  client misses nothing.
- ``unsubscribe {session_id}`` → ``{ok: true}``.
- anything else → ``{ok: false, code: "UNKNOWN_EVENT"}``.

Failures answer ``{ok: false, code, message}``: ``VALIDATION_ERROR``, ``RATE_LIMITED`` (per socket,
``settings.rate_limit_socket_events``; other sockets are unaffected), ``SESSION_NOT_FOUND`` (absent
or someone else's: existence never leaks), ``TOO_MANY_SUBSCRIPTIONS``, ``DATABASE_UNAVAILABLE``.

The room is joined before the cache state is read: a save racing a subscribe may reach the socket
twice with one watermark (events are idempotent hints), but it is never missed.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any

import limits
import socketio
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from vitalcast.auth import verify_token
from vitalcast.container import Container
from vitalcast.errors import Unauthenticated
from vitalcast.observability import get_logger
from vitalcast.realtime.broadcaster import (
    SESSION_UPDATED,
    BoundedRedisManager,
    WebSocketBroadcaster,
    redis_manager,
    session_room,
    session_updated_event,
    user_room,
)
from vitalcast.sessions import repository as session_repository
from vitalcast.sessions.models import Session

log = get_logger(__name__)

SOCKETIO_PATH = "/socket.io"
# Client events are a few hundred bytes; anything near this is abuse.
MAX_MESSAGE_BYTES = 16_384
MAX_SUBSCRIPTIONS_PER_SOCKET = 100
# Cache states whose payload matches the session's current watermark.
FRESH_STATES = frozenset({"ready", "no_data"})


class SubscribeRequest(BaseModel):
    """Payload of ``subscribe``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    session_id: uuid.UUID
    since_watermark: Annotated[StrictInt, Field(ge=0)] | None = None


class UnsubscribeRequest(BaseModel):
    """Payload of ``unsubscribe``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    session_id: uuid.UUID


@dataclass(slots=True)
class _Client:
    """What this node knows about one connected socket."""

    user_id: str
    expiry: asyncio.TimerHandle | None = None
    sessions: set[str] = field(default_factory=set)


def _error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"ok": False, "code": code, "message": message, **extra}


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "payload"
    return f"{where}: {first['msg']}"


class RealtimeServer:
    """Socket.IO server, its handlers and the broadcaster that emits through it.

    With ``settings.redis_url`` the server uses a Redis client manager on
    ``settings.socketio_channel``, so an emit from any node or worker reaches every node;
    otherwise fan-out stays in this process.
    """

    def __init__(self, container: Container) -> None:
        self._container = container
        settings = container.settings
        self._manager: BoundedRedisManager | None = (
            redis_manager(settings, write_only=False) if settings.redis_url else None
        )
        self.sio = socketio.AsyncServer(
            async_mode="asgi",
            client_manager=self._manager,
            max_http_buffer_size=MAX_MESSAGE_BYTES,
            logger=False,
            engineio_logger=False,
        )
        self.broadcaster = WebSocketBroadcaster(self.sio, metrics=container.metrics)
        self._limit = limits.parse(settings.rate_limit_socket_events)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._clients: dict[str, _Client] = {}
        #: session id → sockets of this node subscribed to it (only ids with at least one)
        self._subscribers: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)
        self.sio.on("subscribe", self._on_subscribe)
        self.sio.on("unsubscribe", self._on_unsubscribe)
        self.sio.on("*", self._on_unknown)

    def subscribed_sessions(self) -> Collection[str]:
        """Sessions with at least one subscribed socket on this node (``Subscriptions``)."""
        return self._subscribers.keys()

    def _unsubscribed(self, session_ids: Iterable[str]) -> None:
        for session_id in session_ids:
            self._subscribers[session_id] -= 1
            if self._subscribers[session_id] <= 0:
                del self._subscribers[session_id]

    def asgi_app(self) -> socketio.ASGIApp:
        """The Engine.IO endpoint, for mounting at ``SOCKETIO_PATH`` (it takes all traffic there)."""
        return socketio.ASGIApp(self.sio, socketio_path=None)

    async def close(self) -> None:
        """Disconnect clients, stop timers and background tasks, release Redis."""
        for client in self._clients.values():
            if client.expiry is not None:
                client.expiry.cancel()
        for sid in list(self._clients):
            try:
                await self.sio.disconnect(sid, ignore_queue=True)
            except Exception:
                log.debug("realtime_disconnect_failed", sid=sid)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.sio.shutdown()
        if self._manager is not None:
            await self._manager.aclose()

    async def _on_connect(self, sid: str, _environ: dict[str, Any], auth: Any) -> None:
        token = auth.get("token") if isinstance(auth, dict) else None
        try:
            principal = verify_token(
                self._container.secret, token if isinstance(token, str) else None
            )
        except Unauthenticated as exc:
            log.info("realtime_connect_refused", code=exc.code)
            raise socketio.exceptions.ConnectionRefusedError(
                exc.code, {"code": exc.code, "message": exc.message}
            ) from None
        client = _Client(user_id=principal.user_id)
        delay_s = max(0.0, principal.expires_at_s - self._container.clock.now_ms() / 1000)
        client.expiry = asyncio.get_running_loop().call_later(delay_s, self._expire, sid)
        self._clients[sid] = client
        await self.sio.enter_room(sid, user_room(principal.user_id))
        self._container.metrics.socket_clients.set(len(self._clients))
        log.debug("realtime_connected", sid=sid, user_id=principal.user_id)

    async def _on_disconnect(self, sid: str, *_reason: Any) -> None:
        client = self._clients.pop(sid, None)
        if client is None:
            return
        if client.expiry is not None:
            client.expiry.cancel()
        self._unsubscribed(client.sessions)
        await self._limiter.clear(self._limit, sid)
        self._container.metrics.socket_clients.set(len(self._clients))
        log.debug("realtime_disconnected", sid=sid, user_id=client.user_id)

    def _expire(self, sid: str) -> None:
        task = asyncio.get_running_loop().create_task(self._disconnect_expired(sid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _disconnect_expired(self, sid: str) -> None:
        client = self._clients.get(sid)
        if client is None:
            return
        log.info("realtime_token_expired", sid=sid, user_id=client.user_id)
        try:
            await self.sio.emit(
                "error",
                {"code": "TOKEN_EXPIRED", "message": "The token has expired."},
                to=sid,
                ignore_queue=True,
            )
            await self.sio.disconnect(sid, ignore_queue=True)
        except Exception:
            log.warning("realtime_expire_failed", sid=sid)

    async def _admit(self, sid: str) -> tuple[_Client | None, dict[str, Any] | None]:
        """The socket's client record, or the error ack that refuses this event."""
        client = self._clients.get(sid)
        if client is None:
            return None, _error("UNAUTHENTICATED", "The socket is not connected.")
        if not await self._limiter.hit(self._limit, sid):
            stats = await self._limiter.get_window_stats(self._limit, sid)
            return None, _error(
                "RATE_LIMITED",
                f"Too many events; the limit is {self._limit}.",
                retry_after_seconds=max(1, math.ceil(stats.reset_time - time.time())),
            )
        return client, None

    async def _on_subscribe(self, sid: str, data: Any = None, *_extra: Any) -> dict[str, Any]:
        client, refusal = await self._admit(sid)
        if client is None:
            return refusal or {}
        try:
            request = SubscribeRequest.model_validate(data)
        except ValidationError as exc:
            return _error("VALIDATION_ERROR", _validation_message(exc))
        session_id = str(request.session_id)
        if (
            session_id not in client.sessions
            and len(client.sessions) >= MAX_SUBSCRIPTIONS_PER_SOCKET
        ):
            return _error(
                "TOO_MANY_SUBSCRIPTIONS",
                f"A socket may subscribe to at most {MAX_SUBSCRIPTIONS_PER_SOCKET} sessions.",
            )
        try:
            async with self._container.db.read() as conn:
                session = await session_repository.get(conn, client.user_id, session_id)
        except Exception as exc:
            log.warning("realtime_subscribe_db_failed", sid=sid, error=type(exc).__name__)
            return _error("DATABASE_UNAVAILABLE", "Try again shortly.", retry_after_seconds=2)
        if session is None:
            return _error("SESSION_NOT_FOUND", "Session not found.")
        await self.sio.enter_room(sid, session_room(session_id))
        if session_id not in client.sessions:
            client.sessions.add(session_id)
            self._subscribers[session_id] += 1
        state, cached_watermark = await self._subscription_state(session)
        if (
            request.since_watermark is not None
            and cached_watermark is not None
            and state in FRESH_STATES
            and cached_watermark > request.since_watermark
        ):
            await self._catch_up(sid, session, state, cached_watermark)
        return {
            "ok": True,
            "session_id": session_id,
            "state": state,
            "source_watermark": cached_watermark,
            "session_watermark": session.source_watermark,
            "live": session.live,
        }

    async def _on_unsubscribe(self, sid: str, data: Any = None, *_extra: Any) -> dict[str, Any]:
        client, refusal = await self._admit(sid)
        if client is None:
            return refusal or {}
        try:
            request = UnsubscribeRequest.model_validate(data)
        except ValidationError as exc:
            return _error("VALIDATION_ERROR", _validation_message(exc))
        session_id = str(request.session_id)
        await self.sio.leave_room(sid, session_room(session_id))
        if session_id in client.sessions:
            client.sessions.discard(session_id)
            self._unsubscribed([session_id])
        return {"ok": True, "session_id": session_id}

    async def _on_unknown(self, event: str, sid: str, *_args: Any) -> dict[str, Any]:
        _client, refusal = await self._admit(sid)
        if refusal is not None:
            return refusal
        return _error("UNKNOWN_EVENT", "Known events: subscribe, unsubscribe.")

    async def _subscription_state(self, session: Session) -> tuple[str, int | None]:
        telemetry = self._container.telemetry
        if telemetry is None:
            return "computing", None
        try:
            state, watermark = await telemetry.subscription_state(session)
        except Exception as exc:
            log.warning("realtime_state_failed", session_id=session.id, error=type(exc).__name__)
            return "failed", None
        return str(state), watermark

    async def _catch_up(self, sid: str, session: Session, state: str, watermark: int) -> None:
        """Send this socket the ``session.updated`` it missed: the default window's payload at
        ``watermark``. What changed since the client's watermark is unknown, so ``changed`` is
        null-bounded."""
        telemetry = self._container.telemetry
        key = telemetry.default_key(session)
        try:
            async with self._container.db.read() as conn:
                row = await telemetry.cache.get(conn, key)
        except Exception as exc:
            log.warning("realtime_catch_up_failed", sid=sid, error=type(exc).__name__)
            return
        if row is None or row.source_watermark != watermark or row.computed_at_ms is None:
            # Recomputed in between: that save's own event reaches the room.
            return
        event = session_updated_event(
            session_id=session.id,
            source_watermark=watermark,
            state=state,
            window_minutes=key.window_minutes,
            resolution=key.resolution.value,
            computed_at_ms=row.computed_at_ms,
            live=session.live,
            changed_from_ms=None,
            changed_to_ms=None,
        )
        try:
            await self.sio.emit(SESSION_UPDATED, event, to=sid, ignore_queue=True)
        except Exception:
            log.warning("realtime_catch_up_failed", sid=sid, session_id=session.id)
