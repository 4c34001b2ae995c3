"""The Socket.IO surface of one server process, mounted at ``/socket.io/``.

Connect with ``auth: {token}`` (the HTTP bearer token); a missing, bad or expired token, or one
whose user does not exist, is refused with its code as the reason, and a connected socket is
disconnected when its token expires (after an ``error {code: "TOKEN_EXPIRED"}`` event, or
``SHARE_EXPIRED`` for a share token), its Engine.IO connection closed too. A revocation
(``Authenticator.revoke_user`` / ``revoke_share``, from any server) closes the sockets it ends
the same way within a second, after ``error {code: "TOKEN_REVOKED"}`` or ``SHARE_REVOKED``
(also a share's socket when its session is deleted, after ``session.status`` ``deleted``).
A share token's socket may subscribe to its one session only (any other is
``SESSION_NOT_FOUND``) and joins no user room, so it hears nothing of the owner's other sessions. Every client frame passes ``frames.FrameGate`` first, which
drops client events named like Socket.IO's own (``disconnect`` …). Client events, each answered
through its ack:

- ``subscribe {session_id, since_watermark?}`` → ``{ok: true, session_id, state,
  source_watermark, session_watermark, live}``. Joins room ``session:<id>`` only for the owner.
  ``source_watermark`` is the cached payload's (what a GET serves now, null when nothing is
  cached), ``session_watermark`` the session's current one. When ``since_watermark`` is older than
  a fresh cached payload, that socket gets one ``session.updated`` at once, so a reconnecting
  client misses nothing, and every ``session.alert`` announced by a save after
  ``since_watermark``.
- ``unsubscribe {session_id}`` → ``{ok: true}``.
- anything else → ``{ok: false, code: "UNKNOWN_EVENT"}``.

Failures answer ``{ok: false, code, message}``: ``VALIDATION_ERROR``, ``RATE_LIMITED`` (per socket,
``settings.rate_limit_socket_events``; other sockets are unaffected), ``SESSION_NOT_FOUND`` (absent
or someone else's: existence never leaks), ``TOO_MANY_SUBSCRIPTIONS``, ``DATABASE_UNAVAILABLE``,
``INTERNAL_ERROR`` — the same codes HTTP answers with.

The room is joined before the cache state is read: a save racing a subscribe may reach the socket
twice with one watermark (events are idempotent hints), but it is never missed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, TypeVar

import limits
import socketio
from limits.strategies import MovingWindowRateLimiter
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from vitalcast.alerts.models import SESSION_ALERT
from vitalcast.auth import Principal
from vitalcast.db.errors import DATABASE_RETRY_AFTER_S, is_outage
from vitalcast.errors import DependencyUnavailable, NotFound, Unauthenticated
from vitalcast.json_types import JsonObject
from vitalcast.observability import get_logger
from vitalcast.ratelimit import SweptMemoryStorage, retry_after_s
from vitalcast.realtime.broadcaster import (
    SESSION_UPDATED,
    session_room,
    session_updated_event,
    user_room,
)
from vitalcast.realtime.frames import FrameGate
from vitalcast.revocations import Revocation, RevocationKind
from vitalcast.sessions.models import Session
from vitalcast.shares import AccessKind
from vitalcast.telemetry.keys import CacheState
from vitalcast.wiring import ServerParts

log = get_logger(__name__)

MAX_SUBSCRIPTIONS_PER_SOCKET = 100
NAMESPACE = "/"
# How long closing an expired socket's Engine.IO connection may wait for a polling client's
# next request (the close packet travels in its answer); WebSockets close at once.
ENGINE_CLOSE_TIMEOUT_S = 5.0


class SubscribeRequest(BaseModel):
    """Payload of ``subscribe``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    session_id: uuid.UUID
    since_watermark: Annotated[StrictInt, Field(ge=0)] | None = None


class UnsubscribeRequest(BaseModel):
    """Payload of ``unsubscribe``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    session_id: uuid.UUID


RequestT = TypeVar("RequestT", bound=BaseModel)


@dataclass(slots=True)
class _Client:
    """What this node knows about one connected socket."""

    principal: Principal
    sessions: set[str] = field(default_factory=set)

    @property
    def user_id(self) -> str:
        return self.principal.user_id

    @property
    def expires_at_ms(self) -> int:
        return self.principal.expires_at_ms

    @property
    def expired_code(self) -> str:
        return "SHARE_EXPIRED" if self.principal.is_share else "TOKEN_EXPIRED"


_CLOSE_MESSAGES = {
    "TOKEN_EXPIRED": "The token has expired.",
    "SHARE_EXPIRED": "The share has expired.",
    "TOKEN_REVOKED": "The token has been revoked.",
    "SHARE_REVOKED": "The share has been revoked.",
}


def _error(code: str, message: str, **extra: object) -> JsonObject:
    return {"ok": False, "code": code, "message": message, **extra}


def _failure(sid: str, exc: Exception) -> JsonObject:
    """The ack for an unexpected failure, with the code HTTP would answer (api/errors.py): a
    database outage is DATABASE_UNAVAILABLE with a retry hint, anything else INTERNAL_ERROR."""
    if is_outage(exc):
        log.warning("realtime_database_unavailable", sid=sid, error_type=type(exc).__name__)
        return _error(
            "DATABASE_UNAVAILABLE",
            "The database is unavailable.",
            retry_after_seconds=DATABASE_RETRY_AFTER_S,
        )
    log.error("realtime_unhandled_error", sid=sid, error_type=type(exc).__name__)
    return _error("INTERNAL_ERROR", "An unexpected error occurred.")


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "payload"
    return f"{where}: {first['msg']}"


class RealtimeServer:
    """The Socket.IO handlers of one server process, on the ``sio`` the broadcaster emits through
    (built by ``wiring.socketio_server``: with Redis, an emit from any node or worker reaches
    every node)."""

    def __init__(self, sio: socketio.AsyncServer, parts: ServerParts) -> None:
        self.sio = sio
        self._parts = parts
        self._limit = limits.parse(parts.settings.rate_limit_socket_events)
        # The synchronous storage swept inline: limits' asyncio memory storage sweeps in a task that
        # reads a key's events after awaiting its lock, so a clear() at disconnect in between
        # raised KeyError in that task (seen in the malformed-frames fuzz test).
        self._limiter = MovingWindowRateLimiter(SweptMemoryStorage())
        self._clients: dict[str, _Client] = {}
        # Kept apart from ``_clients``: expiry must hold even if a client's record is gone.
        self._expiries: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)
        self.sio.on("subscribe", self._on_subscribe)
        self.sio.on("unsubscribe", self._on_unsubscribe)
        self.sio.on("*", self._on_unknown)
        parts.authenticator.revocations.subscribe(self._on_revocation)

    def asgi_app(self) -> FrameGate:
        """The Engine.IO endpoint behind its frame gate, for mounting at ``SOCKETIO_PATH`` (it
        takes all traffic there)."""
        return FrameGate(
            socketio.ASGIApp(self.sio, socketio_path=None),
            self.sio.eio,
            self._limit,
            self._limiter,
        )

    async def close(self) -> None:
        """Disconnect clients, stop timers and background tasks (the broadcaster releases
        Redis)."""
        for timer in self._expiries.values():
            timer.cancel()
        self._expiries.clear()
        for sid in list(self._clients):
            try:
                await self.sio.disconnect(sid, ignore_queue=True)
            except Exception:
                log.debug("realtime_disconnect_failed", sid=sid)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.sio.shutdown()

    def _genuine(self, sid: str, event: str) -> bool:
        """True when the library raised ``event`` itself. It calls the connect and disconnect
        handlers while the socket is half-way in or out; a client event of the same name (which
        ``FrameGate`` drops before it gets here) would find it fully connected."""
        if self.sio.manager.is_connected(sid, NAMESPACE):
            log.info("realtime_reserved_event_ignored", sid=sid, event_name=event)
            return False
        return True

    async def _on_connect(self, sid: str, _environ: Mapping[str, object], auth: object) -> None:
        if not self._genuine(sid, "connect"):
            return
        token = auth.get("token") if isinstance(auth, dict) else None
        try:
            principal = await self._parts.authenticator.authenticate(
                token if isinstance(token, str) else None
            )
        except (Unauthenticated, DependencyUnavailable) as exc:
            log.info("realtime_connect_refused", code=exc.code)
            raise socketio.exceptions.ConnectionRefusedError(
                exc.code, {"code": exc.code, "message": exc.message}
            ) from None
        client = _Client(principal)
        delay_s = max(0.0, (principal.expires_at_ms - self._parts.clock.now_ms()) / 1000)
        self._expiries[sid] = asyncio.get_running_loop().call_later(
            delay_s, self._expire, sid, client.expired_code
        )
        self._clients[sid] = client
        if not principal.is_share:
            await self.sio.enter_room(sid, user_room(principal.user_id))
        self._parts.metrics.socket_clients.set(len(self._clients))
        log.debug("realtime_connected", sid=sid, user_id=principal.user_id)

    async def _on_disconnect(self, sid: str, *_reason: object) -> None:
        if not self._genuine(sid, "disconnect"):
            return
        timer = self._expiries.pop(sid, None)
        if timer is not None:
            timer.cancel()
        client = self._clients.pop(sid, None)
        if client is None:
            return
        self._parts.subscriptions.removed(client.sessions)
        self._limiter.clear(self._limit, sid)
        self._parts.metrics.socket_clients.set(len(self._clients))
        log.debug("realtime_disconnected", sid=sid, user_id=client.user_id)

    def _expire(self, sid: str, code: str = "TOKEN_EXPIRED") -> None:
        timer = self._expiries.pop(sid, None)
        if timer is not None:
            timer.cancel()
        task = asyncio.get_running_loop().create_task(self._disconnect_expired(sid, code))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_revocation(self, revocation: Revocation) -> None:
        """Close every socket of this node that ``revocation`` ends."""
        # a deleted session's shares are gone: their sockets close as revoked shares' do
        code = "TOKEN_REVOKED" if revocation.kind is RevocationKind.USER else "SHARE_REVOKED"
        for sid, client in list(self._clients.items()):
            if client.principal.revoked_by(revocation):
                self._expire(sid, code)

    async def _disconnect_expired(self, sid: str, code: str = "TOKEN_EXPIRED") -> None:
        """Tell the socket, leave every room, close its Engine.IO connection. Decided by the
        library's view of the socket, not by ``_clients``."""
        eio_sid = self.sio.manager.eio_sid_from_sid(sid, NAMESPACE)
        if eio_sid is None or not self.sio.manager.is_connected(sid, NAMESPACE):
            return
        event = "realtime_token_expired" if code.endswith("EXPIRED") else "realtime_revoked"
        log.info(event, sid=sid, code=code)
        try:
            await self.sio.emit(
                "error",
                {"code": code, "message": _CLOSE_MESSAGES.get(code, "The token is not valid.")},
                to=sid,
                ignore_queue=True,
            )
            await self.sio.disconnect(sid, ignore_queue=True)
            async with asyncio.timeout(ENGINE_CLOSE_TIMEOUT_S):
                await self.sio.eio.disconnect(eio_sid)
        except TimeoutError:
            log.info("realtime_engine_close_pending", sid=sid)
        except Exception:
            log.warning("realtime_expire_failed", sid=sid)

    async def _admit(self, sid: str) -> tuple[_Client | None, JsonObject | None]:
        """The socket's client record, or the error ack that refuses this event."""
        client = self._clients.get(sid)
        if client is None:
            return None, _error("UNAUTHENTICATED", "The socket is not connected.")
        if client.expires_at_ms <= self._parts.clock.now_ms():
            self._expire(sid, client.expired_code)
            return None, _error(client.expired_code, _CLOSE_MESSAGES[client.expired_code])
        if not self._limiter.hit(self._limit, sid):
            stats = self._limiter.get_window_stats(self._limit, sid)
            return None, _error(
                "RATE_LIMITED",
                f"Too many events; the limit is {self._limit}.",
                retry_after_seconds=retry_after_s(stats),
            )
        return client, None

    async def _admit_request(
        self, sid: str, model: type[RequestT], data: object
    ) -> tuple[_Client, RequestT] | JsonObject:
        """The socket's client record and its validated request, or the error ack."""
        client, refusal = await self._admit(sid)
        if client is None:
            return refusal or {}
        try:
            return client, model.model_validate(data)
        except ValidationError as exc:
            return _error("VALIDATION_ERROR", _validation_message(exc))

    async def _on_subscribe(self, sid: str, data: object = None, *_extra: object) -> JsonObject:
        admitted = await self._admit_request(sid, SubscribeRequest, data)
        if isinstance(admitted, dict):
            return admitted
        client, request = admitted
        session_id = str(request.session_id)
        if client.principal.is_share and session_id != client.principal.session_id:
            return _error("SESSION_NOT_FOUND", "Session not found.")
        if (
            session_id not in client.sessions
            and len(client.sessions) >= MAX_SUBSCRIPTIONS_PER_SOCKET
        ):
            return _error(
                "TOO_MANY_SUBSCRIPTIONS",
                f"A socket may subscribe to at most {MAX_SUBSCRIPTIONS_PER_SOCKET} sessions.",
            )
        try:
            session = await self._parts.sessions.get(client.user_id, session_id)
        except NotFound as exc:
            return _error(exc.code, exc.message)
        except Exception as exc:
            return _failure(sid, exc)
        await self.sio.enter_room(sid, session_room(session_id))
        if client.principal.share_id is not None:
            self._parts.share_access.record(client.principal.share_id, AccessKind.SUBSCRIBE)
        if session_id not in client.sessions:
            client.sessions.add(session_id)
            self._parts.subscriptions.added(session_id)
        state, cached_watermark = await self._subscription_state(session)
        if (
            request.since_watermark is not None
            and cached_watermark is not None
            and CacheState(state).has_payload
            and cached_watermark > request.since_watermark
        ):
            await self._catch_up(sid, session, cached_watermark)
        if request.since_watermark is not None:
            await self._missed_alerts(sid, session, request.since_watermark)
        return {
            "ok": True,
            "session_id": session_id,
            "state": state,
            "source_watermark": cached_watermark,
            "session_watermark": session.source_watermark,
            "live": session.live,
        }

    async def _on_unsubscribe(self, sid: str, data: object = None, *_extra: object) -> JsonObject:
        admitted = await self._admit_request(sid, UnsubscribeRequest, data)
        if isinstance(admitted, dict):
            return admitted
        client, request = admitted
        session_id = str(request.session_id)
        await self.sio.leave_room(sid, session_room(session_id))
        if session_id in client.sessions:
            client.sessions.discard(session_id)
            self._parts.subscriptions.removed([session_id])
        return {"ok": True, "session_id": session_id}

    async def _on_unknown(self, event: str, sid: str, *_args: object) -> JsonObject:
        _client, refusal = await self._admit(sid)
        if refusal is not None:
            return refusal
        return _error("UNKNOWN_EVENT", "Known events: subscribe, unsubscribe.")

    async def _subscription_state(self, session: Session) -> tuple[str, int | None]:
        try:
            return await self._parts.subscribe.subscription_state(session)
        except Exception as exc:
            log.warning("realtime_state_failed", session_id=session.id, error=type(exc).__name__)
            return CacheState.FAILED.value, None

    async def _missed_alerts(self, sid: str, session: Session, watermark: int) -> None:
        """Send this socket every ``session.alert`` announced by a save after ``watermark``."""
        try:
            for alert in await self._parts.alerts.since(session.id, watermark):
                await self.sio.emit(SESSION_ALERT, alert.event(), to=sid, ignore_queue=True)
        except Exception as exc:
            log.warning("realtime_missed_alerts_failed", sid=sid, error=type(exc).__name__)

    async def _catch_up(self, sid: str, session: Session, watermark: int) -> None:
        """Send this socket the ``session.updated`` of the default view it missed."""
        try:
            update = await self._parts.subscribe.catch_up(session, watermark)
            if update is not None:
                await self.sio.emit(
                    SESSION_UPDATED, session_updated_event(update), to=sid, ignore_queue=True
                )
        except Exception as exc:
            log.warning("realtime_catch_up_failed", sid=sid, error=type(exc).__name__)
