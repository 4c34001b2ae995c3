"""``SessionTelemetryCacheRepository``: a cache row's compute lease and its outcomes.

A row is keyed (session, window, resolution, compute version). Its ``status`` is the kind of the
stored payload (ready / no_data), ``computing`` before the first outcome, or ``failed`` when the
last attempt failed and there is no payload to keep. A failure never drops a payload: it records
``error_code``, ``attempts`` and ``next_attempt_ms`` next to it.

Only the holder of an unexpired lease computes; taking it is one conditional UPDATE, and saving is
conditional on still holding it, so a slow compute whose lease was taken over cannot overwrite the
newer result. The reads other callers need are in ``queries``. Every method runs in the
caller's transaction (``db.write()``) and commits nothing.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from vitalcast.clock import MINUTE_MS
from vitalcast.db.tables import sessions, telemetry_cache
from vitalcast.telemetry.compute.results import ComputedTelemetry
from vitalcast.telemetry.keys import CacheState, TelemetryKey
from vitalcast.telemetry.store.queries import key_clause
from vitalcast.telemetry.store.rows import Lease, LeaseRefusal, SaveResult

#: first retry delay after a failed compute; doubles per attempt up to BACKOFF_MAX_MS
BACKOFF_BASE_MS = 1_000
BACKOFF_MAX_MS = 5 * MINUTE_MS

c = telemetry_cache.c


def backoff_ms(attempts: int) -> int:
    """Delay before the next attempt after ``attempts`` consecutive failures (exponential)."""
    return min(BACKOFF_BASE_MS << max(attempts - 1, 0), BACKOFF_MAX_MS)


class SessionTelemetryCacheRepository:
    """The lease state machine of ``telemetry_cache``; stateless, safe to share."""

    async def take_lease(
        self, conn: AsyncConnection, key: TelemetryKey, *, owner: str, now_ms: int, lease_ms: int
    ) -> Lease | LeaseRefusal:
        """Take the lease with one conditional UPDATE: only when it is free or expired and any
        failure backoff has elapsed. A missing row is created first (then the UPDATE again)."""
        expires = now_ms + lease_ms
        take = (
            sa.update(telemetry_cache)
            .where(
                key_clause(key),
                sa.or_(c.lease_owner.is_(None), c.lease_expires_ms <= now_ms),
                sa.or_(c.next_attempt_ms.is_(None), c.next_attempt_ms <= now_ms),
            )
            .values(lease_owner=owner, lease_expires_ms=expires, updated_at_ms=now_ms)
            .returning(
                c.status,
                c.payload.is_not(None).label("has_payload"),
                c.source_watermark,
                c.computed_at_ms,
                c.attempts,
            )
        )
        row = (await conn.execute(take)).first()
        if row is None:
            # Missing (or just inserted by another node, or held): make sure it exists, try again.
            await self._insert_missing(conn, key, now_ms)
            row = (await conn.execute(take)).first()
        if row is not None:
            return Lease(
                owner,
                expires,
                CacheState(row.status),
                bool(row.has_payload),
                row.source_watermark,
                row.computed_at_ms,
                row.attempts,
            )
        refusal = (
            await conn.execute(
                sa.select(c.lease_owner, c.lease_expires_ms, c.next_attempt_ms).where(
                    key_clause(key)
                )
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
            .where(key_clause(key), c.lease_owner == owner)
            .values(lease_expires_ms=now_ms + lease_ms, updated_at_ms=now_ms)
        )
        return result.rowcount == 1

    async def release(
        self, conn: AsyncConnection, key: TelemetryKey, *, owner: str, now_ms: int
    ) -> None:
        """Give the lease back without an outcome (the cache was already fresh)."""
        await conn.execute(
            sa.update(telemetry_cache)
            .where(key_clause(key), c.lease_owner == owner)
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
                .where(key_clause(key))
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
            .where(key_clause(key), c.lease_owner == owner)
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
            .where(key_clause(key), c.lease_owner == owner)
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
