"""Bearer tokens (JWT, HS256, ``sub`` = user id, ``exp``): issued by the CLI, verified for HTTP
and Socket.IO alike by one ``Authenticator``, so one rule decides who a caller is."""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import dataclass

import jwt

from vitalcast.db.engine import Database
from vitalcast.db.errors import DATABASE_RETRY_AFTER_S, is_outage
from vitalcast.errors import DependencyUnavailable, Unauthenticated
from vitalcast.observability import get_logger
from vitalcast.sessions import repository as session_repository

log = get_logger(__name__)

ALGORITHM = "HS256"
# User ids known to exist, remembered per process: ~100 bytes each, so at most about 1 MB.
KNOWN_USERS_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller and when its token stops being valid."""

    user_id: str
    expires_at_s: int


def issue_token(secret: str, user_id: str, *, now_s: int, ttl_s: int) -> str:
    """A signed token for ``user_id`` valid for ``ttl_s`` seconds from ``now_s``."""
    return jwt.encode({"sub": user_id, "iat": now_s, "exp": now_s + ttl_s}, secret, ALGORITHM)


def verify_token(secret: str, token: str | None) -> Principal:
    """The principal of a valid token; raises ``Unauthenticated`` with a precise code otherwise."""
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
    return Principal(user_id=subject, expires_at_s=int(claims["exp"]))


def bearer_from_header(value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer …`` header, or None."""
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class Authenticator:
    """Who a caller is: a valid token of a user that exists.

    A signed token whose user the database does not hold (a database that was reset, a token
    of another deployment sharing the secret) is ``TOKEN_INVALID``, exactly like a bad signature,
    on every route and on Socket.IO. Users are never deleted through vitalcast, so an id once
    found stays valid: found ids are remembered (least recently used first out, at most
    ``known_users_max``) and a request of a known user costs no query at all, which keeps the
    cached telemetry GET at one database read. No time limit is needed for the same reason.
    Ids not found are not remembered, so a user created after a refusal is admitted at once;
    only a holder of the secret can mint such tokens, so they cannot be used to flood the
    database.
    """

    def __init__(
        self, secret: str, db: Database, *, known_users_max: int = KNOWN_USERS_MAX
    ) -> None:
        self._secret = secret
        self._db = db
        self._known: OrderedDict[str, None] = OrderedDict()
        self._known_max = known_users_max

    async def authenticate(self, token: str | None) -> Principal:
        """The principal of ``token``; ``Unauthenticated`` (UNAUTHENTICATED, TOKEN_EXPIRED,
        TOKEN_INVALID) or ``DependencyUnavailable`` when the database cannot say."""
        principal = verify_token(self._secret, token)
        user_id = principal.user_id
        if user_id in self._known:
            self._known.move_to_end(user_id)
            return principal
        if not _is_uuid(user_id):
            # Every user id is a UUID; anything else cannot exist and must not reach a query
            # (PostgreSQL answers a NUL byte in text with an error, not an empty result).
            raise Unauthenticated("The token is not valid.", code="TOKEN_INVALID")
        try:
            async with self._db.read() as conn:
                exists = await session_repository.user_exists(conn, user_id)
        except Exception as exc:
            if not is_outage(exc):
                raise
            log.warning("auth_user_lookup_failed", error_type=type(exc).__name__)
            raise DependencyUnavailable(
                "The database is unavailable.",
                code="DATABASE_UNAVAILABLE",
                retry_after_s=DATABASE_RETRY_AFTER_S,
            ) from None
        if not exists:
            raise Unauthenticated("The token is not valid.", code="TOKEN_INVALID")
        self._known[user_id] = None
        if len(self._known) > self._known_max:
            self._known.popitem(last=False)
        return principal


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False
