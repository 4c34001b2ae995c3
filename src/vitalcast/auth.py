"""Who a caller is: one ``Authenticator`` turns a bearer token into a ``Principal`` for HTTP and
Socket.IO alike, so one rule decides everywhere.

Three kinds of bearer token, told apart by their shape:

- ``vcs_…``: a share token (``shares.py``): reads one session of its owner, nothing else;
- a JWT signed HS256: a local token (``vitalcast token create``; ``sub`` = user id), unless
  ``VITALCAST_LOCAL_TOKENS=false``; refused when issued before the user's
  ``tokens_valid_after_ms`` (``vitalcast token revoke``);
- a JWT signed RS256, ES256 or EdDSA: a token of the deployment's OpenID Connect issuer
  (``oidc.py``); its ``sub`` names the user, created on its first valid token; refused when
  issued before an erasure of that subject's account (``erased_subjects``), so an erased
  account never comes back through a token that was still valid.

A verified token is remembered for ``cache_s`` (never past its expiry), so a repeated token
costs no signature check and no database read. Each token is remembered for its own share of
``cache_s`` (between ``1 - CACHE_SPREAD`` and all of it, fixed by the token's hash), so tokens
verified together are not all verified again together (``remembered_for_ms``).
``revoke_user`` and ``revoke_share`` drop the remembered principals at once, here and on every
other server (``revocations.py``), and the Socket.IO server closes their sockets; a lookup that
raced a revocation is not remembered.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

import jwt

from vitalcast import credentials
from vitalcast import shares as share_repository
from vitalcast.clock import Clock, SystemClock
from vitalcast.db.engine import Database
from vitalcast.db.errors import DATABASE_RETRY_AFTER_S, is_outage, is_pool_timeout
from vitalcast.db.units import Unit
from vitalcast.errors import DependencyUnavailable, Unauthenticated
from vitalcast.json_types import JsonObject

# issue_token is re-exported (the tests import it from here); a caller that only issues
# imports local_tokens, which loads nothing of the server.
from vitalcast.local_tokens import ALGORITHM
from vitalcast.local_tokens import issue_token as issue_token
from vitalcast.observability import get_logger
from vitalcast.oidc import OidcVerifier
from vitalcast.revocations import Revocation, RevocationBus, RevocationKind

log = get_logger(__name__)

#: verified tokens remembered per process, least recently used out first (~300 bytes each)
CACHE_MAX = 10_000
#: how long a verified token is remembered unless the settings say otherwise
CACHE_S = 30.0
#: the share of ``cache_s`` by which a token's own lifetime in the cache may be shorter
CACHE_SPREAD = 0.5

T = TypeVar("T")


class PrincipalScope(StrEnum):
    #: the user's own token: everything of the user's
    USER = "user"
    #: a share token: reads of one session (``session_id``) of the user, nothing else
    SHARE = "share"


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller. For a share token ``user_id`` is the session's owner (whose
    data it reads) and ``share_id``/``session_id`` say which share and session."""

    user_id: str
    expires_at_ms: int
    scope: PrincipalScope = PrincipalScope.USER
    share_id: str | None = None
    session_id: str | None = None
    #: when the credential was issued (0: unknown); a revocation closes what came before it
    issued_at_ms: int = 0

    @property
    def expires_at_s(self) -> int:
        return self.expires_at_ms // 1000

    @property
    def is_share(self) -> bool:
        return self.scope is PrincipalScope.SHARE

    @property
    def rate_key(self) -> str:
        """Whose request budget a request spends: a share has its own, apart from its owner's."""
        return f"share:{self.share_id}" if self.is_share else self.user_id

    def revoked_by(self, revocation: Revocation) -> bool:
        """True when ``revocation`` ends this principal."""
        if revocation.kind is RevocationKind.SHARE:
            return self.share_id == revocation.id
        if revocation.kind is RevocationKind.SESSION:
            # The session's shares went with it: a share of it ends like a revoked one (its
            # subscribers heard ``session.status`` deleted before); the owner's token lives on.
            return self.is_share and self.session_id == revocation.id
        return self.user_id == revocation.id and self.issued_at_ms < revocation.at_ms


def verify_token(secret: str, token: str | None) -> Principal:
    """The principal of a valid local token (signature and expiry only: whether its user exists
    and whether it was revoked is the ``Authenticator``'s question)."""
    if not token:
        raise Unauthenticated("A bearer token is required.", code="UNAUTHENTICATED")
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["sub", "exp"]}
        )
    except jwt.ExpiredSignatureError:
        raise Unauthenticated("The token has expired.", code="TOKEN_EXPIRED") from None
    except jwt.InvalidTokenError:
        raise Unauthenticated("The token is not valid.", code="TOKEN_INVALID") from None
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise Unauthenticated("The token has no subject.", code="TOKEN_INVALID")
    return Principal(
        user_id=subject, expires_at_ms=int(claims["exp"]) * 1000, issued_at_ms=_issued_ms(claims)
    )


def _issued_ms(claims: JsonObject) -> int:
    """When a token was issued, in ms. Without ``iat_ms`` the start of its ``iat`` second: a
    revocation within that second then refuses it (in doubt, refuse)."""
    exact = claims.get("iat_ms")
    if isinstance(exact, int) and not isinstance(exact, bool):
        return exact
    iat = claims.get("iat")
    if isinstance(iat, (int, float)) and not isinstance(iat, bool):
        return int(iat) * 1000
    return 0


def bearer_from_header(value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer …`` header, or None."""
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _invalid(message: str = "The token is not valid.") -> Unauthenticated:
    return Unauthenticated(message, code="TOKEN_INVALID")


@dataclass(slots=True)
class _Remembered:
    principal: Principal
    until_ms: int


class Authenticator:
    """Who a caller is (see the module docstring)."""

    def __init__(
        self,
        secret: str,
        db: Database,
        *,
        clock: Clock | None = None,
        local_tokens: bool = True,
        oidc: OidcVerifier | None = None,
        revocations: RevocationBus | None = None,
        cache_s: float = CACHE_S,
        cache_max: int = CACHE_MAX,
    ) -> None:
        self._secret = secret
        self._db = db
        self._clock = clock or SystemClock()
        self._local_tokens = local_tokens
        self.oidc = oidc
        #: erased subjects, looked up with every OpenID Connect token the cache does not hold
        self._tombstones = (
            credentials.SubjectTombstones(secret, oidc.issuer) if oidc is not None else None
        )
        self.revocations = revocations or RevocationBus()
        self.revocations.subscribe(self._forget)
        self._cache_ms = int(cache_s * 1000)
        self._cache_max = cache_max
        self._cache: OrderedDict[bytes, _Remembered] = OrderedDict()
        # Moves on every revocation: a lookup that started before one is not remembered.
        self._generation = 0

    async def authenticate(self, token: str | None) -> Principal:
        """The principal of ``token``; ``Unauthenticated`` (UNAUTHENTICATED, TOKEN_EXPIRED,
        TOKEN_INVALID, TOKEN_REVOKED, SHARE_REVOKED, SHARE_EXPIRED) or ``DependencyUnavailable``
        when the database cannot say."""
        if not token:
            raise Unauthenticated("A bearer token is required.", code="UNAUTHENTICATED")
        now_ms = self._clock.now_ms()
        key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        remembered = self._cache.get(key)
        if remembered is not None:
            if now_ms < remembered.until_ms:
                self._cache.move_to_end(key)
                return remembered.principal
            del self._cache[key]
        generation = self._generation
        principal = await self._verify(token, now_ms)
        if generation == self._generation and self._cache_ms > 0:
            until_ms = min(now_ms + remembered_for_ms(key, self._cache_ms), principal.expires_at_ms)
            self._cache[key] = _Remembered(principal, until_ms)
            if len(self._cache) > self._cache_max:
                self._cache.popitem(last=False)
        return principal

    async def revoke_user(self, user_id: str) -> None:
        """Refuse the user's cached principals at once and close its sockets (and those of its
        shares) within a second, on every server. What the database says afterwards is the
        caller's part: ``vitalcast token revoke`` moves ``tokens_valid_after_ms``, erasure
        deletes the user."""
        await self.revocations.publish(
            Revocation(RevocationKind.USER, user_id, self._clock.now_ms())
        )

    async def revoke_share(self, share_id: str) -> None:
        """The same for one share (its row is already marked revoked or gone)."""
        await self.revocations.publish(
            Revocation(RevocationKind.SHARE, share_id, self._clock.now_ms())
        )

    async def revoke_session(self, session_id: str) -> None:
        """A session was deleted: every server drops its shares' cached principals, closes its
        shares' sockets and forgets whatever else it keeps of the session
        (``telemetry.read.forgetting``)."""
        await self.revocations.publish(
            Revocation(RevocationKind.SESSION, session_id, self._clock.now_ms())
        )

    async def start(self) -> None:
        await self.revocations.start()
        if self.oidc is not None:
            await self.oidc.start()

    async def close(self) -> None:
        await self.revocations.close()
        if self.oidc is not None:
            await self.oidc.close()

    async def _forget(self, revocation: Revocation) -> None:
        """Drop every remembered principal of the user or share, whenever it was issued: the
        database decides again on the next use (a token issued after the revocation passes)."""
        self._generation += 1
        if revocation.kind is RevocationKind.SHARE:
            dropped = [k for k, v in self._cache.items() if v.principal.share_id == revocation.id]
        elif revocation.kind is RevocationKind.SESSION:
            dropped = [
                k
                for k, v in self._cache.items()
                if v.principal.is_share and v.principal.session_id == revocation.id
            ]
        else:
            dropped = [k for k, v in self._cache.items() if v.principal.user_id == revocation.id]
        for key in dropped:
            del self._cache[key]

    async def _verify(self, token: str, now_ms: int) -> Principal:
        if token.startswith(share_repository.SHARE_TOKEN_PREFIX):
            return await self._share(token, now_ms)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise _invalid() from None
        alg = header.get("alg")
        if alg == ALGORITHM:
            if not self._local_tokens:
                raise _invalid("Local tokens are not accepted here.")
            return await self._local(token)
        if self.oidc is not None:
            claims = await self.oidc.verify(token, header)
            return await self._oidc_principal(claims, now_ms)
        raise _invalid()

    async def _local(self, token: str) -> Principal:
        principal = verify_token(self._secret, token)
        if not _is_uuid(principal.user_id):
            # Every user id is a UUID; anything else cannot exist and must not reach a query
            # (PostgreSQL answers a NUL byte in text with an error, not an empty result).
            raise _invalid()
        user = await self._query(lambda conn: credentials.local_user(conn, principal.user_id))
        if user is None:
            raise _invalid()
        if (
            user.tokens_valid_after_ms is not None
            and principal.issued_at_ms < user.tokens_valid_after_ms
        ):
            raise Unauthenticated("The token has been revoked.", code="TOKEN_REVOKED")
        return principal

    async def _oidc_principal(self, claims: JsonObject, now_ms: int) -> Principal:
        subject: str = claims["sub"]
        iat = claims.get("iat")
        issued = int(iat) * 1000 if isinstance(iat, (int, float)) else 0
        digest = self._tombstones.digest(subject) if self._tombstones is not None else ""
        identity = await self._query(lambda conn: credentials.oidc_identity(conn, subject, digest))
        if identity.erased_at_ms is not None and issued < identity.erased_at_ms:
            # Issued before the subject's account was erased (or without ``iat``: in doubt,
            # refuse): the erased account must not come back, as a new one or another's.
            raise Unauthenticated("The token's account was erased.", code="TOKEN_REVOKED")
        user_id = identity.user_id
        if user_id is None:
            user_id = await self._query(
                lambda conn: credentials.create_oidc_user(conn, subject, now_ms=now_ms),
                write=True,
            )
            if user_id is None:
                raise _invalid("The token's subject cannot be used here.")
            log.info("oidc_user_created", user_id=user_id)
        return Principal(
            user_id=user_id, expires_at_ms=int(claims["exp"]) * 1000, issued_at_ms=issued
        )

    async def _share(self, token: str, now_ms: int) -> Principal:
        share = await self._query(lambda conn: share_repository.by_token(conn, token))
        if share is None:
            raise _invalid()
        state = share.state(now_ms)
        if state is share_repository.ShareState.REVOKED:
            raise Unauthenticated("The share has been revoked.", code="SHARE_REVOKED")
        if state is share_repository.ShareState.EXPIRED:
            raise Unauthenticated("The share has expired.", code="SHARE_EXPIRED")
        return Principal(
            user_id=share.user_id,
            expires_at_ms=share.expires_at_ms,
            scope=PrincipalScope.SHARE,
            share_id=share.id,
            session_id=share.session_id,
            issued_at_ms=share.created_at_ms,
        )

    async def _query(self, run: Unit[T], *, write: bool = False) -> T:
        """``run(conn)`` in a transaction; a database outage is ``DependencyUnavailable``.

        A read (a token's lookup: a user, a tombstone or a share by its key) is a short unit
        (``Database.unit``): on a SQLite file it runs on the event loop's thread; a lookup, the
        signature check included, cost 0.23-0.28 ms of the process's CPU against 1.7-2.9 ms
        through ``Database.read`` (aiosqlite's hops for BEGIN, the statement and COMMIT; 400
        tokens, best of 5), and it never queues behind a compute's read on a database thread.
        Every token
        in use is looked up again each time it leaves the cache: at 1,000 live sessions about
        45 a second, and all of them in the first seconds after a pause longer than the cache's
        lifetime. On PostgreSQL it stays a transaction of the engine's pool."""
        try:
            if not write and self._db.sqlite:
                return await self._db.unit(run, short=True)
            async with self._db.write() if write else self._db.read() as conn:
                return await run(conn)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if is_pool_timeout(exc):
                # authentication runs before the app's error handlers: answer the 503 here
                log.warning("database_pool_exhausted")
                raise DependencyUnavailable(
                    "Every database connection is in use; retry shortly.",
                    code="DATABASE_BUSY",
                    retry_after_s=DATABASE_RETRY_AFTER_S,
                ) from None
            if not is_outage(exc):
                raise
            log.warning("auth_lookup_failed", error_type=type(exc).__name__)
            raise DependencyUnavailable(
                "The database is unavailable.",
                code="DATABASE_UNAVAILABLE",
                retry_after_s=DATABASE_RETRY_AFTER_S,
            ) from None


def remembered_for_ms(key: bytes, cache_ms: int) -> int:
    """How long the token whose hash is ``key`` is remembered: between ``1 - CACHE_SPREAD`` of
    ``cache_ms`` and all of it, the same for the same token, spread evenly over tokens.

    One lifetime for every token made their expiries a herd: 1,000 live sessions created
    within seconds (a class, a team, ``bench/capacity``) had their tokens verified within
    seconds, and they all came due within the same few seconds, every 30-35 s (each token is
    verified again at its first use after expiry, which keeps the group together): 1,000 reads
    of a user and signature checks in one burst, 80-120 ms of the event loop's CPU each second
    for 5-7 s on top of the live updates. Spread over half the lifetime, the first expiries
    are 15 s apart and the group does not form again; a token is never remembered longer than
    before, and a revocation still drops it at once."""
    fraction = int.from_bytes(key[:4], "big") / 2**32
    return cache_ms - int(cache_ms * CACHE_SPREAD * fraction)


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False
