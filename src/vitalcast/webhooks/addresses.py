"""Where a webhook may be sent (SSRF): https only, to public addresses only, judged on the
addresses the host name resolves to at the moment of sending, and the connection is then made to
the address that was judged, so a second DNS answer (rebinding) cannot swap it.
``VITALCAST_WEBHOOK_ALLOW_PRIVATE=true`` lifts both rules (http, loopback, private ranges) for
tests and local use.

An address is public when Python's ``ipaddress`` calls it global: loopback, private (RFC 1918,
unique-local), link-local (169.254/16, the cloud metadata service), shared (100.64/10),
unspecified, reserved and documentation ranges are not; IPv4 mapped into IPv6 is judged as the
IPv4 address it carries. Multicast is never a receiver.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from vitalcast.errors import InvalidInput

MAX_URL_LENGTH = 2048

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]
"""Resolves a host name and port to IP address strings (the seam in front of DNS)."""


class AddressRefused(InvalidInput):
    """The URL is not an allowed receiver (scheme, credentials, or a non-public address)."""

    code = "WEBHOOK_URL_REFUSED"


@dataclass(frozen=True, slots=True)
class Target:
    """A checked URL: connect to ``address``, present ``host`` (Host header, TLS SNI and
    certificate name)."""

    url: SplitResult
    host: str
    port: int
    address: str

    def connect_url(self) -> str:
        """The URL with the checked address in place of the host name."""
        ip = ipaddress.ip_address(self.address)
        netloc = f"[{ip}]" if ip.version == 6 else str(ip)
        netloc = f"{netloc}:{self.port}"
        path = self.url.path or "/"
        return f"{self.url.scheme}://{netloc}{path}" + (
            f"?{self.url.query}" if self.url.query else ""
        )

    def host_header(self) -> str:
        default = 443 if self.url.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to now, through the system's resolver."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [str(info[4][0]) for info in infos]


def is_public(address: IPAddress) -> bool:
    """True when ``address`` may receive a webhook without ``allow_private``."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def parse(url: str, *, allow_private: bool) -> SplitResult:
    """The URL's parts when its form is acceptable (scheme, host, no credentials); raises
    ``AddressRefused``."""
    if len(url) > MAX_URL_LENGTH:
        raise AddressRefused(f"The URL is longer than {MAX_URL_LENGTH} characters.")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        raise AddressRefused("The URL cannot be parsed.") from None
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise AddressRefused("Only https URLs are accepted.")
    if not parts.hostname:
        raise AddressRefused("The URL has no host.")
    if parts.username is not None or parts.password is not None:
        raise AddressRefused("Credentials in the URL are not accepted.")
    if parts.fragment:
        raise AddressRefused("A URL fragment is never sent; leave it out.")
    return parts


async def resolve(url: str, *, allow_private: bool, resolver: Resolver) -> Target:
    """Check ``url`` and pick the address to connect to: every address its host resolves to
    must be allowed (one private answer among public ones refuses the URL: a resolver may
    rotate them). Raises ``AddressRefused``, or ``OSError`` when the name does not resolve."""
    parts = parse(url, allow_private=allow_private)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    found = [str(literal)] if literal is not None else await resolver(host, port)
    if not found:
        raise OSError(f"{host} resolves to no address")
    addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in found]
    if not allow_private:
        for address in addresses:
            if not is_public(address):
                raise AddressRefused("The URL resolves to an address that is not public.")
    return Target(url=parts, host=host, port=port, address=str(addresses[0]))
