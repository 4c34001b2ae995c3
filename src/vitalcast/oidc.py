"""Bearer tokens of the deployment's OpenID Connect issuer (``VITALCAST_OIDC_ISSUER``).

Keys come from the issuer's discovery document (``/.well-known/openid-configuration`` →
``jwks_uri``). PyJWT does the JOSE work: ``PyJWKSet`` parses the JWKS (RSA, EC P-256 and
Ed25519 keys through ``cryptography``) and ``jwt.decode`` checks the signature, ``iss``, ``aud``,
``exp`` and ``nbf`` (``LEEWAY_S`` of clock skew); a token valid for longer than
``max_lifetime_s`` is refused, which bounds how long an erased subject's tombstone must be kept
(``credentials.erased_subject_kept_ms``). Its ``PyJWKClient`` is not used: it fetches
with blocking ``urllib`` (a stalled issuer would stall the event loop) and re-fetches for every
unknown ``kid``, so a flood of made-up ``kid``s would become a flood of requests to the issuer.
Here fetches go through ``httpx.AsyncClient`` with a timeout, one at a time, and at most once per
``refresh_s`` (30 s by default) whatever arrives. Known keys keep working while the issuer is
down; a token whose key is unknown is refused at once (401), never a 5xx.

Only asymmetric algorithms are accepted (``ALGORITHMS``), chosen by the key the ``kid`` names,
never by the token alone: ``alg: none`` and an HS256 token signed with a public key are refused.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

import httpx
import jwt

from vitalcast.errors import Unauthenticated
from vitalcast.json_types import JsonObject
from vitalcast.observability import get_logger

log = get_logger(__name__)

ALGORITHMS = frozenset({"RS256", "ES256", "EdDSA"})
#: the most clock skew tolerated on ``exp`` and ``nbf``
LEEWAY_S = 60
#: one discovery or JWKS request
FETCH_TIMEOUT_S = 3.0
DISCOVERY_PATH = "/.well-known/openid-configuration"
SUBJECT_MAX = 255
#: the longest a token may be valid unless the settings say otherwise
MAX_LIFETIME_S = 86_400


def _invalid(message: str = "The token is not valid.") -> Unauthenticated:
    return Unauthenticated(message, code="TOKEN_INVALID")


def check_url(url: str) -> str:
    """``url`` if it may be trusted for keys: https, or http on a loopback address (tests and
    local use); ValueError otherwise."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname:
        if parts.hostname == "localhost":
            return url
        try:
            if ipaddress.ip_address(parts.hostname).is_loopback:
                return url
        except ValueError:
            pass
    raise ValueError(f"{url!r}: an OpenID Connect issuer must be https (http only on loopback)")


class OidcVerifier:
    """Verifies the issuer's tokens; keeps its keys and refreshes them as described above."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        refresh_s: float = 30.0,
        max_lifetime_s: int = MAX_LIFETIME_S,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.issuer = check_url(issuer)
        self.audience = audience
        self.max_lifetime_s = max_lifetime_s
        self._refresh_s = refresh_s
        self._client = client or httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=False)
        self._jwks_uri: str | None = None
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fetched_at = -math.inf
        self._lock = asyncio.Lock()
        self._prefetch: asyncio.Task[None] | None = None
        #: JWKS requests made (for ``/metrics`` and the tests)
        self.jwks_fetches = 0

    async def start(self) -> None:
        """Fetch the keys in the background, so the first token does not wait for them."""
        if self._prefetch is None:
            self._prefetch = asyncio.get_running_loop().create_task(self._refresh())

    async def close(self) -> None:
        if self._prefetch is not None:
            self._prefetch.cancel()
            await asyncio.gather(self._prefetch, return_exceptions=True)
        await self._client.aclose()

    async def verify(self, token: str, header: Mapping[str, object]) -> JsonObject:
        """The claims of a valid token of the issuer; ``Unauthenticated`` (TOKEN_INVALID,
        TOKEN_EXPIRED) otherwise."""
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise _invalid()
        kid = header.get("kid")
        if not (kid is None or isinstance(kid, str)):
            raise _invalid()
        key = self._key(kid)
        if key is None:
            await self._refresh()
            key = self._key(kid)
            if key is None:
                raise _invalid("The token's signing key is unknown.")
        if key.algorithm_name != alg:
            raise _invalid()
        try:
            claims: JsonObject = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("The token has expired.", code="TOKEN_EXPIRED") from None
        except jwt.ImmatureSignatureError:
            raise _invalid("The token is not valid yet.") from None
        except jwt.InvalidTokenError:
            raise _invalid() from None
        if self._lifetime_s(claims) > self.max_lifetime_s:
            # An erased subject's tombstone is pruned once every token issued before the
            # erasure has expired; that moment is only known if no token outlives this bound.
            raise _invalid("The token is valid for longer than this deployment accepts.")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > SUBJECT_MAX:
            raise _invalid("The token has no usable subject.")
        if "\x00" in subject:
            raise _invalid("The token has no usable subject.")
        return claims

    @staticmethod
    def _lifetime_s(claims: JsonObject) -> float:
        """How long the token is valid: from its ``iat`` to its ``exp`` or, without ``iat``,
        from now to its ``exp`` less the leeway (the issuer's clock may run that far ahead)."""
        exp = claims["exp"]
        if not isinstance(exp, (int, float)):
            raise _invalid()
        iat = claims.get("iat")
        if isinstance(iat, (int, float)) and not isinstance(iat, bool):
            return exp - iat
        return exp - (time.time() + LEEWAY_S)

    def _key(self, kid: str | None) -> jwt.PyJWK | None:
        key = self._keys.get(kid)
        if key is None and kid is None and len(self._keys) == 1:
            # A token without kid is accepted only when the issuer publishes a single key.
            return next(iter(self._keys.values()))
        return key

    async def _refresh(self) -> None:
        """Fetch the JWKS unless one was fetched within ``refresh_s`` (one fetch at a time;
        waiters then see its result). Failures keep the known keys."""
        async with self._lock:
            if time.monotonic() - self._fetched_at < self._refresh_s:
                return
            self._fetched_at = time.monotonic()
            try:
                async with asyncio.timeout(FETCH_TIMEOUT_S * 2):
                    self._keys = await self._fetch_keys()
            except Exception as exc:
                # The next allowed refresh reads the discovery document again (its jwks_uri may
                # have moved).
                self._jwks_uri = None
                log.warning("oidc_keys_unavailable", error_type=type(exc).__name__)

    async def _fetch_keys(self) -> dict[str | None, jwt.PyJWK]:
        if self._jwks_uri is None:
            discovery = await self._get_json(self.issuer.rstrip("/") + DISCOVERY_PATH)
            if discovery.get("issuer") != self.issuer:
                raise ValueError("the discovery document names another issuer")
            jwks_uri = discovery.get("jwks_uri")
            if not isinstance(jwks_uri, str):
                raise ValueError("the discovery document has no jwks_uri")
            self._jwks_uri = check_url(jwks_uri)
        self.jwks_fetches += 1
        keyset = jwt.PyJWKSet.from_dict(await self._get_json(self._jwks_uri))
        keys = {
            key.key_id: key
            for key in keyset.keys
            if key.algorithm_name in ALGORITHMS and key.public_key_use in (None, "sig")
        }
        if not keys:
            raise ValueError("the JWKS has no usable signing key")
        log.info("oidc_keys_loaded", keys=len(keys))
        return keys

    async def _get_json(self, url: str) -> JsonObject:
        response = await self._client.get(url, headers={"Accept": "application/json"})
        response.raise_for_status()
        data = response.json()
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data
