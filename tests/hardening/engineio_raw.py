"""A raw Engine.IO v4 / Socket.IO v5 client over a WebSocket (``websockets``' sync client) and
over HTTP long-polling (httpx), for tests that must send what no well-behaved client library
sends: reserved event names, malformed and oversize frames. It answers the server's pings while
it reads, so it stays connected for as long as a test needs it."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.processes import CLIENT_TLS


class Closed(Exception):
    """The server closed the WebSocket."""


class RawSocket:
    """One Engine.IO connection over a WebSocket, with the Socket.IO namespace ``/`` optionally
    joined; a context manager. Every text frame received is kept in ``received`` (pings
    excepted)."""

    def __init__(self, base_url: str, *, max_size: int | None = 2**24) -> None:
        self._url = base_url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        self._max_size = max_size
        self._stack = contextlib.ExitStack()
        self.received: list[str] = []
        self.handshake: dict[str, Any] = {}

    def __enter__(self) -> RawSocket:
        self.ws: ClientConnection = self._stack.enter_context(
            connect(self._url, max_size=self._max_size, open_timeout=10)
        )
        opening = self.ws.recv(timeout=10)
        assert isinstance(opening, str) and opening.startswith("0"), opening
        self.handshake = json.loads(opening[1:])
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stack.close()

    def join(self, token: str) -> str:
        """Connect the namespace ``/`` with ``token``; the Socket.IO sid."""
        self.send("40" + json.dumps({"token": token}))
        answer = self.next_matching(lambda frame: frame.startswith(("40", "44")), 10)
        assert answer.startswith("40{"), answer
        return str(json.loads(answer[2:])["sid"])

    def send(self, frame: str | bytes) -> None:
        """Send one frame; ``Closed`` when the server has closed the WebSocket already."""
        try:
            self.ws.send(frame)
        except ConnectionClosed:
            raise Closed from None

    def call(self, ack_id: int, event: str, data: Any, timeout_s: float = 10) -> Any:
        """Emit ``event`` with an acknowledgement id and return the server's answer."""
        self.send(f"42{ack_id}" + json.dumps([event, data]))
        prefix = f"43{ack_id}["
        answer = self.next_matching(lambda frame: frame.startswith(prefix), timeout_s)
        return json.loads(answer[len(prefix) - 1 :])[0]

    def next_matching(self, predicate: Callable[[str], bool], timeout_s: float) -> str:
        """The next received frame that satisfies ``predicate`` (earlier ones are kept in
        ``received``); ``Closed`` when the server closes first, TimeoutError after
        ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no matching frame within {timeout_s} s")
            try:
                frame = self.ws.recv(timeout=remaining)
            except ConnectionClosed:
                raise Closed from None
            assert isinstance(frame, str), frame
            if frame == "2":
                self.send("3")
                continue
            self.received.append(frame)
            if predicate(frame):
                return frame

    def answer_pings(self) -> None:
        """Answer the pings that have arrived, without waiting for any (other frames are kept
        in ``received``): a client that only reads now and then stays connected however long
        the test takes between two reads; ``Closed`` when the server has closed it."""
        while True:
            try:
                frame = self.ws.recv(timeout=0)
            except TimeoutError:
                return
            except ConnectionClosed:
                raise Closed from None
            assert isinstance(frame, str), frame
            if frame == "2":
                self.send("3")
            else:
                self.received.append(frame)

    def events(self, name: str) -> list[Any]:
        """The payloads of every received event called ``name``."""
        found = []
        for frame in self.received:
            if frame.startswith("42["):
                event = json.loads(frame[2:])
                if event[0] == name:
                    found.append(event[1] if len(event) > 1 else None)
        return found


class RawPolling:
    """One Engine.IO connection over HTTP long-polling: the handshake, then POSTs of raw
    bodies (nothing is ever polled, which is what left python-engineio waiting)."""

    def __init__(self, base_url: str, *, timeout_s: float = 10) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=timeout_s, verify=CLIENT_TLS)
        opening = self.http.get("/socket.io/", params={"EIO": "4", "transport": "polling"})
        assert opening.status_code == 200 and opening.text.startswith("0"), opening.text
        self.sid = str(json.loads(opening.text[1:])["sid"])

    def post(self, body: bytes, **kwargs: Any) -> httpx.Response:
        params = {"EIO": "4", "transport": "polling", "sid": self.sid}
        return self.http.post("/socket.io/", params=params, content=body, **kwargs)

    def close(self) -> None:
        self.http.close()
