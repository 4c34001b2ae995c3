"""Revocations reach every server: the two calls of the authentication seam travel here.

A revocation names a user (``vitalcast token revoke``, erasure), a share (``DELETE
/api/v1/shares/{id}``) or a deleted session (``DELETE /api/v1/sessions/{id}``: its shares end, and
every process drops what it keeps of it) and the moment it took effect. ``RevocationBus.publish`` hands it to this
process's handlers at once (the authenticator drops cached principals, the Socket.IO server closes
sockets), then, when Redis is configured, publishes it on a channel every other server listens to.
A process that is no server (the CLI) publishes with ``publish_once``.

Two paths cover what pub/sub cannot: a revocation written by another process while Redis is down
or absent (the embedded mode with the CLI) is found by ``RevocationPoll``, which every server runs
over ``users.tokens_valid_after_ms`` (one indexed query per interval; on a SQLite file only when
something was committed since the last look, which ``PRAGMA data_version`` tells without a query
or a hop to a database thread), and a missed message is bounded by the authenticator's cache
lifetime, after which the database decides again.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from vitalcast.clock import sleep_to_tick
from vitalcast.db.engine import Database
from vitalcast.db.prepared import Prepared
from vitalcast.db.tables import users
from vitalcast.db.units import is_file_url
from vitalcast.observability import get_logger
from vitalcast.redis_connections import pubsub_client, short_call_client

log = get_logger(__name__)

#: seconds between attempts to listen again after the Redis connection failed
RESUBSCRIBE_S = 1.0
#: a publish never holds its caller longer than this (the poll and the cache lifetime back it)
PUBLISH_TIMEOUT_S = 2.0


class RevocationKind(StrEnum):
    """What a revocation names."""

    #: every token of the user issued before ``at_ms`` (and sockets opened with them)
    USER = "user"
    #: one share, for good
    SHARE = "share"
    #: a deleted session: its shares (cached principals, open sockets) and what processes keep
    #: of its views
    SESSION = "session"


@dataclass(frozen=True, slots=True)
class Revocation:
    kind: RevocationKind
    #: the user id, share id or session id
    id: str
    #: when it took effect; credentials issued at or after it are not affected
    at_ms: int

    def encode(self, origin: str) -> bytes:
        return orjson.dumps({"o": origin, "k": self.kind.value, "id": self.id, "at": self.at_ms})


Handler = Callable[[Revocation], Awaitable[None]]


def channel_of(socketio_channel: str) -> str:
    """The revocation channel beside a deployment's Socket.IO channel (so the tests' unique
    Socket.IO channels isolate revocations too)."""
    return f"{socketio_channel}-revocations"


class RevocationBus:
    """Delivers revocations to this process's handlers and, with Redis, to every other server."""

    def __init__(
        self, redis_url: str | None = None, *, channel: str = "vitalcast-revocations"
    ) -> None:
        self._redis_url = redis_url
        self._channel = channel
        self._origin = uuid.uuid4().hex
        self._handlers: list[Handler] = []
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    def subscribe(self, handler: Handler) -> None:
        """Call ``handler`` for every revocation, this process's and every other server's."""
        self._handlers.append(handler)

    async def publish(self, revocation: Revocation) -> None:
        """Apply ``revocation`` here at once, then tell the other servers (never raises: a lost
        message is caught by the poll or, at worst, by the cache lifetime)."""
        await self.deliver(revocation)
        if self._redis_url is None:
            return
        try:
            await publish_once(self._redis_url, self._channel, revocation, origin=self._origin)
        except Exception as exc:
            log.warning("revocation_publish_failed", kind=revocation.kind.value, error=str(exc))

    async def deliver(self, revocation: Revocation) -> None:
        """Run every handler of this process on ``revocation`` (one failing does not stop the
        others)."""
        for handler in self._handlers:
            try:
                await handler(revocation)
            except Exception as exc:
                log.error("revocation_handler_failed", error_type=type(exc).__name__)

    async def start(self) -> None:
        """Listen to the other servers (with Redis); returns once subscribed or after a short
        wait, so that a revocation published right after start-up is not missed."""
        if self._redis_url is None or self._listener is not None:
            return
        self._listener = asyncio.get_running_loop().create_task(self._listen(self._redis_url))
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await self._subscribed.wait()
        except TimeoutError:
            log.warning("revocation_listener_not_subscribed")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None

    async def _listen(self, url: str) -> None:
        while True:
            client = pubsub_client(url, max_connections=1)
            try:
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(self._channel)
                self._subscribed.set()
                async for message in pubsub.listen():
                    revocation = self._decode(message.get("data"))
                    if revocation is not None:
                        await self.deliver(revocation)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("revocation_listener_failed", error_type=type(exc).__name__)
            finally:
                try:
                    await client.aclose()
                except Exception:
                    log.debug("revocation_listener_close_failed")
            await asyncio.sleep(RESUBSCRIBE_S)

    def _decode(self, data: object) -> Revocation | None:
        try:
            fields = orjson.loads(data) if isinstance(data, (bytes, str)) else None
            if not isinstance(fields, dict) or fields.get("o") == self._origin:
                return None
            return Revocation(RevocationKind(fields["k"]), str(fields["id"]), int(fields["at"]))
        except (ValueError, KeyError, TypeError):
            log.warning("revocation_message_unreadable")
            return None


async def publish_once(
    redis_url: str, channel: str, revocation: Revocation, *, origin: str = "cli"
) -> None:
    """Publish ``revocation`` on ``channel`` from a process that does not listen (the CLI)."""
    client = short_call_client(redis_url)
    try:
        async with asyncio.timeout(PUBLISH_TIMEOUT_S):
            await client.publish(channel, revocation.encode(origin))
    finally:
        await client.aclose()


#: the revocations written after ``:seen_ms`` (built once: the poll runs every interval)
_REVOKED_SINCE = Prepared(
    sa.select(users.c.id, users.c.tokens_valid_after_ms).where(
        users.c.tokens_valid_after_ms > sa.bindparam("seen_ms", type_=sa.BigInteger)
    )
)


async def _revoked_since(conn: AsyncConnection, seen_ms: int) -> list[tuple[str, int]]:
    """(user id, tokens valid after) of every revocation written after ``seen_ms``."""
    rows = await _REVOKED_SINCE.rows(conn, {"seen_ms": seen_ms})
    return [(str(row.id), int(row.tokens_valid_after_ms)) for row in rows]


class SqliteCommits:
    """Whether anything was committed to a SQLite file since the last look, by any connection
    of this process or another: ``PRAGMA data_version`` on a connection of its own, on the
    caller's thread (about 8 us; it reads the WAL index, never a table, and never waits).

    An idle embedded server looked for revocations with one query a second, a hop to a
    database thread and back: most of its CPU with the webhook dispatcher's look and uvicorn's
    ticks (each wake-up costs about 0.1 ms on this kind of VM). A revocation from another
    process (the CLI) is a commit, so an unchanged version proves there is none to find."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None

    def version(self) -> int | None:
        """The file's data version now; None when SQLite could not tell (the caller looks)."""
        try:
            if self._conn is None:
                self._conn = sqlite3.connect(self._path, timeout=0, isolation_level=None)
            row = self._conn.execute("PRAGMA data_version").fetchone()
        except sqlite3.Error:
            self.close()
            return None
        return int(row[0]) if row is not None else None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class RevocationPoll:
    """Finds local-token revocations that another process wrote (``vitalcast token revoke``
    while the server runs embedded, or while Redis was down) and delivers them here: one
    indexed query every ``interval_ms`` (on a SQLite file only after a commit, ``SqliteCommits``),
    none when it is 0. The looks fall on the loop clock's ticks (``clock.next_tick``), with the
    server's other periodic tasks."""

    def __init__(self, db: Database, bus: RevocationBus, *, interval_ms: int) -> None:
        self._db = db
        self._bus = bus
        self._interval_s = interval_ms / 1000
        self._task: asyncio.Task[None] | None = None
        self._seen_ms: int | None = None
        url = db.engine.url
        self._commits = (
            SqliteCommits(url.database or "")
            if url.get_backend_name() == "sqlite" and is_file_url(url)
            else None
        )
        #: the data version the last query saw (before it ran)
        self._version: int | None = None
        #: queries run (a test's probe: an idle SQLite server runs none)
        self.queries = 0

    async def start(self) -> None:
        if self._interval_s > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._commits is not None:
            self._commits.close()

    async def poll(self) -> list[Revocation]:
        """Deliver the revocations written since the last poll (the first poll only learns
        where the log stands: there is nothing cached yet to drop)."""
        # read before the query: a commit after this read changes the version, and the next
        # look queries again
        version = self._commits.version() if self._commits is not None else None
        if version is not None and version == self._version:
            return []
        # a unit of work: on SQLite a unit is one hop to a database thread rather than one per
        # statement
        self.queries += 1
        if self._seen_ms is None:
            latest = await self._db.unit(
                lambda conn: conn.scalar(sa.select(sa.func.max(users.c.tokens_valid_after_ms)))
            )
            self._seen_ms = int(latest or 0)
            self._version = version
            return []
        seen_ms = self._seen_ms
        rows = await self._db.unit(
            lambda conn: _revoked_since(conn, seen_ms),
        )
        self._version = version
        found = [Revocation(RevocationKind.USER, user_id, at_ms) for user_id, at_ms in rows]
        for revocation in found:
            self._seen_ms = max(self._seen_ms, revocation.at_ms)
            await self._bus.deliver(revocation)
        return found

    async def _run(self) -> None:
        while True:
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("revocation_poll_failed", error_type=type(exc).__name__)
            await sleep_to_tick(self._interval_s)
