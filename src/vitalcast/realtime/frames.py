"""The wire gate in front of python-engineio: every frame a client sends is checked before the
library parses it, so that no client input can reach the library's failure paths.

Those paths are why the gate exists. A polling POST whose packet the library rejects (oversize,
or a packet type a client never sends) makes python-engineio wait for the client's next poll
before it answers, which may be never: the POST hangs and holds its connection, and a server
with such a request in flight does not finish its shutdown. A WebSocket frame that is not an
Engine.IO packet, or a message that is not a Socket.IO packet, ends in an unhandled exception
with a traceback at error level. And Socket.IO hands client events named like its own
(``42["disconnect"]``) to the server's handlers as if the library had raised them.

Rules (``check_packet``):

- Engine.IO: text packets only (vitalcast takes no binary), of the types a client sends on
  that transport (polling: close, pong, message; WebSocket also ping and upgrade for the
  upgrade handshake), at most ``MAX_MESSAGE_BYTES`` each and the library's packet count per
  polling payload.
- Socket.IO: a connect with an object or nothing, a disconnect, or an event whose first element
  is its name. Reserved names (``RESERVED_EVENTS``) and acknowledgements (the server never asks
  a client for one) are dropped and the rest goes on. Anything else refuses the whole frame:
  a polling POST is answered 400 ``MALFORMED_PACKET`` and nothing of it is delivered, a
  WebSocket is closed.

Two more rules keep client input off the library's failure paths: a polling POST is only
delivered to an open Engine.IO session still on polling (others are answered 400
``UNKNOWN_SESSION``; python-engineio raised an unhandled error for a closed one), and nothing a
client sends after its own Engine.IO close is delivered (the library would run it on a closed
session and fail).

Dropped frames cost the sender: each one spends the socket's event budget
(``settings.rate_limit_socket_events``), and a connection that overspends it is closed (a
WebSocket with 1008; a polling session is disconnected and its POST answered 429). Drops are
logged once per connection and a flood once, so a client cannot turn the gate into a log pump
(309k dropped frames in 3 s wrote 38 MB of log and slowed /healthz to seconds).

Oversize polling bodies never get here: ``api.guard`` answers them 413 while they stream in.
"""

from __future__ import annotations

import enum
import itertools
import urllib.parse

import engineio
import limits
from engineio import packet as eio_packet
from engineio.payload import Payload
from limits.strategies import MovingWindowRateLimiter
from socketio import packet as sio_packet
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vitalcast.api.errors import problem
from vitalcast.observability import get_logger
from vitalcast.realtime.broadcaster import MAX_MESSAGE_BYTES

log = get_logger(__name__)

SOCKETIO_PATH = "/socket.io"
# Socket.IO's own event names (socket.io-parser's list): a client may not send them.
RESERVED_EVENTS = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)
POLLING_TYPES = frozenset({eio_packet.CLOSE, eio_packet.PONG, eio_packet.MESSAGE})
WEBSOCKET_TYPES = POLLING_TYPES | {eio_packet.PING, eio_packet.UPGRADE}
# An Engine.IO CLOSE packet without data, as clients and the server send it.
_CLOSE = str(eio_packet.CLOSE)


class Verdict(enum.Enum):
    """What the gate does with one client packet."""

    #: deliver it to the library
    ACCEPT = "accept"
    #: leave it out and deliver the rest (reserved event names, acknowledgements)
    DROP = "drop"
    #: refuse the frame it came in: a 400 for a polling POST, a closed WebSocket
    REFUSE = "refuse"


def check_packet(encoded: str, allowed_types: frozenset[int]) -> Verdict:
    """The verdict on one encoded Engine.IO packet sent by a client."""
    if not encoded or encoded[0] == "b" or len(encoded.encode()) > MAX_MESSAGE_BYTES:
        return Verdict.REFUSE
    try:
        decoded = eio_packet.Packet(encoded_packet=encoded)
    except Exception:
        return Verdict.REFUSE
    if decoded.packet_type not in allowed_types:
        return Verdict.REFUSE
    if decoded.packet_type != eio_packet.MESSAGE:
        return Verdict.ACCEPT
    if not isinstance(decoded.data, str):
        return Verdict.REFUSE
    return check_message(decoded.data)


def check_message(encoded: str) -> Verdict:
    """The verdict on one encoded Socket.IO packet (the data of an Engine.IO message)."""
    try:
        decoded = sio_packet.Packet(encoded_packet=encoded)
    except Exception:
        return Verdict.REFUSE
    if decoded.attachment_count:
        return Verdict.REFUSE
    kind, data = decoded.packet_type, decoded.data
    if kind == sio_packet.CONNECT:
        return Verdict.ACCEPT if data is None or isinstance(data, dict) else Verdict.REFUSE
    if kind == sio_packet.DISCONNECT:
        return Verdict.ACCEPT
    if kind == sio_packet.ACK:
        return Verdict.DROP
    if kind != sio_packet.EVENT or not isinstance(data, list) or not data:
        return Verdict.REFUSE
    if not isinstance(data[0], str):
        return Verdict.REFUSE
    return Verdict.DROP if data[0] in RESERVED_EVENTS else Verdict.ACCEPT


class FrameGate:
    """ASGI wrapper of the Engine.IO app that applies ``check_packet`` to every client frame.

    A server-sent Engine.IO close also ends the WebSocket at once: python-engineio otherwise
    keeps it open until the peer closes or a ping times out, which a hostile client can delay.
    """

    def __init__(
        self,
        app: ASGIApp,
        engine: engineio.AsyncServer,
        limit: limits.RateLimitItem,
        limiter: MovingWindowRateLimiter,
    ) -> None:
        self.app = app
        self._engine = engine
        self._limit = limit
        self._limiter = limiter
        self._connections = itertools.count()
        #: polling sids whose drops were logged already
        self._logged: set[str] = set()

    def _spend(self, key: str, dropped: int) -> bool:
        """Charge ``dropped`` frames to the connection's budget; False once it is overspent."""
        return self._limiter.hit(self._limit, key, cost=dropped)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        elif scope["type"] == "http" and scope["method"] == "POST":
            await self._post(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _post(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._polling_session_open(scope):
            answer = problem(400, "UNKNOWN_SESSION", "No open polling session with this sid.")
            await answer(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        checked = _polling_packets(bytes(body))
        if checked is None:
            log.info("realtime_frame_refused", transport="polling")
            answer = problem(400, "MALFORMED_PACKET", "Not a Socket.IO payload vitalcast takes.")
            await answer(scope, receive, send)
            return
        kept, dropped = checked
        if dropped and not await self._polling_drops(_sid_of(scope), dropped):
            answer = problem(429, "RATE_LIMITED", "Too many frames; the session is closed.")
            await answer(scope, receive, send)
            return
        forwarded = "\x1e".join(kept).encode()
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-length",)]
        headers.append((b"content-length", str(len(forwarded)).encode()))
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": forwarded, "more_body": False}

        await self.app({**scope, "headers": headers}, replay, send)

    async def _polling_drops(self, sid: str, dropped: int) -> bool:
        """Charge a POST's dropped packets to its session; False (session closed) on a flood."""
        if sid not in self._logged:
            if len(self._logged) >= 10_000:  # sids of ended sessions are never removed
                self._logged.clear()
            self._logged.add(sid)
            log.info("realtime_frame_dropped", transport="polling")
        if self._spend(f"frames:{sid}", dropped):
            return True
        log.warning("realtime_frame_flood", transport="polling")
        self._logged.discard(sid)
        self._limiter.clear(self._limit, f"frames:{sid}")
        await self._engine.disconnect(sid)
        return False

    def _polling_session_open(self, scope: Scope) -> bool:
        socket = self._engine.sockets.get(_sid_of(scope))
        return socket is not None and socket.connected and not socket.closed and not socket.upgraded

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = f"frames:ws{next(self._connections)}"
        try:
            await self._websocket_gated(scope, receive, send, key)
        finally:
            self._limiter.clear(self._limit, key)

    async def _websocket_gated(self, scope: Scope, receive: Receive, send: Send, key: str) -> None:
        client_closed = False
        drops_logged = False

        async def receive_checked() -> Message:
            nonlocal client_closed, drops_logged
            while True:
                if client_closed:
                    return {"type": "websocket.disconnect", "code": 1000}
                message = await receive()
                if message["type"] != "websocket.receive":
                    return message
                text = message.get("text")
                if not isinstance(text, str):  # a binary frame
                    text = ""
                verdict = check_packet(text, WEBSOCKET_TYPES)
                if verdict is Verdict.ACCEPT:
                    client_closed = text[:1] == _CLOSE
                    return message
                if verdict is Verdict.REFUSE:
                    log.info("realtime_frame_refused", transport="websocket")
                    # To the library the client is gone; it then closes the WebSocket itself.
                    return {"type": "websocket.disconnect", "code": 1008}
                if not drops_logged:
                    drops_logged = True
                    log.info("realtime_frame_dropped", transport="websocket")
                if not self._spend(key, 1):
                    log.warning("realtime_frame_flood", transport="websocket")
                    return {"type": "websocket.disconnect", "code": 1008}

        async def send_closing(message: Message) -> None:
            await send(message)
            if message["type"] == "websocket.send" and message.get("text") == _CLOSE:
                await send({"type": "websocket.close", "code": 1000})

        await self.app(scope, receive_checked, send_closing)


def _sid_of(scope: Scope) -> str:
    query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return str(query.get("sid", [""])[0])


def _polling_packets(body: bytes) -> tuple[list[str], int] | None:
    """The packets of a polling POST body to deliver and how many were dropped, or None when
    it must be refused."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text:
        return [], 0
    packets = text.split("\x1e")
    if len(packets) > Payload.max_decode_packets:
        return None
    kept = []
    dropped = 0
    for encoded in packets:
        verdict = check_packet(encoded, POLLING_TYPES)
        if verdict is Verdict.REFUSE:
            return None
        if verdict is Verdict.DROP:
            dropped += 1
        else:
            kept.append(encoded)
            if encoded[:1] == _CLOSE:
                break
    return kept, dropped
