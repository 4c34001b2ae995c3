"""Bearer tokens (JWT, HS256, ``sub`` = user id, ``exp``): issued by the CLI, verified for HTTP
and Socket.IO alike, so one rule decides who a caller is."""

from __future__ import annotations

from dataclasses import dataclass

import jwt

from vitalcast.errors import Unauthenticated

ALGORITHM = "HS256"


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
