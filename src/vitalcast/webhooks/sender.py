"""One HTTP attempt of a delivery: resolve and check the address, connect to exactly that
address (Host header and TLS name from the URL), no redirects, no proxies from the environment,
short timeouts and a hard deadline, and the answer's body never read."""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass

import httpx

from vitalcast.webhooks.addresses import AddressRefused, Resolver, resolve
from vitalcast.webhooks.models import AttemptOutcome

USER_AGENT = "vitalcast-webhooks/1"


@dataclass(frozen=True, slots=True)
class SendResult:
    outcome: AttemptOutcome
    status_code: int | None
    duration_ms: int


class WebhookSender:
    """Sends signed bodies; ``timeout_s`` bounds every phase and ``timeout_s`` × 2 the whole
    attempt, so a slow receiver holds a sending slot that long at most."""

    def __init__(self, *, allow_private: bool, timeout_s: float, resolver: Resolver) -> None:
        self._allow_private = allow_private
        self._timeout = httpx.Timeout(timeout_s)
        self._deadline_s = timeout_s * 2
        self._resolver = resolver
        self._tls: ssl.SSLContext | None = None

    def _tls_context(self) -> ssl.SSLContext:
        """Made at the first attempt, not at start: loading the CA certificates costs about
        30 ms of CPU, which every server and worker paid at start though most never send."""
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    async def send(self, url: str, headers: dict[str, str], body: bytes) -> SendResult:
        started = time.perf_counter()
        outcome, status = await self._attempt(url, headers, body)
        return SendResult(outcome, status, int((time.perf_counter() - started) * 1000))

    async def _attempt(
        self, url: str, headers: dict[str, str], body: bytes
    ) -> tuple[AttemptOutcome, int | None]:
        try:
            async with asyncio.timeout(self._deadline_s):
                target = await resolve(
                    url, allow_private=self._allow_private, resolver=self._resolver
                )
                # A client per attempt: a pooled connection is keyed by address, and one made
                # for another host name on the same address must not carry this request.
                async with (
                    httpx.AsyncClient(
                        verify=self._tls_context(),
                        trust_env=False,
                        follow_redirects=False,
                        timeout=self._timeout,
                    ) as client,
                    client.stream(
                        "POST",
                        target.connect_url(),
                        content=body,
                        headers={
                            **headers,
                            "host": target.host_header(),
                            "user-agent": USER_AGENT,
                        },
                        extensions={"sni_hostname": target.host},
                    ) as response,
                ):
                    status = response.status_code
        except AddressRefused:
            return AttemptOutcome.ADDRESS_REFUSED, None
        except (TimeoutError, httpx.TimeoutException):
            return AttemptOutcome.TIMEOUT, None
        except (httpx.HTTPError, OSError, ssl.SSLError):
            return AttemptOutcome.CONNECT_ERROR, None
        if 200 <= status < 300:
            return AttemptOutcome.DELIVERED, status
        if 300 <= status < 400:
            return AttemptOutcome.REDIRECT, status
        return AttemptOutcome.HTTP_ERROR, status
