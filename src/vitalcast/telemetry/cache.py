"""``SessionTelemetryCacheRepository``: cache rows, their compute lease and their outcomes.

A row is keyed (session, window, resolution, compute version). Its ``status`` is the kind of the
stored payload (ready / no_data), ``computing`` before the first outcome, or ``failed`` when the
last attempt failed and there is no payload to keep. A failure never drops a payload: it records
``error_code``, ``attempts`` and ``next_attempt_ms`` next to it.

Only the holder of an unexpired lease computes; taking it is one conditional UPDATE, and saving is
conditional on still holding it, so a slow compute whose lease was taken over cannot overwrite the
newer result. Every method runs in the caller's transaction (``db.write()``) and commits nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from vitalcast.db.tables import sessions, telemetry_cache
from vitalcast.sessions.models import Session, SessionStatus
from vitalcast.telemetry.compute import session_query
from vitalcast.telemetry.models import (
    CacheState,
    ComputedTelemetry,
    Resolution,
    StoredView,
    TelemetryKey,
)

#: first retry delay after a failed compute; doubles per attempt up to BACKOFF_MAX_MS
BACKOFF_BASE_MS = 1_000
BACKOFF_MAX_MS = 300_000

c = telemetry_cache.c


def backoff_ms(attempts: int) -> int:
    """Delay before the next attempt after ``attempts`` consecutive failures (exponential)."""
    return min(BACKOFF_BASE_MS << max(attempts - 1, 0), BACKOFF_MAX_MS)


class LeaseRefusal(enum.StrEnum):
    """Why the lease was not taken."""

    #: another owner holds an unexpired lease
    BUSY = "busy"
    #: the last compute failed and ``next_attempt_ms`` is still ahead
    BACKING_OFF = "backing_off"
    #: the session does not exist (or is not the key's user's), so no row could be made
    NO_SESSION = "no_session"


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease we hold, with what the row held when we took it."""

    owner: str
    expires_ms: int
    status: CacheState
    has_payload: bool
    source_watermark: int | None
    #: when the payload we may replace was computed (its live edge, for a live session)
    computed_at_ms: int | None
    attempts: int


@dataclass(frozen=True, slots=True)
class SaveResult:
    """Whether a save happened and, if it did, the freshness lag it resolved."""

    saved: bool
    lag_ms: int | None = None


@dataclass(frozen=True, slots=True)
class CacheRow:
    """A whole cache row (diagnostics and tests; the hot read lives in ``reader``)."""

    status: CacheState
    payload: bytes | None
    source_watermark: int | None
    computed_at_ms: int | None
    compute_ms: int | None
    raw_sample_count: int | None
    lease_owner: str | None
    lease_expires_ms: int | None
    attempts: int
    next_attempt_ms: int | None
    error_code: str | None
    stale_since_ms: int | None


@dataclass(frozen=True, slots=True)
class LiveView:
    """A live session and, when it has one, a cached view of it (what the live ticker needs)."""

    session_id: str
    user_id: str
    session_start_ms: int
    session_watermark: int
    #: None for a session without any cached view at this compute version
    window_minutes: int | None
    resolution: Resolution | None
    computed_at_ms: int | None


_ROW_COLUMNS = (
    c.status,
    c.payload,
    c.source_watermark,
    c.computed_at_ms,
    c.compute_ms,
    c.raw_sample_count,
    c.lease_owner,
    c.lease_expires_ms,
    c.attempts,
    c.next_attempt_ms,
    c.error_code,
    c.stale_since_ms,
)


def _cache_row(values: Sequence[Any]) -> CacheRow:
    row = CacheRow(*values)
    return replace(row, status=CacheState(row.status))


def _key(key: TelemetryKey) -> Any:
    return sa.and_(
        c.session_id == key.session_id,
        c.window_minutes == key.window_minutes,
        c.resolution == key.resolution.value,
        c.compute_version == key.compute_version,
    )


class SessionTelemetryCacheRepository:
    """Reads and conditional writes of ``telemetry_cache``; stateless, safe to share."""

    async def take_lease(
        self, conn: AsyncConnection, key: TelemetryKey, *, owner: str, now_ms: int, lease_ms: int
    ) -> Lease | LeaseRefusal:
        """Take the lease with one conditional UPDATE: only when it is free or expired and any
        failure backoff has elapsed. A missing row is created first (then the UPDATE again)."""
        expires = now_ms + lease_ms
        take = (
            sa.update(telemetry_cache)
            .where(
                _key(key),
                sa.or_(c.lease_owner.is_(None), c.lease_expires_ms <= now_ms),
                sa.or_(c.next_attempt_ms.is_(None), c.next_attempt_ms <= now_ms),
            )
            .values(lease_owner=owner, lease_expires_ms=expires, updated_at_ms=now_ms)
            .returning(
                c.status, c.payload.is_not(None), c.source_watermark, c.computed_at_ms, c.attempts
            )
        )
        row = (await conn.execute(take)).first()
        if row is None:
            # Missing (or just inserted by another node, or held): make sure it exists, try again.
            await self._insert_missing(conn, key, now_ms)
            row = (await conn.execute(take)).first()
        if row is not None:
            return Lease(owner, expires, CacheState(row[0]), bool(row[1]), row[2], row[3], row[4])
        refusal = (
            await conn.execute(
                sa.select(c.lease_owner, c.lease_expires_ms, c.next_attempt_ms).where(_key(key))
            )
        ).first()
        if refusal is None:
            return LeaseRefusal.NO_SESSION
        if refusal.lease_owner is not None and refusal.lease_expires_ms > now_ms:
            return LeaseRefusal.BUSY
        return LeaseRefusal.BACKING_OFF

    async def _insert_missing(self, conn: AsyncConnection, key: TelemetryKey, now_ms: int) -> None:
        source = sa.select(
            sessions.c.id,
            sa.literal(key.window_minutes),
            sa.literal(key.resolution.value),
            sa.literal(key.compute_version),
            sessions.c.user_id,
            sa.literal(CacheState.COMPUTING.value),
            sa.literal(0),
            sa.literal(now_ms, sa.BigInteger),
        ).where(sessions.c.id == key.session_id)
        if key.user_id:
            source = source.where(sessions.c.user_id == key.user_id)
        insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        await conn.execute(
            insert(telemetry_cache)
            .from_select(
                [
                    "session_id",
                    "window_minutes",
                    "resolution",
                    "compute_version",
                    "user_id",
                    "status",
                    "attempts",
                    "updated_at_ms",
                ],
                source,
            )
            .on_conflict_do_nothing(
                index_elements=["session_id", "window_minutes", "resolution", "compute_version"]
            )
        )

    async def renew(
        self, conn: AsyncConnection, key: TelemetryKey, *, owner: str, now_ms: int, lease_ms: int
    ) -> bool:
        """Extend our lease; False when it is no longer ours (taken over after expiring)."""
        result = await conn.execute(
            sa.update(telemetry_cache)
            .where(_key(key), c.lease_owner == owner)
            .values(lease_expires_ms=now_ms + lease_ms, updated_at_ms=now_ms)
        )
        return result.rowcount == 1

    async def release(
        self, conn: AsyncConnection, key: TelemetryKey, *, owner: str, now_ms: int
    ) -> None:
        """Give the lease back without an outcome (the cache was already fresh)."""
        await conn.execute(
            sa.update(telemetry_cache)
            .where(_key(key), c.lease_owner == owner)
            .values(lease_owner=None, lease_expires_ms=None, updated_at_ms=now_ms)
        )

    async def save(
        self,
        conn: AsyncConnection,
        key: TelemetryKey,
        computed: ComputedTelemetry,
        *,
        owner: str,
        now_ms: int,
        compute_ms: int,
        read_started_ms: int,
    ) -> SaveResult:
        """Store ``computed`` only while ``owner`` holds the lease, and release it.

        ``stale_since_ms`` (set by ingest at the first change after the cached watermark) turns
        into the freshness lag when that change predates our watermark read; it is cleared when
        the saved watermark is current, else it restarts at our read (a change arrived since).
        """
        watermark_now = (
            sa.select(sessions.c.source_watermark)
            .where(sessions.c.id == key.session_id)
            .scalar_subquery()
        )
        current = (
            await conn.execute(
                sa.select(c.lease_owner, c.stale_since_ms, watermark_now)
                .where(_key(key))
                .with_for_update(of=telemetry_cache)
            )
        ).first()
        if current is None or current.lease_owner != owner:
            return SaveResult(saved=False)
        session_watermark = current[2]
        stale_since = current.stale_since_ms
        included = stale_since is not None and stale_since <= read_started_ms
        if session_watermark is None or session_watermark <= computed.source_watermark:
            next_stale_since = None
        elif included or stale_since is None:
            next_stale_since = read_started_ms
        else:
            next_stale_since = stale_since
        result = await conn.execute(
            sa.update(telemetry_cache)
            .where(_key(key), c.lease_owner == owner)
            .values(
                status=computed.state.value,
                payload=computed.blob,
                source_watermark=computed.source_watermark,
                computed_at_ms=computed.computed_at_ms,
                compute_ms=compute_ms,
                raw_sample_count=computed.raw_sample_count,
                lease_owner=None,
                lease_expires_ms=None,
                attempts=0,
                next_attempt_ms=None,
                error_code=None,
                stale_since_ms=next_stale_since,
                updated_at_ms=now_ms,
                partials=computed.partials,
                history=computed.history,
            )
        )
        if result.rowcount != 1:
            return SaveResult(saved=False)
        return SaveResult(saved=True, lag_ms=now_ms - stale_since if included else None)

    async def fail(
        self,
        conn: AsyncConnection,
        key: TelemetryKey,
        *,
        owner: str,
        now_ms: int,
        attempts: int,
        error_code: str,
    ) -> int | None:
        """Record a failed attempt under our lease and release it; the payload stays. Returns
        when the next attempt may start, or None when the lease was no longer ours."""
        next_attempt = now_ms + backoff_ms(attempts)
        result = await conn.execute(
            sa.update(telemetry_cache)
            .where(_key(key), c.lease_owner == owner)
            .values(
                status=sa.case((c.payload.is_(None), CacheState.FAILED.value), else_=c.status),
                lease_owner=None,
                lease_expires_ms=None,
                attempts=attempts,
                next_attempt_ms=next_attempt,
                error_code=error_code,
                updated_at_ms=now_ms,
            )
        )
        return next_attempt if result.rowcount == 1 else None

    async def keys_of(
        self, conn: AsyncConnection, session_ids: Sequence[str], *, compute_version: int
    ) -> list[tuple[str, int, Resolution]]:
        """(session, window, resolution) of every cache row of ``session_ids`` at that version."""
        if not session_ids:
            return []
        rows = await conn.execute(
            sa.select(c.session_id, c.window_minutes, c.resolution).where(
                c.session_id.in_(list(session_ids)), c.compute_version == compute_version
            )
        )
        return [(row[0], row[1], Resolution(row[2])) for row in rows]

    async def live_views(
        self, conn: AsyncConnection, session_ids: Sequence[str], *, compute_version: int
    ) -> list[LiveView]:
        """Every cached view (at ``compute_version``) of those of ``session_ids`` that are live,
        and one row without a view for a live session that has none."""
        if not session_ids:
            return []
        query = (
            sa.select(
                sessions.c.id,
                sessions.c.user_id,
                sessions.c.start_ms,
                sessions.c.source_watermark,
                c.window_minutes,
                c.resolution,
                c.computed_at_ms,
            )
            .select_from(
                sessions.outerjoin(
                    telemetry_cache,
                    sa.and_(c.session_id == sessions.c.id, c.compute_version == compute_version),
                )
            )
            .where(
                sessions.c.id.in_(list(session_ids)),
                sessions.c.status == SessionStatus.ACTIVE.value,
            )
        )
        return [
            LiveView(
                session_id=row[0],
                user_id=row[1],
                session_start_ms=row[2],
                session_watermark=row[3],
                window_minutes=row[4],
                resolution=None if row[5] is None else Resolution(row[5]),
                computed_at_ms=row[6],
            )
            for row in await conn.execute(query)
        ]

    async def session_and_stored(
        self, conn: AsyncConnection, key: TelemetryKey
    ) -> tuple[Session | None, StoredView | None]:
        """The key's session (``compute.load_session``'s row) and what the next compute of the
        view starts from: the payload's watermark and the partials and save history stored with
        it (None when there is no payload). One statement: a compute's read starts with both,
        and on a small live view every round trip counts."""
        query = (
            session_query(key)
            .add_columns(
                c.source_watermark.label("stored_watermark"),
                c.payload.is_not(None).label("has_payload"),
                c.partials.label("stored_partials"),
                c.history.label("stored_history"),
            )
            .outerjoin(telemetry_cache, _key(key))
        )
        row = (await conn.execute(query)).first()
        if row is None:
            return None, None
        stored = (
            StoredView(row.stored_watermark, row.stored_partials, row.stored_history)
            if row.has_payload
            else None
        )
        return Session.from_row(row), stored

    @staticmethod
    def views_floor(session_id: str, *, compute_version: int) -> sa.ScalarSelect[Any]:
        """The oldest watermark among the session's cached payloads at ``compute_version``, as a
        query: the change log up to it serves no view any more (NULL: no cached payload)."""
        return (
            sa.select(sa.func.min(c.source_watermark))
            .where(
                c.session_id == session_id,
                c.compute_version == compute_version,
                c.payload.is_not(None),
            )
            .scalar_subquery()
        )

    async def get(self, conn: AsyncConnection, key: TelemetryKey) -> CacheRow | None:
        row = (await conn.execute(sa.select(*_ROW_COLUMNS).where(_key(key)))).first()
        return None if row is None else _cache_row(row)

    async def get_many(
        self, conn: AsyncConnection, keys: Sequence[TelemetryKey]
    ) -> dict[TelemetryKey, CacheRow]:
        """The rows of ``keys`` that exist, in one read (a list of views, e.g. across sessions)."""
        if not keys:
            return {}
        wanted = {
            (k.session_id, k.window_minutes, k.resolution.value, k.compute_version): k for k in keys
        }
        rows = await conn.execute(
            sa.select(
                c.session_id,
                c.window_minutes,
                c.resolution,
                c.compute_version,
                *_ROW_COLUMNS,
            ).where(
                c.session_id.in_(sorted({k.session_id for k in keys})),
                c.window_minutes.in_(sorted({k.window_minutes for k in keys})),
                c.compute_version.in_(sorted({k.compute_version for k in keys})),
            )
        )
        found: dict[TelemetryKey, CacheRow] = {}
        for row in rows:
            key = wanted.get((row[0], row[1], row[2], row[3]))
            if key is not None:
                found[key] = _cache_row(row[4:])
        return found
