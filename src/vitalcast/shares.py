"""Shares: a read-only link to one live session, for a caregiver, and its access log.

A share token is ``vcs_`` + 256 random bits, shown once at creation; the table keeps its SHA-256
only, so a leaked table opens nothing. Revoking keeps the row (the owner's access log refers to
it). What a share token may read is decided in ``api.share_scope``; who it is, in ``auth``.

``ShareAccessLog`` records every read through a share without a write per request: reads are
kept in memory and written in one statement per second (and before the owner lists them).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from vitalcast.clock import MINUTE_MS, Clock, sleep_to_tick
from vitalcast.db.engine import Database
from vitalcast.db.tables import share_access, shares
from vitalcast.observability import get_logger

log = get_logger(__name__)

SHARE_TOKEN_PREFIX = "vcs_"
MAX_EXPIRES_IN_MINUTES = 7 * 24 * 60
#: reads buffered beyond this are dropped (and logged) rather than held while the database is down
ACCESS_BUFFER_MAX = 100_000
ACCESS_FLUSH_S = 1.0


class ShareState(StrEnum):
    #: its token reads the session
    ACTIVE = "active"
    #: past ``expires_at_ms``
    EXPIRED = "expired"
    #: revoked by its owner
    REVOKED = "revoked"


class AccessKind(StrEnum):
    """What a read through a share was (never what it returned)."""

    SESSION = "session"
    TELEMETRY = "telemetry"
    EXPORT_CSV = "export_csv"
    FHIR = "fhir"
    SUBSCRIBE = "subscribe"


@dataclass(frozen=True, slots=True)
class Share:
    id: str
    session_id: str
    user_id: str
    label: str | None
    created_at_ms: int
    expires_at_ms: int
    revoked_at_ms: int | None

    def state(self, now_ms: int) -> ShareState:
        if self.revoked_at_ms is not None:
            return ShareState.REVOKED
        if self.expires_at_ms <= now_ms:
            return ShareState.EXPIRED
        return ShareState.ACTIVE


@dataclass(frozen=True, slots=True)
class Access:
    id: int
    at_ms: int
    kind: str


def new_token() -> str:
    return SHARE_TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _share(row: sa.Row[tuple[object, ...]]) -> Share:
    return Share(
        id=row.id,
        session_id=row.session_id,
        user_id=row.user_id,
        label=row.label,
        created_at_ms=row.created_at_ms,
        expires_at_ms=row.expires_at_ms,
        revoked_at_ms=row.revoked_at_ms,
    )


async def create(
    conn: AsyncConnection,
    *,
    user_id: str,
    session_id: str,
    label: str | None,
    now_ms: int,
    expires_in_minutes: int,
) -> tuple[Share, str]:
    """A new share of the caller's session and its token (the only time it is known)."""
    token = new_token()
    share = Share(
        id=str(uuid.uuid4()),
        session_id=session_id,
        user_id=user_id,
        label=label,
        created_at_ms=now_ms,
        expires_at_ms=now_ms + expires_in_minutes * MINUTE_MS,
        revoked_at_ms=None,
    )
    await conn.execute(
        sa.insert(shares).values(
            id=share.id,
            session_id=session_id,
            user_id=user_id,
            token_sha256=token_digest(token),
            label=label,
            created_at_ms=now_ms,
            expires_at_ms=share.expires_at_ms,
        )
    )
    return share, token


async def by_token(conn: AsyncConnection, token: str) -> Share | None:
    row = (
        await conn.execute(sa.select(shares).where(shares.c.token_sha256 == token_digest(token)))
    ).first()
    return None if row is None else _share(row)


async def get(conn: AsyncConnection, user_id: str, share_id: str) -> Share | None:
    """The share if it exists and is ``user_id``'s (None otherwise: existence never leaks)."""
    row = (
        await conn.execute(
            sa.select(shares).where(shares.c.id == share_id, shares.c.user_id == user_id)
        )
    ).first()
    return None if row is None else _share(row)


async def of_session(conn: AsyncConnection, user_id: str, session_id: str) -> list[Share]:
    rows = await conn.execute(
        sa.select(shares)
        .where(shares.c.session_id == session_id, shares.c.user_id == user_id)
        .order_by(shares.c.created_at_ms.desc(), shares.c.id)
    )
    return [_share(row) for row in rows]


async def revoke(conn: AsyncConnection, user_id: str, share_id: str, *, now_ms: int) -> bool:
    """Revoke the caller's share (a second revoke keeps the first moment); False when it is not
    the caller's or does not exist."""
    share = await get(conn, user_id, share_id)
    if share is None:
        return False
    if share.revoked_at_ms is None:
        await conn.execute(
            sa.update(shares)
            .where(shares.c.id == share_id, shares.c.revoked_at_ms.is_(None))
            .values(revoked_at_ms=now_ms)
        )
    return True


async def accesses(
    conn: AsyncConnection, share_id: str, *, limit: int, before_id: int | None
) -> list[Access]:
    """The share's reads, newest first."""
    query = sa.select(share_access.c.id, share_access.c.at_ms, share_access.c.kind).where(
        share_access.c.share_id == share_id
    )
    if before_id is not None:
        query = query.where(share_access.c.id < before_id)
    rows = await conn.execute(query.order_by(share_access.c.id.desc()).limit(limit))
    return [Access(row.id, row.at_ms, row.kind) for row in rows]


class ShareAccessLog:
    """Buffers reads through shares and writes them once per ``flush_s`` (see the module)."""

    def __init__(self, db: Database, clock: Clock, *, flush_s: float = ACCESS_FLUSH_S) -> None:
        self._db = db
        self._clock = clock
        self._flush_s = flush_s
        self._pending: list[dict[str, object]] = []
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def record(self, share_id: str, kind: AccessKind) -> None:
        if len(self._pending) >= ACCESS_BUFFER_MAX:
            log.warning("share_access_dropped")
            return
        self._pending.append(
            {"share_id": share_id, "at_ms": self._clock.now_ms(), "kind": kind.value}
        )

    async def flush(self) -> None:
        """Write what is buffered (kept for the next flush when the database fails)."""
        async with self._lock:
            batch, self._pending = self._pending, []
            if not batch:
                return
            try:
                async with self._db.write() as conn:
                    # A share revoked and purged meanwhile (erasure) must not fail the batch.
                    known = set(
                        await conn.scalars(
                            sa.select(shares.c.id).where(
                                shares.c.id.in_({str(item["share_id"]) for item in batch})
                            )
                        )
                    )
                    rows = [item for item in batch if item["share_id"] in known]
                    if rows:
                        await conn.execute(sa.insert(share_access), rows)
            except Exception as exc:
                log.warning("share_access_flush_failed", error_type=type(exc).__name__)
                self._pending = batch + self._pending

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.flush()

    async def _run(self) -> None:
        while True:
            # on the loop's ticks, with the server's other periodic tasks (one wake-up)
            await sleep_to_tick(self._flush_s)
            await self.flush()
