"""A real HTTP webhook receiver (aiohttp on a loopback port of its own) that verifies every
request with the Standard Webhooks reference library, ``standardwebhooks``, not with vitalcast's
code.

The port is bound when the receiver is made and held until ``stop``: before ``start`` it is a
receiver that is down (a bound socket that does not listen refuses every connection), and no
other process can take the port meanwhile. A port picked free, released and bound again later
was taken in between in a loaded CI run (a server restarted on a free port got it)."""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook


@dataclass
class Received:
    msg_id: str
    timestamp: str
    host: str
    body: dict[str, Any]


@dataclass
class Receiver:
    """Answers ``status`` (after ``delay_s``), or redirects to ``redirect_to``; records what
    verified under ``received`` and what did not under ``unverified``. ``secret`` is set once
    the endpoint is created (before any delivery can arrive). Down (connections refused) until
    ``start``, on a port it holds from creation; ``stop`` is final."""

    secret: str | None = None
    status: int = 204
    delay_s: float = 0.0
    redirect_to: str | None = None
    received: list[Received] = field(default_factory=list)
    unverified: int = 0
    hits: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = field(init=False)
    _socket: socket.socket | None = field(init=False, default=None)
    _runner: web.AppRunner | None = None

    def __post_init__(self) -> None:
        held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        held.bind(("127.0.0.1", 0))
        self._socket = held
        self.port = int(held.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        """Listen on the held port (the socket becomes the server's)."""
        held, self._socket = self._socket, None
        if held is None:
            raise RuntimeError("a stopped receiver cannot start again: make a new one")
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        # a handler still sleeping (a slow receiver) is cancelled at stop, not awaited for 60 s
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.SockSite(self._runner, held).start()

    async def stop(self) -> None:
        """Close the server, or the held port of a receiver that never started."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        body = await request.read()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.redirect_to is not None:
            raise web.HTTPTemporaryRedirect(self.redirect_to)
        try:
            payload = Webhook(self.secret or "").verify(body, dict(request.headers))
        except Exception:
            self.unverified += 1
            return web.Response(status=400)
        self.received.append(
            Received(
                msg_id=request.headers["webhook-id"],
                timestamp=request.headers["webhook-timestamp"],
                host=request.headers["host"],
                body=payload if isinstance(payload, dict) else json.loads(body),
            )
        )
        self.arrived.set()
        return web.Response(status=self.status)

    async def wait_for(self, count: int, timeout_s: float = 30.0) -> None:
        """Until ``received`` holds ``count`` requests (TimeoutError after ``timeout_s``)."""
        async with asyncio.timeout(timeout_s):
            while len(self.received) < count:
                self.arrived.clear()
                await self.arrived.wait()
