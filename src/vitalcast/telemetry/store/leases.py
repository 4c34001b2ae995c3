"""``SessionTelemetryCacheRepository``: a cache row's compute lease and its outcomes.

A row is keyed (session, window, resolution, compute version). Its ``status`` is the kind of the
stored payload (ready / no_data), ``computing`` before the first outcome, or ``failed`` when the
last attempt failed and there is no payload to keep. A failure never drops a payload: it records
``error_code``, ``attempts`` and ``next_attempt_ms`` next to it.

Only the holder of an unexpired lease computes. Taking it is the *claim*: one conditional UPDATE
for every key of a batch that also returns what each compute starts from (the session row with
its watermark, the stored partials and history), so a compute has no read of its own before
the GROUP BY. Saving is one compare-and-set UPDATE for the whole batch, conditional on each row
still being under our lease, so a slow compute whose lease was taken over cannot overwrite the
newer result. The reads other callers need are in ``queries``. Every method runs in the
caller's transaction (``db.write()`` or a unit) and commits nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from vitalcast.clock import MINUTE_MS
from vitalcast.db.prepared import Prepared
from vitalcast.db.tables import session_changes, sessions, telemetry_cache
from vitalcast.sessions import changelog
from vitalcast.sessions.models import Session, SessionStatus
from vitalcast.telemetry.compute.aggregate import tail_rows_sql
from vitalcast.telemetry.compute.results import ComputedTelemetry, StoredView, Tail, TailRows
from vitalcast.telemetry.keys import CacheState, TelemetryKey
from vitalcast.telemetry.store.queries import key_clause
from vitalcast.telemetry.store.rows import Claim, Lease, LeaseRefusal

#: first retry delay after a failed compute; doubles per attempt up to BACKOFF_MAX_MS
BACKOFF_BASE_MS = 1_000
BACKOFF_MAX_MS = 5 * MINUTE_MS

c = telemetry_cache.c
s = sessions.c

#: a cache row's primary key
KeyTuple = tuple[str, int, str, int]
_KEY_COLUMNS = (c.session_id, c.window_minutes, c.resolution, c.compute_version)
#: the session columns a claim returns (``Session``'s fields but its id, the row's session_id)
_SESSION_FIELDS = (
    "user_id",
    "client_session_id",
    "status",
    "start_ms",
    "end_ms",
    "notes",
    "source_watermark",
    "archived_at_ms",
)


def key_tuple(key: TelemetryKey) -> KeyTuple:
    return (key.session_id, key.window_minutes, key.resolution.value, key.compute_version)


def keys_clause(keys: Sequence[TelemetryKey]) -> sa.ColumnElement[bool]:
    """The rows of ``keys`` (one tuple IN, whatever their number)."""
    return sa.tuple_(*_KEY_COLUMNS).in_([key_tuple(k) for k in keys])


#: the columns of a save's VALUES relation: (name, type)
_SAVED = (
    ("session_id", "VARCHAR(36)"),
    ("window_minutes", "INTEGER"),
    ("resolution", "VARCHAR(8)"),
    ("compute_version", "INTEGER"),
    ("status", "VARCHAR(16)"),
    ("payload", "{blob}"),
    ("source_watermark", "BIGINT"),
    ("computed_at_ms", "BIGINT"),
    ("compute_ms", "INTEGER"),
    ("raw_sample_count", "BIGINT"),
    ("partials", "{blob}"),
    ("history", "{blob}"),
)
_BLOB = {"postgresql": "BYTEA", "sqlite": "BLOB"}
# The compare-and-set save of a batch. Text, built once per (dialect, rows): SQLAlchemy does not
# cache a statement over a multi-row VALUES construct, and compiling it again for every save
# cost more than the save. ``stale_since_ms`` is cleared when the saved watermark is the
# session's current one; else it restarts at the read (a change arrived since), unless it was
# set after the read started.
_SAVE = """
WITH saved({columns}) AS (VALUES {rows})
UPDATE telemetry_cache SET
  status = saved.status, payload = saved.payload, source_watermark = saved.source_watermark,
  computed_at_ms = saved.computed_at_ms, compute_ms = saved.compute_ms,
  raw_sample_count = saved.raw_sample_count, partials = saved.partials, history = saved.history,
  lease_owner = NULL, lease_expires_ms = NULL, attempts = 0, next_attempt_ms = NULL,
  error_code = NULL, updated_at_ms = :now,
  stale_since_ms = CASE
    WHEN COALESCE((SELECT sessions.source_watermark FROM sessions
                   WHERE sessions.id = telemetry_cache.session_id), 0) <= saved.source_watermark
      THEN NULL
    WHEN telemetry_cache.stale_since_ms IS NULL
         OR telemetry_cache.stale_since_ms <= :read_started THEN :read_started
    ELSE telemetry_cache.stale_since_ms END
FROM saved
WHERE telemetry_cache.session_id = saved.session_id
  AND telemetry_cache.window_minutes = saved.window_minutes
  AND telemetry_cache.resolution = saved.resolution
  AND telemetry_cache.compute_version = saved.compute_version
  AND telemetry_cache.lease_owner = :owner
RETURNING telemetry_cache.session_id, telemetry_cache.window_minutes,
  telemetry_cache.resolution, telemetry_cache.compute_version
"""
_SAVES: dict[tuple[str, int], Prepared] = {}


def _save_statement(dialect: str, n_rows: int) -> Prepared:
    statement = _SAVES.get((dialect, n_rows))
    if statement is None:
        blob = _BLOB[dialect]
        rows = ", ".join(
            "("
            + ", ".join(f"CAST(:{name}{i} AS {t.format(blob=blob)})" for name, t in _SAVED)
            + ")"
            for i in range(n_rows)
        )
        text = _SAVE.format(columns=", ".join(name for name, _t in _SAVED), rows=rows)
        statement = _SAVES[(dialect, n_rows)] = Prepared(sa.text(text))
    return statement


_CLAIMS: dict[tuple[str, bool], Prepared] = {}
#: the columns of the relation a PostgreSQL claim is bound as, one array parameter each: a key,
#: then its guessed tail (``Tail``; NULL: none) as ``aggregate.tail_rows_sql`` reads it
_WANTED = (
    ("session_id", sa.String),
    ("window_minutes", sa.Integer),
    ("resolution", sa.String),
    ("compute_version", sa.Integer),
    ("lo", sa.BigInteger),
    ("hi", sa.BigInteger),
    ("window_start", sa.BigInteger),
    ("window_end", sa.BigInteger),
    ("bucket_ms", sa.BigInteger),
    ("session_start", sa.BigInteger),
    ("session_end", sa.BigInteger),
)
_NO_TAIL = (None,) * 7


def _tail_values(tail: Tail | None) -> tuple[int | None, ...]:
    if tail is None:
        return _NO_TAIL
    window = tail.window
    session_end = window.end_ms if window.session_end_ms is None else window.session_end_ms
    return (
        tail.lo,
        tail.hi,
        window.start_ms,
        window.end_ms,
        tail.bucket_ms,
        window.session_start_ms,
        session_end,
    )


def _claim_statement(dialect: str, tails: bool) -> Prepared:
    """The claim (see ``claim``), built once per dialect and ``tails`` (PostgreSQL: whether it
    reads the GROUP BY rows of guessed tails): bound are the keys (on PostgreSQL, with their
    tails, as one relation of array parameters: one statement text whatever the batch's size),
    the owner, now and the lease's expiry."""
    statement = _CLAIMS.get((dialect, tails))
    if statement is not None:
        return statement
    now = sa.bindparam("now", type_=sa.BigInteger)
    if dialect == "postgresql":
        want = (
            sa.func.unnest(
                *(sa.bindparam(name, type_=postgresql.ARRAY(type_)) for name, type_ in _WANTED)
            )
            .table_valued(*(name for name, _t in _WANTED))
            .render_derived(name="want")
        )
        session_columns: list[Any] = [  # Any: columns of several types
            getattr(s, name).label(f"s_{name}") for name in _SESSION_FIELDS
        ]
        # The change-log entries an incremental compute walks, from the stored payload's
        # watermark to the session's, read with the claim from the same snapshot (a statement
        # of their own was a round trip per batch; ``read_views`` then reads none).
        log = session_changes.c
        after_stored = sa.and_(
            log.session_id == c.session_id,
            log.change_seq > c.source_watermark,
            log.change_seq <= s.source_watermark,
        )
        # One subquery, one scan of the entries: an array of (seq, prev, ranges) rows, which
        # asyncpg hands over as tuples.
        entry = sa.func.row(log.change_seq, log.prev_seq, log.ranges)
        session_columns.append(
            sa.select(sa.func.array_agg(postgresql.aggregate_order_by(entry, log.change_seq)))
            .where(after_stored)
            .scalar_subquery()
            .label("log_entries")
        )
        # The GROUP BY rows of the view's guessed tail, from the statement's snapshot: a live
        # update whose plan the tail covers needs no GROUP BY of its own (a round trip less,
        # ``incremental.guess_tails``). NULL, and not even the subquery runs, without a guess or
        # when nothing was logged since the stored payload (a live tick); an empty array when
        # the tail holds no sample.
        if tails:
            tail_rows = tail_rows_sql("want", "sessions.user_id")
            session_columns.append(
                sa.literal_column(
                    "CASE WHEN want.lo IS NULL"
                    " OR sessions.source_watermark = telemetry_cache.source_watermark THEN NULL"
                    f" ELSE COALESCE({tail_rows}, '{{}}') END"
                ).label("tail_rows")
            )
        joined: list[sa.ColumnElement[bool]] = [
            s.id == c.session_id,
            *(getattr(want.c, column.name) == column for column in _KEY_COLUMNS),
        ]
        wanted: sa.ColumnElement[bool] = sa.true()
    else:
        # SQLite's RETURNING may not name the tables of UPDATE … FROM: a subquery each
        session_columns = [
            sa.select(getattr(s, name))
            .where(s.id == c.session_id)
            .scalar_subquery()
            .label(f"s_{name}")
            for name in _SESSION_FIELDS
        ]
        joined = []
        keys = sa.bindparam(
            "keys",
            expanding=True,
            type_=sa.TupleType(sa.String(), sa.Integer(), sa.String(), sa.Integer()),
        )
        wanted = sa.tuple_(*_KEY_COLUMNS).in_(keys)
    statement = _CLAIMS[(dialect, tails)] = Prepared(
        sa.update(telemetry_cache)
        .where(
            wanted,
            *joined,
            sa.or_(c.lease_owner.is_(None), c.lease_expires_ms <= now),
            sa.or_(c.next_attempt_ms.is_(None), c.next_attempt_ms <= now),
        )
        .values(
            lease_owner=sa.bindparam("owner", type_=sa.String),
            lease_expires_ms=sa.bindparam("expires", type_=sa.BigInteger),
            updated_at_ms=now,
        )
        .returning(
            *_KEY_COLUMNS,
            c.status,
            # not ``payload IS NOT NULL``: SQLite 3.40's RETURNING evaluates IS [NOT] NULL of
            # a column wrongly (1 for a NULL payload); its length is NULL exactly then
            sa.func.length(c.payload).label("payload_length"),
            c.source_watermark,
            c.computed_at_ms,
            c.attempts,
            c.partials,
            c.history,
            c.stale_since_ms,
            *session_columns,
        )
    )
    return statement


def _log_of(row: Any, read: bool) -> changelog.Entries | None:  # Any: a claimed row
    """The change-log entries a claim ``read`` (PostgreSQL; none found: an empty log); None
    where the claim reads none (SQLite)."""
    if not read:
        return None
    entries: list[tuple[int, int, bytes | None]] | None = row.log_entries
    if entries is None:
        return {}
    return {(row.session_id, seq): (prev, ranges) for seq, prev, ranges in entries}


def _tail_of(row: Any, tail: Tail | None) -> TailRows | None:  # Any: a claimed row
    """The guessed ``tail`` with the GROUP BY rows the claimed ``row`` read for it (PostgreSQL:
    records); None when it read none (see ``_claim_statement``)."""
    records: list[Any] | None = row.tail_rows if tail is not None else None  # Any: records
    if records is None or tail is None:
        return None
    return TailRows(tail, tuple(tuple(r) for r in records))


@dataclass(frozen=True, slots=True)
class ToSave:
    """One view's result to save under our lease, with what the claim returned for it."""

    claim: Claim
    computed: ComputedTelemetry
    compute_ms: int


def backoff_ms(attempts: int) -> int:
    """Delay before the next attempt after ``attempts`` consecutive failures (exponential)."""
    return min(BACKOFF_BASE_MS << max(attempts - 1, 0), BACKOFF_MAX_MS)


class SessionTelemetryCacheRepository:
    """The lease state machine of ``telemetry_cache``; stateless, safe to share."""

    async def take_lease(
        self, conn: AsyncConnection, key: TelemetryKey, *, owner: str, now_ms: int, lease_ms: int
    ) -> Lease | LeaseRefusal:
        """``claim`` of one key, the lease only."""
        claimed = (await self.claim(conn, [key], owner=owner, now_ms=now_ms, lease_ms=lease_ms))[
            key
        ]
        return claimed.lease if isinstance(claimed, Claim) else claimed

    async def claim(
        self,
        conn: AsyncConnection,
        keys: Sequence[TelemetryKey],
        *,
        owner: str,
        now_ms: int,
        lease_ms: int,
        tails: Mapping[TelemetryKey, Tail] | None = None,
    ) -> dict[TelemetryKey, Claim | LeaseRefusal]:
        """Take the lease of every key that is free or expired and whose failure backoff has
        elapsed, and read what each compute starts from, in one UPDATE … RETURNING: on
        PostgreSQL that includes the change-log entries the compute walks and the GROUP BY rows
        of the key's guessed tail in ``tails`` (``incremental.guess_tails``). Only keys that
        did not come back cost more: missing rows are created (then claimed again), and one
        read says why the others were refused."""
        wanted = {key_tuple(k): k for k in keys}
        tails = tails or {}
        found = await self._claim(conn, list(wanted.values()), owner, now_ms, lease_ms, tails)
        missing = [k for t, k in wanted.items() if t not in found]
        if missing:
            for key in missing:
                # Missing (or just inserted by another node, or held): make sure it exists.
                await self._insert_missing(conn, key, now_ms)
            found |= await self._claim(conn, missing, owner, now_ms, lease_ms, tails)
        answers: dict[TelemetryKey, Claim | LeaseRefusal] = {}
        foreign: list[TelemetryKey] = []
        for t, key in wanted.items():
            claimed = found.get(t)
            if claimed is None:
                continue
            if claimed.session.user_id and key.user_id and claimed.session.user_id != key.user_id:
                foreign.append(key)
            else:
                answers[key] = Claim(
                    key, claimed.lease, claimed.session, claimed.stored, claimed.stale_since_ms
                )
        if foreign:
            # Not the key's user's session: as if it did not exist (its lease given back).
            await self.release_many(conn, foreign, owner=owner, now_ms=now_ms)
            answers |= dict.fromkeys(foreign, LeaseRefusal.NO_SESSION)
        refused = [k for k in keys if k not in answers]
        if refused:
            answers |= await self._refusals(conn, refused, now_ms)
        return answers

    async def _claim(
        self,
        conn: AsyncConnection,
        keys: Sequence[TelemetryKey],
        owner: str,
        now_ms: int,
        lease_ms: int,
        tails: Mapping[TelemetryKey, Tail],
    ) -> dict[KeyTuple, Claim]:
        expires = now_ms + lease_ms
        log_read = conn.dialect.name == "postgresql"
        take = _claim_statement(conn.dialect.name, log_read and any(k in tails for k in keys))
        params: dict[str, object] = {"owner": owner, "now": now_ms, "expires": expires}
        if log_read:
            wanted = [(*key_tuple(k), *_tail_values(tails.get(k))) for k in keys]
            params |= {name: [w[i] for w in wanted] for i, (name, _t) in enumerate(_WANTED)}
        else:
            params["keys"] = [key_tuple(k) for k in keys]
        found: dict[KeyTuple, Claim] = {}
        by_tuple = {key_tuple(k): k for k in keys}
        for row in await take.rows(conn, params):
            t = (row.session_id, row.window_minutes, row.resolution, row.compute_version)
            if row.s_status is None:
                continue  # the session went with the row (a cascade in flight)
            session = Session(
                id=row.session_id,
                user_id=row.s_user_id,
                client_session_id=row.s_client_session_id,
                status=SessionStatus(row.s_status),
                start_ms=row.s_start_ms,
                end_ms=row.s_end_ms,
                notes=row.s_notes,
                source_watermark=row.s_source_watermark,
                archived_at_ms=row.s_archived_at_ms,
            )
            has_payload = row.payload_length is not None
            lease = Lease(
                owner,
                expires,
                CacheState(row.status),
                has_payload,
                row.source_watermark,
                row.computed_at_ms,
                row.attempts,
            )
            stored = None
            if has_payload:
                key = by_tuple[t]
                tail = tails.get(key) if log_read else None
                stored = StoredView(
                    row.source_watermark,
                    row.partials,
                    row.history,
                    _log_of(row, log_read),
                    _tail_of(row, tail),
                )
            found[t] = Claim(by_tuple[t], lease, session, stored, row.stale_since_ms)
        return found

    async def _refusals(
        self, conn: AsyncConnection, keys: Sequence[TelemetryKey], now_ms: int
    ) -> dict[TelemetryKey, Claim | LeaseRefusal]:
        """Why each of ``keys`` was not claimed."""
        rows = await conn.execute(
            sa.select(*_KEY_COLUMNS, c.lease_owner, c.lease_expires_ms).where(keys_clause(keys))
        )
        blocking = {
            (r.session_id, r.window_minutes, r.resolution, r.compute_version): r for r in rows
        }
        refusals: dict[TelemetryKey, Claim | LeaseRefusal] = {}
        for key in keys:
            row = blocking.get(key_tuple(key))
            if row is None:
                refusals[key] = LeaseRefusal.NO_SESSION
            elif row.lease_owner is not None and row.lease_expires_ms > now_ms:
                refusals[key] = LeaseRefusal.BUSY
            else:
                refusals[key] = LeaseRefusal.BACKING_OFF
        return refusals

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
        held = await self.renew_many(conn, [key], owner=owner, now_ms=now_ms, lease_ms=lease_ms)
        return key in held

    async def renew_many(
        self,
        conn: AsyncConnection,
        keys: Sequence[TelemetryKey],
        *,
        owner: str,
        now_ms: int,
        lease_ms: int,
    ) -> set[TelemetryKey]:
        """Extend our leases of ``keys`` in one statement; the keys whose lease is still ours."""
        if not keys:
            return set()
        rows = await conn.execute(
            sa.update(telemetry_cache)
            .where(keys_clause(keys), c.lease_owner == owner)
            .values(lease_expires_ms=now_ms + lease_ms, updated_at_ms=now_ms)
            .returning(*_KEY_COLUMNS)
        )
        held = {tuple(row) for row in rows}
        return {k for k in keys if key_tuple(k) in held}

    async def release(
        self, conn: AsyncConnection, key: TelemetryKey, *, owner: str, now_ms: int
    ) -> None:
        """Give the lease back without an outcome (the cache was already fresh)."""
        await self.release_many(conn, [key], owner=owner, now_ms=now_ms)

    async def release_many(
        self, conn: AsyncConnection, keys: Sequence[TelemetryKey], *, owner: str, now_ms: int
    ) -> None:
        """``release`` of several keys, in one statement."""
        if keys:
            await conn.execute(
                sa.update(telemetry_cache)
                .where(keys_clause(keys), c.lease_owner == owner)
                .values(lease_owner=None, lease_expires_ms=None, updated_at_ms=now_ms)
            )

    async def save_many(
        self,
        conn: AsyncConnection,
        results: Sequence[ToSave],
        *,
        owner: str,
        now_ms: int,
        read_started_ms: int,
    ) -> set[TelemetryKey]:
        """Store every result whose row is still under ``owner``'s lease, and release those
        leases, in one compare-and-set UPDATE; the keys saved (a view whose lease was taken over
        keeps the newer result).

        ``stale_since_ms`` (set by ingest at the first change after the cached watermark) is
        cleared when the saved watermark is the session's current one; else it restarts at our
        read (a change arrived since), unless it was set after the read started.
        """
        if not results:
            return set()
        params: dict[str, object] = {
            "owner": owner,
            "now": now_ms,
            "read_started": read_started_ms,
        }
        # in primary-key order: batches that meet on rows tend to lock them in one order
        for i, r in enumerate(sorted(results, key=lambda r: key_tuple(r.claim.key))):
            computed = r.computed
            values = (
                *key_tuple(r.claim.key),
                computed.state.value,
                computed.blob,
                computed.source_watermark,
                computed.computed_at_ms,
                r.compute_ms,
                computed.raw_sample_count,
                computed.partials,
                computed.history,
            )
            params |= {
                f"{name}{i}": value for (name, _t), value in zip(_SAVED, values, strict=True)
            }
        rows = await _save_statement(conn.dialect.name, len(results)).rows(conn, params)
        saved = {tuple(row) for row in rows}
        return {r.claim.key for r in results if key_tuple(r.claim.key) in saved}

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
