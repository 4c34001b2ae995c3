"""Idempotent writes of samples in the caller's transaction.

Identity is ``(user_id, source, record_id)``, kept unique across the months of a partitioned
table by ``sample_identities`` (docs/partitioning.md). The caller holds the user's row lock (see
``sessions.repository.lock_user``), so no two ingests of one user interleave and new rows can be
bulk-inserted without conflicts; on PostgreSQL they go in with COPY. The caller has made sure
every month written has its partition (``Database.partitions.ensure``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from vitalcast.db.prepared import Prepared
from vitalcast.db.tables import (
    health_samples,
    ingest_requests,
    sample_identities,
    telemetry_cache,
    users,
)
from vitalcast.samples import Sample, WriteCounts
from vitalcast.sessions import changelog
from vitalcast.sessions import repository as session_repository
from vitalcast.sessions.changes import CachedView
from vitalcast.sessions.models import WIDEST_PAD_MS, Session

# Keeps SQLite's IN lists well under its bound-parameter limit.
_LOOKUP_CHUNK = 1_000
_COLUMNS = ("metric", "value", "unit", "start_ms", "end_ms", "device")
#: the columns of a ``sample_identities`` row, in order
IDENTITY_COLUMNS = ("user_id", "source", "record_id", "start_ms")
#: the columns of a new ``health_samples`` row, as ``write_samples`` fills them
_NEW_ROW_COLUMNS = ("user_id", "source", "record_id", *_COLUMNS, "deleted", "change_seq")


def _insert_of(table: sa.Table, columns: Sequence[str]) -> Prepared:
    return Prepared(sa.insert(table).values({name: sa.bindparam(name) for name in columns}))


_INSERT_SAMPLES = _insert_of(health_samples, _NEW_ROW_COLUMNS)
_INSERT_IDENTITIES = _insert_of(sample_identities, IDENTITY_COLUMNS)
_RECORD_REQUEST = _insert_of(
    ingest_requests,
    ("user_id", "request_id", "body_sha256", "status_code", "response", "created_at_ms"),
)
_FIND_REPLAY = Prepared(
    sa.select(
        ingest_requests.c.body_sha256, ingest_requests.c.status_code, ingest_requests.c.response
    ).where(
        ingest_requests.c.user_id == sa.bindparam("user_id"),
        ingest_requests.c.request_id == sa.bindparam("request_id"),
    )
)
_SET_CHANGE_SEQ = Prepared(
    sa.update(users)
    .where(users.c.id == sa.bindparam("user_id"))
    .values(change_seq=sa.bindparam("change_seq"))
)
_CACHED_VIEWS = Prepared(
    sa.select(
        telemetry_cache.c.session_id,
        telemetry_cache.c.window_minutes,
        telemetry_cache.c.resolution,
        telemetry_cache.c.compute_version,
    ).where(telemetry_cache.c.session_id.in_(sa.bindparam("session_ids", expanding=True)))
)
_MARK_STALE = Prepared(
    sa.update(telemetry_cache)
    .where(
        telemetry_cache.c.session_id.in_(sa.bindparam("session_ids", expanding=True)),
        telemetry_cache.c.stale_since_ms.is_(None),
    )
    .values(stale_since_ms=sa.bindparam("now_ms"))
)


@dataclass
class WriteResult(WriteCounts):
    """What one batch did; ``changed_times_ms`` holds old and new start times of every change."""

    deleted: int = 0
    changed_times_ms: list[int] = field(default_factory=list)
    #: the change recorded with the insert when every change was one (PostgreSQL,
    #: ``write_samples``): the sessions it moved and their cached views, as ``record_change``
    #: answers; None: the caller records the change (``record_change``)
    recorded: tuple[list[Session], list[CachedView]] | None = None

    @property
    def changed(self) -> bool:
        return bool(self.inserted or self.updated or self.deleted)


async def find_replay(
    conn: AsyncConnection, user_id: str, request_id: str
) -> tuple[str, int, bytes] | None:
    """(body hash, status, response) stored for an earlier request with this id."""
    rows = await _FIND_REPLAY.rows(conn, {"user_id": user_id, "request_id": request_id})
    if not rows:
        return None
    row = rows[0]
    return row.body_sha256, row.status_code, bytes(row.response)


async def record_request(
    conn: AsyncConnection,
    *,
    user_id: str,
    request_id: str,
    body_sha256: str,
    status_code: int,
    response: bytes,
    now_ms: int,
) -> None:
    await _RECORD_REQUEST.run(
        conn,
        {
            "user_id": user_id,
            "request_id": request_id,
            "body_sha256": body_sha256,
            "status_code": status_code,
            "response": response,
            "created_at_ms": now_ms,
        },
    )


# One probe of the identity's primary key per record id, then one probe of the one month its
# start_ms names: the identities are a MATERIALIZED CTE, so the sample lookup takes their
# start_ms as a parameter and PostgreSQL prunes the other months at run time (a plain join lets
# the planner derive ``record_id = k.record_id`` for the samples and probe every month). Without
# statistics (a new or just bulk-loaded table, before autovacuum's ANALYZE) PostgreSQL otherwise
# matches ``record_id = ANY(...)`` by filtering every row of the user and source, which made
# ingest O(table) per batch. ``OFFSET 0`` keeps each LATERAL subquery from being flattened, so
# its equalities stay one index condition.
_PG_LOOKUP = sa.text(
    """
    WITH ids AS MATERIALIZED (
        SELECT i.record_id, i.start_ms
        FROM unnest(CAST(:record_ids AS text[])) AS k(record_id)
        CROSS JOIN LATERAL (
            SELECT record_id, start_ms FROM sample_identities
            WHERE user_id = :user_id AND source = :source AND record_id = k.record_id
            OFFSET 0
        ) AS i
    )
    SELECT hs.* FROM ids CROSS JOIN LATERAL (
        SELECT * FROM health_samples
        WHERE user_id = :user_id AND source = :source
          AND record_id = ids.record_id AND start_ms = ids.start_ms
        OFFSET 0
    ) AS hs
    """
).columns(*health_samples.c)


_PG_LOOKUP_ONCE = Prepared(_PG_LOOKUP)


# Any: SQLAlchemy types a whole table's select as rows of Any
def _sqlite_lookup() -> sa.Select[Any]:
    i, s = sample_identities.c, health_samples.c
    return (
        sa.select(health_samples)
        .join(
            sample_identities,
            sa.and_(
                s.user_id == i.user_id,
                s.source == i.source,
                s.record_id == i.record_id,
                s.start_ms == i.start_ms,
            ),
        )
        .where(
            i.user_id == sa.bindparam("user_id"),
            i.source == sa.bindparam("source"),
            i.record_id.in_(sa.bindparam("record_ids", expanding=True)),
        )
    )


_SQLITE_LOOKUP = Prepared(_sqlite_lookup())


async def _existing(
    conn: AsyncConnection, user_id: str, identities: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], sa.Row[Any]]:  # Any: rows of health_samples
    """Stored rows for these identities, found through ``sample_identities`` (unique across
    partitions), one query per source (a batch usually has one); SQLite takes chunked IN
    lists, well under its bound-parameter limit."""
    by_source: dict[str, list[str]] = {}
    for source, record_id in identities:
        by_source.setdefault(source, []).append(record_id)
    found: dict[tuple[str, str], sa.Row[Any]] = {}  # Any: as above
    for source, record_ids in by_source.items():
        lookup, chunk = (
            (_PG_LOOKUP_ONCE, len(record_ids))
            if conn.dialect.name == "postgresql"
            else (_SQLITE_LOOKUP, _LOOKUP_CHUNK)
        )
        for offset in range(0, len(record_ids), max(chunk, 1)):
            params = {
                "user_id": user_id,
                "source": source,
                "record_ids": record_ids[offset : offset + chunk],
            }
            for row in await lookup.rows(conn, params):
                found[(row.source, row.record_id)] = row
    return found


def _same(row: Any, sample: Sample) -> bool:  # Any: as above
    return not row.deleted and all(getattr(row, c) == getattr(sample, c) for c in _COLUMNS)


#: a PostgreSQL batch up to this many samples inserts its new ones in one statement
#: (``insert_new_pg``); a larger one (an import) is looked up first and copied in
ONE_STATEMENT_MAX = 500

# A live sync's samples are all new: with the user's lock held, each one's identity is inserted
# unless it exists (the primary key decides, whatever the month), and the sample row of every
# identity inserted goes in with it; when every sample of the batch was new and the batch
# writes nothing else, the change is recorded too (watermarks, change log, staleness clock,
# the cached views read), all in one call of ``vitalcast_ingest_new`` (migration 0008, which
# says how). The lookup, two COPYs and the change's statements it replaces were eight round
# trips per ingest. Samples whose identity existed are answered by nothing here: the caller
# looks them up and compares them as before, and records the change itself.
_PG_INGEST_NEW = Prepared(
    sa.text(
        """
        SELECT * FROM vitalcast_ingest_new(
            CAST(:user_id AS text), CAST(:sources AS text[]), CAST(:record_ids AS text[]),
            CAST(:metrics AS text[]), CAST(:vals AS float8[]), CAST(:units AS text[]),
            CAST(:starts AS bigint[]), CAST(:ends AS bigint[]), CAST(:devices AS text[]),
            CAST(:complete AS boolean), CAST(:all_or_nothing AS boolean),
            CAST(:now_ms AS bigint), CAST(:pad AS bigint), CAST(:merge_ms AS bigint),
            CAST(:request_id AS text), CAST(:body_sha256 AS text), CAST(:status AS integer),
            CAST(:response_head AS bytea)
        )
        """
    ),
    read_only=False,
)


@dataclass(frozen=True, slots=True)
class PendingRequest:
    """An ingest request to record with its answer (``record_request``), whose change_seq is
    known only once the user is locked: ``response_head`` is the answer up to the value of its
    last key, ``change_seq``, and the answer is that head, the new change_seq and ``}``."""

    request_id: str
    body_sha256: str
    status_code: int
    response_head: bytes


@dataclass(frozen=True, slots=True)
class NewSamples:
    """What ``insert_new_pg`` did."""

    #: False: the user does not exist (nothing was written)
    user_found: bool
    #: the user's counter as locked, before this batch moved it (None without a user)
    seq: int | None
    #: False: some sample's identity existed and ``all_or_nothing`` wrote nothing
    written: bool
    #: the identities inserted
    identities: set[tuple[str, str]]
    #: when the change was recorded (every sample new, the batch ``complete``): the sessions
    #: it moved (at their new watermark) and their cached views, as ``record_change`` answers
    recorded: tuple[list[Session], list[CachedView]] | None
    #: (body hash, status, response) stored for an earlier request of the ``request`` id
    #: (``find_replay``); nothing was written
    replay: tuple[str, int, bytes] | None = None


async def insert_new_pg(
    conn: AsyncConnection,
    user_id: str,
    samples: Sequence[Sample],
    *,
    now_ms: int,
    complete: bool,
    all_or_nothing: bool,
    request: PendingRequest | None = None,
) -> NewSamples:
    """Lock the user, insert the samples whose identity is new, move the user's counter if any
    was and, when every one was and the batch is ``complete`` (it writes nothing else), record
    the change, in one statement (``vitalcast_ingest_new``, PostgreSQL). With
    ``all_or_nothing`` a batch with any known identity writes nothing. With a ``request`` whose
    id was recorded already nothing is written and the stored request is answered
    (``NewSamples.replay``); otherwise, when every sample was new, the request is recorded.
    Outside a transaction the call is a whole ingest of new samples, atomic and committed by
    itself."""
    rows = await _PG_INGEST_NEW.rows(
        conn,
        {
            "user_id": user_id,
            "sources": [s.source for s in samples],
            "record_ids": [s.record_id for s in samples],
            "metrics": [s.metric for s in samples],
            "vals": [s.value for s in samples],
            "units": [s.unit for s in samples],
            "starts": [s.start_ms for s in samples],
            "ends": [s.end_ms for s in samples],
            "devices": [s.device for s in samples],
            "complete": complete,
            "all_or_nothing": all_or_nothing,
            "now_ms": now_ms,
            "pad": WIDEST_PAD_MS,
            "merge_ms": changelog.MERGE_MS,
            "request_id": None if request is None else request.request_id,
            "body_sha256": None if request is None else request.body_sha256,
            "status": None if request is None else request.status_code,
            "response_head": None if request is None else request.response_head,
        },
    )
    first = rows[0]
    if first.replay_sha256 is not None:
        replay = (first.replay_sha256, first.replay_status, bytes(first.replay_response))
        return NewSamples(True, first.seq, False, set(), None, replay)
    identities = set(
        zip(first.inserted_sources or (), first.inserted_record_ids or (), strict=True)
    )
    recorded: tuple[list[Session], list[CachedView]] | None = None
    if first.recorded:
        moved_to = first.seq + 1
        touched: list[Session] = []
        views: list[CachedView] = []
        for row in rows:
            if row.id is None:
                continue
            touched.append(replace(Session.from_row(row), source_watermark=moved_to))
            views.extend(
                CachedView(row.id, *view)
                for view in zip(
                    row.windows or (), row.resolutions or (), row.versions or (), strict=True
                )
            )
        recorded = (touched, views)
    return NewSamples(first.user_found, first.seq, first.written, identities, recorded)


# ``start_ms`` beside the id: on PostgreSQL it names the one partition the row is in. Built
# once: an ingest of new samples only (a live sync) uses it not at all.
_THIS_ROW = sa.and_(
    health_samples.c.id == sa.bindparam("row_id"),
    health_samples.c.start_ms == sa.bindparam("old_start_ms"),
)


async def write_samples(
    conn: AsyncConnection,
    user_id: str,
    samples: Sequence[Sample],
    deletions: Sequence[tuple[str, str]],
    *,
    change_seq: int,
    now_ms: int | None = None,
) -> WriteResult:
    """Insert new samples, update changed ones, soft-delete ``deletions``; count each outcome.

    ``change_seq`` is the value the user's counter will take if anything changes; rows written
    carry it so a later reader can tell which ingest wrote them. With ``now_ms`` a PostgreSQL
    batch of new samples also moves the counter in the statement that inserts them and, when
    they were all new and nothing is deleted, records the change there as ``record_change``
    would (``WriteResult.recorded``).
    """
    result = WriteResult()
    if (
        samples
        and now_ms is not None
        and conn.dialect.name == "postgresql"
        and len(samples) <= ONE_STATEMENT_MAX
    ):
        new = await insert_new_pg(
            conn, user_id, samples, now_ms=now_ms, complete=not deletions, all_or_nothing=False
        )
        if new.seq is None or new.seq + 1 != change_seq:
            # the caller holds the user's lock and passed its counter + 1
            raise AssertionError("write_samples: change_seq is not the locked counter + 1")
        inserted = new.identities
        result.inserted = len(inserted)
        result.changed_times_ms = [
            s.start_ms for s in samples if (s.source, s.record_id) in inserted
        ]
        samples = [s for s in samples if (s.source, s.record_id) not in inserted]
        if not samples and not deletions:
            # every change was an insert, and the statement recorded it
            result.recorded = new.recorded
            return result
    existing = await _existing(
        conn, user_id, [(s.source, s.record_id) for s in samples] + list(deletions)
    )
    new_rows: list[dict[str, object]] = []
    updates: list[dict[str, object]] = []
    moved: list[dict[str, object]] = []
    for sample in samples:
        row = existing.get((sample.source, sample.record_id))
        if row is None:
            new_rows.append(
                {
                    "user_id": user_id,
                    "source": sample.source,
                    "record_id": sample.record_id,
                    "metric": sample.metric,
                    "value": sample.value,
                    "unit": sample.unit,
                    "start_ms": sample.start_ms,
                    "end_ms": sample.end_ms,
                    "device": sample.device,
                    "deleted": False,
                    "change_seq": change_seq,
                }
            )
            result.changed_times_ms.append(sample.start_ms)
        elif _same(row, sample):
            result.unchanged += 1
        else:
            updates.append(
                {"row_id": row.id, "old_start_ms": row.start_ms}
                | {c: getattr(sample, c) for c in _COLUMNS}
            )
            if row.start_ms != sample.start_ms:
                moved.append(
                    {
                        "k_source": sample.source,
                        "k_record_id": sample.record_id,
                        "new_start_ms": sample.start_ms,
                    }
                )
            if not row.deleted:
                result.changed_times_ms.append(row.start_ms)
            result.changed_times_ms.append(sample.start_ms)
    deleted: list[dict[str, object]] = []
    for identity in deletions:
        row = existing.get(identity)
        if row is not None and not row.deleted:
            deleted.append({"row_id": row.id, "old_start_ms": row.start_ms})
            result.changed_times_ms.append(row.start_ms)
    result.inserted += len(new_rows)
    result.updated = len(updates)
    result.deleted = len(deleted)
    if new_rows:
        await _insert(conn, new_rows)
    if updates:
        # A new start_ms in another month moves the row to that month's partition (PostgreSQL
        # does it as a delete and an insert); its identity row follows below.
        if conn.dialect.name == "postgresql":
            await conn.execute(_pg_update(updates, change_seq))
        else:
            await conn.execute(
                sa.update(health_samples)
                .where(_THIS_ROW)
                .values(
                    **{c: sa.bindparam(c) for c in _COLUMNS}, deleted=False, change_seq=change_seq
                ),
                updates,
            )
    if moved:
        i = sample_identities.c
        await conn.execute(
            sa.update(sample_identities)
            .where(
                i.user_id == user_id,
                i.source == sa.bindparam("k_source"),
                i.record_id == sa.bindparam("k_record_id"),
            )
            .values(start_ms=sa.bindparam("new_start_ms")),
            moved,
        )
    if deleted:
        await conn.execute(
            sa.update(health_samples).where(_THIS_ROW).values(deleted=True, change_seq=change_seq),
            deleted,
        )
    return result


# One statement for a batch of updates: each row is reached by (id, its old start_ms), so only
# its month is probed (run-time pruning), and the plan and the locks on the months are taken
# once per batch rather than once per row as with executemany.
_PG_UPDATE = sa.text(
    """
    UPDATE health_samples AS hs
    SET metric = v.metric, value = v.value, unit = v.unit, start_ms = v.start_ms,
        end_ms = v.end_ms, device = v.device, deleted = false, change_seq = :change_seq
    FROM unnest(
        CAST(:ids AS bigint[]), CAST(:old_starts AS bigint[]), CAST(:metrics AS text[]),
        CAST(:vals AS float8[]), CAST(:units AS text[]), CAST(:starts AS bigint[]),
        CAST(:ends AS bigint[]), CAST(:devices AS text[])
    ) AS v(id, old_start_ms, metric, value, unit, start_ms, end_ms, device)
    WHERE hs.id = v.id AND hs.start_ms = v.old_start_ms
    """
)


def _pg_update(updates: Sequence[dict[str, object]], change_seq: int) -> sa.TextClause:
    return _PG_UPDATE.bindparams(
        change_seq=change_seq,
        ids=[u["row_id"] for u in updates],
        old_starts=[u["old_start_ms"] for u in updates],
        metrics=[u["metric"] for u in updates],
        vals=[u["value"] for u in updates],
        units=[u["unit"] for u in updates],
        starts=[u["start_ms"] for u in updates],
        ends=[u["end_ms"] for u in updates],
        devices=[u["device"] for u in updates],
    )


async def _insert(conn: AsyncConnection, rows: list[dict[str, object]]) -> None:
    """The samples and their identity rows, in the caller's transaction: the identity's primary
    key refuses a second row of the same (user, source, record_id) whatever its month."""
    identities = [(r["user_id"], r["source"], r["record_id"], r["start_ms"]) for r in rows]
    if conn.dialect.name == "postgresql":
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        columns = list(rows[0])
        await driver.copy_records_to_table(  # type: ignore[union-attr]
            health_samples.name,
            records=[tuple(r[c] for c in columns) for r in rows],
            columns=columns,
        )
        await driver.copy_records_to_table(  # type: ignore[union-attr]
            sample_identities.name, records=identities, columns=IDENTITY_COLUMNS
        )
    else:
        await _INSERT_SAMPLES.run(conn, rows)
        await _INSERT_IDENTITIES.run(
            conn, [dict(zip(IDENTITY_COLUMNS, k, strict=True)) for k in identities]
        )


async def set_change_seq(conn: AsyncConnection, user_id: str, change_seq: int) -> None:
    await _SET_CHANGE_SEQ.run(conn, {"user_id": user_id, "change_seq": change_seq})


async def mark_caches_stale(conn: AsyncConnection, session_ids: Sequence[str], now_ms: int) -> None:
    """Remember when the first change after each cached payload arrived (freshness-lag metric)."""
    await _MARK_STALE.run(conn, {"session_ids": list(session_ids), "now_ms": now_ms})


async def record_change(
    conn: AsyncConnection,
    user_id: str,
    seq: int,
    changed_times_ms: Sequence[int],
    *,
    now_ms: int,
) -> tuple[list[Session], list[CachedView]]:
    """Stamp change ``seq`` (the user's counter, locked by the caller) into every session whose
    widest window holds one of ``changed_times_ms``; the sessions it moved and their cached
    views (what the change listener recomputes).

    Every writer of samples (ingest, range deletion) goes through here, so a change moves the
    counter, the watermarks and the staleness clock of the cached views together.
    """
    if conn.dialect.name == "postgresql":
        return await _record_change_pg(conn, user_id, seq, changed_times_ms, now_ms=now_ms)
    await set_change_seq(conn, user_id, seq)
    touched = await session_repository.bump_watermarks(
        conn, user_id, change_seq=seq, changed_times_ms=changed_times_ms, now_ms=now_ms
    )
    if not touched:
        return touched, []
    ids = [s.id for s in touched]
    await mark_caches_stale(conn, ids, now_ms)
    views = [CachedView(*row) for row in await _CACHED_VIEWS.rows(conn, {"session_ids": ids})]
    return touched, views


# On PostgreSQL a change is two statements: the user's counter moves as the candidate sessions
# are read (the user's lock, taken earlier in the transaction, keeps their watermarks as read),
# then the watermarks, the change log, the staleness clock and the read of the cached views go
# in one statement of data-modifying CTEs (each sees the snapshot before the others, and none
# reads what another writes). These were six round trips.
_PG_SEQ_AND_CANDIDATES = Prepared(
    session_repository.WIDEST_WINDOW_HOLDS.add_cte(
        sa.update(users)
        .where(users.c.id == sa.bindparam("user_id"))
        .values(change_seq=sa.bindparam("change_seq"))
        .cte("seq")
    ),
    read_only=False,
)
_PG_MOVE = Prepared(
    sa.text(
        """
        WITH moved AS (
            UPDATE sessions SET source_watermark = CAST(:change_seq AS bigint)
            WHERE id = ANY(CAST(:ids AS text[]))
        ), logged AS (
            INSERT INTO session_changes (session_id, change_seq, prev_seq, ranges)
            SELECT id, CAST(:change_seq AS bigint), prev, ranges
            FROM unnest(CAST(:ids AS text[]), CAST(:prevs AS bigint[]), CAST(:ranges AS bytea[]))
                AS e(id, prev, ranges)
        ), stale AS (
            UPDATE telemetry_cache SET stale_since_ms = CAST(:now_ms AS bigint)
            WHERE session_id = ANY(CAST(:ids AS text[])) AND stale_since_ms IS NULL
        )
        SELECT session_id, window_minutes, resolution, compute_version FROM telemetry_cache
        WHERE session_id = ANY(CAST(:ids AS text[]))
        """
    ).columns(
        telemetry_cache.c.session_id,
        telemetry_cache.c.window_minutes,
        telemetry_cache.c.resolution,
        telemetry_cache.c.compute_version,
    ),
    read_only=False,
)


async def _record_change_pg(
    conn: AsyncConnection,
    user_id: str,
    seq: int,
    changed_times_ms: Sequence[int],
    *,
    now_ms: int,
) -> tuple[list[Session], list[CachedView]]:
    """``record_change`` in two round trips (see ``_PG_SEQ_AND_CANDIDATES``)."""
    times = sorted(set(changed_times_ms))
    if not times:
        await set_change_seq(conn, user_id, seq)
        return [], []
    candidates = await _PG_SEQ_AND_CANDIDATES.rows(
        conn,
        session_repository.widest_window_params(user_id, times, now_ms) | {"change_seq": seq},
    )
    touched, entries = session_repository.touched_by(
        candidates, times, change_seq=seq, now_ms=now_ms
    )
    if not touched:
        return [], []
    rows = await _PG_MOVE.rows(
        conn,
        {
            "change_seq": seq,
            "now_ms": now_ms,
            "ids": [entry.session_id for entry in entries],
            "prevs": [entry.prev_seq for entry in entries],
            "ranges": [changelog.packed_ranges(entry) for entry in entries],
        },
    )
    views = [CachedView(*row) for row in rows]
    return [replace(s, source_watermark=seq) for s in touched], views
