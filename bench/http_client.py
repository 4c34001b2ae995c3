"""A lean HTTP/1.1 client for latency benchmarks: one keep-alive connection, one request at a time.

A benchmark that times a sub-millisecond answer over loopback times its client too, and the
client runs on the same cores as the server. httpx spent about 0.8-1 ms of CPU per cached
telemetry GET (a 48 KB answer), several times what the server spent on it, so its figure was
mostly the client's; aiohttp spent 0.13 ms. This client writes the request bytes and parses the
answer with httptools (the parser uvicorn serves with): about 0.04 ms. What it times is still a
real HTTP request to the real server, over TCP, through its authentication and rate limits.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import httptools


class KeepAliveClient(asyncio.Protocol):
    """GETs over one keep-alive connection; ``get`` answers (status, body)."""

    def __init__(self, host_header: str, headers: dict[str, str]) -> None:
        fixed = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self._head_tail = f" HTTP/1.1\r\nHost: {host_header}\r\n{fixed}\r\n".encode("latin-1")
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._answer: asyncio.Future[tuple[int, bytes]] | None = None
        self._body: list[bytes] = []

    @classmethod
    async def connect(cls, base_url: str, headers: dict[str, str]) -> KeepAliveClient:
        """A client connected to ``base_url`` (``http://host:port``), sending ``headers`` with
        every request."""
        parts = urlsplit(base_url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        loop = asyncio.get_running_loop()
        _transport, client = await loop.create_connection(
            lambda: cls(f"{host}:{port}", headers), host, port
        )
        return client

    async def get(self, target: str) -> tuple[int, bytes]:
        """GET ``target`` (path and query): the status and the whole body."""
        if self._transport is None or self._transport.is_closing():
            raise ConnectionError("the connection is closed")
        self._answer = asyncio.get_running_loop().create_future()
        self._transport.write(b"GET " + target.encode("latin-1") + self._head_tail)
        return await self._answer

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(exc or ConnectionError("the server closed the connection"))

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._body = []

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_result((self._parser.get_status_code(), b"".join(self._body)))
