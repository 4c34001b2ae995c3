"""Raw-sample retention (``VITALCAST_RAW_RETENTION_DAYS``): samples older than the limit go,
once a day in every server and on ``vitalcast retention run``.

Views are kept: before any sample a session's windows may show goes, the session is archived
(``sessions.archived_at_ms``). An archived session's cached views are served as they are, byte
for byte, and never recomputed: its watermark no longer moves (``bump_watermarks`` leaves it
out), a view it never had is ``RAW_EXPIRED`` rather than computed from what is left, and its
raw exports answer 410 ``RAW_EXPIRED`` (the bucket CSV is made from the kept payload and keeps
working). A session is archived once the widest window any request may ask for reaches before
the limit, so archiving always comes first, and a run cut anywhere is run again safely.

On PostgreSQL the months that ended before the limit are detached and dropped whole
(``db.partitions``), identity rows with them; what is left (the month the limit falls in, and
every row on SQLite) is deleted in batches. Inserts of today go on meanwhile: a month is
detached concurrently, and the batches are short transactions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from vitalcast.clock import Clock
from vitalcast.db.engine import Database
from vitalcast.db.tables import health_samples, sample_identities, sessions
from vitalcast.observability import get_logger
from vitalcast.sessions.models import WIDEST_PAD_MS

log = get_logger(__name__)

DAY_MS = 86_400_000
#: rows deleted per transaction when no partition can be dropped
BATCH_ROWS = 10_000
#: identity keys per DELETE (four parameters each: well under SQLite's bound-parameter limit)
_KEYS_PER_STATEMENT = 2_000
#: the purge runs this often in a server
INTERVAL_S = 86_400.0


@dataclass(frozen=True, slots=True)
class RetentionRun:
    """What one run did."""

    cutoff_ms: int
    sessions_archived: int
    samples_deleted: int
    partitions_dropped: int


#: drops whole partitions older than a cutoff; the number dropped (None: not partitioned)
PartitionDropper = Callable[[int], Awaitable[int | None]]


class RetentionService:
    """Archives the sessions that reach into expired time, then removes the expired samples."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        days: int,
        batch_rows: int = BATCH_ROWS,
        drop_partitions: PartitionDropper | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._days = days
        self._batch_rows = batch_rows
        self._drop_partitions = drop_partitions or db.partitions.drop_before

    async def run(self) -> RetentionRun:
        now = self._clock.now_ms()
        cutoff = now - self._days * DAY_MS
        async with self._db.write() as conn:
            archived = await conn.execute(
                sa.update(sessions)
                .where(
                    sessions.c.archived_at_ms.is_(None),
                    sessions.c.start_ms - WIDEST_PAD_MS < cutoff,
                )
                .values(archived_at_ms=now)
            )
        dropped = await self._drop_partitions(cutoff) or 0
        deleted = 0
        while removed := await self._db.unit(
            lambda conn: self._delete_batch(conn, cutoff), write=True
        ):
            deleted += removed
        done = RetentionRun(cutoff, archived.rowcount, deleted, dropped)
        log.info(
            "retention_run",
            cutoff_ms=cutoff,
            sessions_archived=done.sessions_archived,
            samples_deleted=deleted,
            partitions_dropped=dropped,
        )
        return done

    async def _delete_batch(self, conn: AsyncConnection, cutoff: int) -> int:
        """Up to ``batch_rows`` expired samples and their identity rows (what is left of them
        once whole months are dropped: the month the cutoff falls in); the samples removed."""
        c, i = health_samples.c, sample_identities.c
        expired = (
            await conn.execute(
                sa.select(c.id, c.user_id, c.source, c.record_id, c.start_ms)
                .where(c.start_ms < cutoff)
                .limit(self._batch_rows)
            )
        ).all()
        if not expired:
            return 0
        for offset in range(0, len(expired), _KEYS_PER_STATEMENT):
            keys = [
                (r.user_id, r.source, r.record_id, r.start_ms)
                for r in expired[offset : offset + _KEYS_PER_STATEMENT]
            ]
            await conn.execute(
                sa.delete(sample_identities).where(
                    sa.tuple_(i.user_id, i.source, i.record_id, i.start_ms).in_(keys)
                )
            )
        # ``start_ms < cutoff`` beside the ids: on PostgreSQL only the expired months are probed.
        result = await conn.execute(
            sa.delete(health_samples).where(c.id.in_([r.id for r in expired]), c.start_ms < cutoff)
        )
        return int(result.rowcount)


class DailyRetention:
    """Runs the retention once at start and then every ``interval_s`` in a server, on a fixed
    schedule: the next run is due ``interval_s`` after the start of the one before, however
    long that one took (so the runs do not drift later day by day)."""

    def __init__(
        self, service: RetentionService, clock: Clock, *, interval_s: float = INTERVAL_S
    ) -> None:
        self._service = service
        self._clock = clock
        self._interval_ms = int(interval_s * 1000)
        self._task: asyncio.Task[None] | None = None
        #: runs finished since start (failed ones included)
        self.runs = 0
        #: what the last successful run did
        self.last: RetentionRun | None = None
        #: when the next run is due (epoch ms), once the first has started
        self.next_run_ms: int | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            self.next_run_ms = self._clock.now_ms() + self._interval_ms
            try:
                self.last = await self._service.run()
            except Exception as exc:
                log.error("retention_failed", error_type=type(exc).__name__)
            self.runs += 1
            log.info("retention_next_run", next_run_ms=self.next_run_ms)
            await asyncio.sleep(max(self.next_run_ms - self._clock.now_ms(), 0) / 1000)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
