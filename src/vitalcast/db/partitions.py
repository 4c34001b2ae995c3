"""Monthly partitions of ``health_samples`` on PostgreSQL (docs/partitioning.md).

There is no DEFAULT partition: a row whose month has no partition is refused by PostgreSQL
("no partition of relation found for row"), so every writer makes sure of the months it writes
first (``ensure``). Creating a month whose rows sit in a DEFAULT partition would mean scanning
and moving them under a lock; without one, creating a month costs an empty table. Months ahead
are created at start and daily by servers and workers (``lifecycle.partitions``), months in the past
on demand (an import of years of history), and retention drops whole months
(``drop_before``).

A new month is created as a plain table and then attached: ``ATTACH PARTITION`` takes only a
SHARE UPDATE EXCLUSIVE lock on the parent, so inserts and reads of other months go on while it
runs (``CREATE TABLE … PARTITION OF`` would take ACCESS EXCLUSIVE). Expired months are detached
``CONCURRENTLY`` for the same reason, then their identity rows are deleted and the table dropped.
On SQLite, and on a PostgreSQL database whose table is not partitioned, every call is a no-op.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

PARENT = "health_samples"
IDENTITIES = "sample_identities"
_PREFIX = "health_samples_p"
_NAME = re.compile(rf"^{_PREFIX}(\d{{4}})_(\d{{2}})$")
#: serialises every creation and drop of a month across processes (pg_advisory_xact_lock key)
_LOCK_KEY = 0x7663_7061_7274  # "vcpart"
DAY_MS = 86_400_000
#: months created ahead of the current one by default
AHEAD = 3
#: PostgreSQL's answer to a row whose month has no partition (check_violation)
NO_PARTITION_SQLSTATE = "23514"


@dataclass(frozen=True, order=True, slots=True)
class Month:
    """A calendar month in UTC: one partition, ``[start_ms, end_ms)``."""

    year: int
    month: int

    @classmethod
    def of_ms(cls, ms: int) -> Month:
        moment = datetime.fromtimestamp(ms / 1000, UTC)
        return cls(moment.year, moment.month)

    @classmethod
    def of_name(cls, name: str) -> Month | None:
        found = _NAME.match(name)
        return None if found is None else cls(int(found[1]), int(found[2]))

    def next(self) -> Month:
        return Month(self.year + self.month // 12, self.month % 12 + 1)

    @property
    def start_ms(self) -> int:
        return int(datetime(self.year, self.month, 1, tzinfo=UTC).timestamp() * 1000)

    @property
    def end_ms(self) -> int:
        return self.next().start_ms

    @property
    def name(self) -> str:
        return f"{_PREFIX}{self.year:04d}_{self.month:02d}"


def months_of(times_ms: Iterable[int]) -> set[Month]:
    """The months of these moments (converted once per distinct day: a batch spans few)."""
    return {Month.of_ms(day * DAY_MS) for day in {t // DAY_MS for t in times_ms}}


def is_missing_partition(error: BaseException) -> bool:
    """Whether ``error`` is PostgreSQL refusing a row because its month has no partition."""
    for candidate in (error, getattr(error, "orig", None)):
        # asyncpg's own error (COPY goes to the driver) or SQLAlchemy's wrapping of it
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if code == NO_PARTITION_SQLSTATE and "no partition" in str(candidate):
            return True
    return False


async def is_partitioned(conn: AsyncConnection) -> bool:
    """Whether ``health_samples`` is a partitioned table here (never on SQLite)."""
    if conn.dialect.name != "postgresql":
        return False
    found = await conn.scalar(
        sa.text(
            "SELECT c.relkind = 'p' FROM pg_class c WHERE c.oid = to_regclass(:parent)"
        ).bindparams(parent=PARENT)
    )
    return bool(found)


async def attached_months(conn: AsyncConnection) -> set[Month]:
    """The months attached to ``health_samples`` (a detach still pending counts as gone)."""
    rows = await conn.scalars(
        sa.text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass(:parent) AND NOT i.inhdetachpending"
        ).bindparams(parent=PARENT)
    )
    return {m for name in rows if (m := Month.of_name(name)) is not None}


async def _lock(conn: AsyncConnection) -> None:
    await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)").bindparams(key=_LOCK_KEY))


async def create_months(conn: AsyncConnection, months: Iterable[Month]) -> set[Month]:
    """Attach a partition for each of ``months`` that has none (in the caller's transaction,
    serialised with every other creator and dropper); the months created."""
    await _lock(conn)
    existing = await attached_months(conn)
    leftovers = await _detached_tables(conn)
    created: set[Month] = set()
    for month in sorted(set(months) - existing):
        name = month.name
        if month in leftovers:
            # What an interrupted drop left holds expired rows: finish the drop, never reuse.
            await conn.execute(_delete_identities_of(month))
            await conn.execute(sa.text(f'DROP TABLE "{name}"'))
        await conn.execute(
            sa.text(
                f'CREATE TABLE "{name}" (LIKE {PARENT} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)'
            )
        )
        await conn.execute(
            sa.text(
                f'ALTER TABLE {PARENT} ATTACH PARTITION "{name}" '
                f"FOR VALUES FROM ({month.start_ms}) TO ({month.end_ms})"
            )
        )
        created.add(month)
    return created


class SamplePartitions:
    """One process's view of the months that exist, so that an ingest whose months are known
    costs no query; ``ensure`` creates what is missing in a short transaction of its own, which
    must run before the writer's transaction (that one holds locks on the parent that the
    attach would wait for)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._known: set[Month] = set()
        self._partitioned: bool | None = None
        self._lock = asyncio.Lock()

    async def partitioned(self) -> bool:
        if self._partitioned is None:
            if self._engine.dialect.name != "postgresql":
                self._partitioned = False
            else:
                async with self._engine.connect() as conn:
                    self._partitioned = await is_partitioned(conn)
        return self._partitioned

    async def ensure(self, times_ms: Iterable[int]) -> set[Month]:
        """Every month of ``times_ms`` has its partition (no-op where nothing is partitioned);
        the months this call created."""
        if self._partitioned is False:
            return set()
        wanted = months_of(times_ms) - self._known
        if not wanted or not await self.partitioned():
            return set()
        async with self._lock:
            wanted -= self._known
            if not wanted:
                return set()
            async with self._engine.begin() as conn:
                created = await create_months(conn, wanted)
                existing = await attached_months(conn)
            self._known |= existing
        return created

    async def ensure_ahead(self, now_ms: int, ahead: int = AHEAD) -> set[Month]:
        """This month and the ``ahead`` months after it; the months created."""
        month = Month.of_ms(now_ms)
        months = [month]
        for _ in range(ahead):
            month = month.next()
            months.append(month)
        return await self.ensure(m.start_ms for m in months)

    def forget(self) -> None:
        """Drop what this process believes exists (another process dropped a month)."""
        self._known.clear()

    async def drop_before(self, cutoff_ms: int) -> int | None:
        """Detach and drop every month that ends at or before ``cutoff_ms``, with the identity
        rows of its samples; the months dropped (None: nothing is partitioned here). A drop
        cut anywhere is finished by the next call."""
        if not await self.partitioned():
            return None
        async with self._engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await _finish_pending_detaches(conn)
            expired = sorted(m for m in await attached_months(conn) if m.end_ms <= cutoff_ms)
            for month in expired:
                # CONCURRENTLY: inserts and reads of the other months are never blocked.
                await conn.execute(
                    sa.text(f'ALTER TABLE {PARENT} DETACH PARTITION "{month.name}" CONCURRENTLY')
                )
            leftovers = await _detached_tables(conn)
        self._known -= set(expired)
        dropped = 0
        for month in sorted(leftovers):
            if month.end_ms > cutoff_ms:
                continue
            async with self._engine.begin() as conn:
                await _lock(conn)
                # Under the lock: a writer may have created the month anew meanwhile (a sample
                # older than the cutoff); that one is attached, and stays for the next run.
                if month not in await _detached_tables(conn):
                    continue
                await conn.execute(_delete_identities_of(month))
                await conn.execute(sa.text(f'DROP TABLE "{month.name}"'))
            dropped += 1
        return dropped


def _delete_identities_of(month: Month) -> sa.TextClause:
    """The identity rows that point into the detached table of ``month`` (an identity that
    moved to another month since points elsewhere and stays)."""
    return sa.text(
        f'DELETE FROM {IDENTITIES} AS i USING "{month.name}" AS hs '
        "WHERE i.user_id = hs.user_id AND i.source = hs.source "
        "AND i.record_id = hs.record_id AND i.start_ms = hs.start_ms"
    )


async def _finish_pending_detaches(conn: AsyncConnection) -> None:
    """A ``DETACH … CONCURRENTLY`` cut by a crash leaves its partition pending: finish it."""
    pending = await conn.scalars(
        sa.text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass(:parent) AND i.inhdetachpending"
        ).bindparams(parent=PARENT)
    )
    for name in list(pending):
        await conn.execute(sa.text(f'ALTER TABLE {PARENT} DETACH PARTITION "{name}" FINALIZE'))


async def _detached_tables(conn: AsyncConnection) -> set[Month]:
    """Tables named like a month that are no partition (detached, not yet dropped)."""
    names = await conn.scalars(
        sa.text(
            "SELECT relname FROM pg_class WHERE relkind = 'r' AND NOT relispartition "
            "AND relnamespace = current_schema()::regnamespace AND relname LIKE :pattern"
        ).bindparams(pattern=f"{_PREFIX}%")
    )
    return {m for name in names if (m := Month.of_name(name)) is not None}
