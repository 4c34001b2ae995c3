"""Bearer tokens (JWT, HS256, ``sub`` = user id, ``exp``): issued by the CLI, verified for HTTP
and Socket.IO alike by one ``Authenticator``, so one rule decides who a caller is."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import jwt
import redis.asyncio as aioredis

from vitalcast.db.engine import Database
from vitalcast.db.errors import DATABASE_RETRY_AFTER_S, is_outage
from vitalcast.errors import DependencyUnavailable, Unauthenticated
from vitalcast.observability import get_logger
from vitalcast.redis_connections import pubsub_client
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


#: told the id of every revoked user, on every server
RevocationListener = Callable[[str], Awaitable[None]]


class UserRevocations:
    """The broadcast of ``revoke_user``: delivered in this process at once, and, with Redis, to
    every server through a pub/sub channel (nothing is stored in Redis)."""

    def __init__(
        self, redis_url: str | None = None, *, channel: str = "vitalcast-revocations"
    ) -> None:
        self._redis_url = redis_url
        self._channel = channel
        self._listeners: list[RevocationListener] = []
        self._redis: aioredis.Redis | None = None
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, listener: RevocationListener) -> None:
        self._listeners.append(listener)

    async def publish(self, user_id: str) -> None:
        await self._deliver(user_id)
        if self._redis_url:
            if self._redis is None:
                self._redis = pubsub_client(self._redis_url)
            await self._redis.publish(self._channel, user_id)

    async def start(self) -> None:
        """Listen to the other servers' revocations (scaled out only)."""
        if self._redis_url and self._task is None:
            if self._redis is None:
                self._redis = pubsub_client(self._redis_url)
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            await pubsub.subscribe(self._channel)
            self._task = asyncio.get_running_loop().create_task(self._listen(pubsub))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()
            self._redis = None

    async def _listen(self, pubsub: aioredis.client.PubSub) -> None:
        try:
            while True:
                try:
                    async for message in pubsub.listen():
                        data = message.get("data")
                        if isinstance(data, bytes):
                            await self._deliver(data.decode())
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("revocations_listen_failed", error_type=type(exc).__name__)
                    await asyncio.sleep(1.0)
                    with contextlib.suppress(Exception):
                        await pubsub.subscribe(self._channel)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _deliver(self, user_id: str) -> None:
        for listener in self._listeners:
            try:
                await listener(user_id)
            except Exception as exc:
                log.error("revocation_listener_failed", error_type=type(exc).__name__)


class Authenticator:
    """Who a caller is: a valid token of a user that exists and is not being erased.

    A signed token whose user the database does not hold (a database that was reset, a token
    of another deployment sharing the secret, an erased user) is ``TOKEN_INVALID``, exactly like
    a bad signature, on every route and on Socket.IO. Found ids are remembered (least recently
    used first out, at most ``known_users_max``) and a request of a known user costs no query
    at all, which keeps the cached telemetry GET at one database read; ``revoke_user`` (erasure)
    forgets one at once on every server. Ids not found are not remembered, so a user created
    after a refusal is admitted at once; only a holder of the secret can mint such tokens, so
    they cannot be used to flood the database.
    """

    def __init__(
        self,
        secret: str,
        db: Database,
        *,
        known_users_max: int = KNOWN_USERS_MAX,
        revocations: UserRevocations | None = None,
    ) -> None:
        self._secret = secret
        self._db = db
        self._known: OrderedDict[str, None] = OrderedDict()
        self._known_max = known_users_max
        self.revocations = revocations or UserRevocations()
        self.revocations.subscribe(self._forget)
        # Moves on every revocation: a lookup that started before one is not remembered.
        self._generation = 0

    async def revoke_user(self, user_id: str) -> None:
        """Refuse the user's tokens at once and close its sockets, on every server. What the
        database says afterwards is the caller's part (erasure marks the user first)."""
        await self.revocations.publish(user_id)

    async def _forget(self, user_id: str) -> None:
        self._generation += 1
        self._known.pop(user_id, None)

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
        generation = self._generation
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
        if generation != self._generation:
            return principal
        self._known[user_id] = None
        if len(self._known) > self._known_max:
            self._known.popitem(last=False)
        return principal


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False
