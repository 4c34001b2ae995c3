"""The session change log: which sample times each change of a session's watermark touched.

It is the invalidation log of TimescaleDB's continuous aggregates, kept per session. Every move of
a session's watermark writes one entry in the same transaction (``sessions.repository`` does it
wherever it moves one), keyed by the new watermark and holding the one before it. The entries of
a session therefore form a chain, and a compute that cached a view at watermark ``a`` can prove
it knows every change up to ``b`` by walking the chain back from ``b`` to ``a``: a pruned or
missing entry breaks the chain, and a broken chain is never mistaken for "nothing changed".

Ranges are half-open ``[lo, hi)`` of sample start times (old and new times of every change), kept
only inside the session's widest window. Times closer together than the finest bucket are
merged, which never marks a bucket dirty that holds no changed time: two times at most
``MERGE_MS`` apart lie in the same bucket or in neighbouring ones.

Every function runs in the caller's transaction and commits nothing.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from vitalcast.clock import MINUTE_MS
from vitalcast.db.prepared import Prepared
from vitalcast.db.tables import session_changes

#: times at most this far apart share a range (the finest bucket: 1 minute)
MERGE_MS = MINUTE_MS

c = session_changes.c
_INSERT = Prepared(
    sa.insert(session_changes).values(
        {name: sa.bindparam(name) for name in ("session_id", "change_seq", "prev_seq", "ranges")}
    )
)


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One change of one session: its watermark moved from ``prev_seq`` to ``change_seq``."""

    session_id: str
    change_seq: int
    prev_seq: int
    #: changed sample times as ``[lo, hi)`` ranges; None: the whole session changed
    ranges: tuple[tuple[int, int], ...] | None

    @property
    def whole(self) -> bool:
        return self.ranges is None


def ranges_of(times: Sequence[int], lo: int, hi: int) -> tuple[tuple[int, int], ...]:
    """The sorted ``times`` inside ``[lo, hi)`` as merged half-open ranges (see ``MERGE_MS``)."""
    start = bisect.bisect_left(times, lo)
    stop = bisect.bisect_left(times, hi)
    ranges: list[tuple[int, int]] = []
    for time in times[start:stop]:
        if ranges and time - (ranges[-1][1] - 1) <= MERGE_MS:
            ranges[-1] = (ranges[-1][0], time + 1)
        else:
            ranges.append((time, time + 1))
    return tuple(ranges)


def _pack(ranges: tuple[tuple[int, int], ...] | None) -> bytes | None:
    if ranges is None:
        return None
    flat = [edge for pair in ranges for edge in pair]
    return struct.pack(f"<{len(flat)}q", *flat)


def packed_ranges(entry: LogEntry) -> bytes | None:
    """The entry's ranges as the ``ranges`` column stores them (NULL: the whole session)."""
    return _pack(entry.ranges)


def _unpack(blob: bytes | None) -> tuple[tuple[int, int], ...] | None:
    if blob is None:
        return None
    flat = struct.unpack(f"<{len(blob) // 8}q", blob)
    return tuple(zip(flat[::2], flat[1::2], strict=True))


async def record(conn: AsyncConnection, entries: Sequence[LogEntry]) -> None:
    """Write ``entries`` (an ingest writes one per touched session)."""
    if not entries:
        return
    # executemany of one statement built once: a multi-row VALUES is a new statement to build
    # and compile for every ingest
    await _INSERT.run(
        conn,
        [
            {
                "session_id": entry.session_id,
                "change_seq": entry.change_seq,
                "prev_seq": entry.prev_seq,
                "ranges": _pack(entry.ranges),
            }
            for entry in entries
        ],
    )


async def chain(
    conn: AsyncConnection, session_id: str, *, after_seq: int, through_seq: int
) -> list[LogEntry] | None:
    """The session's entries from watermark ``after_seq`` (exclusive) to ``through_seq``, oldest
    first, when the chain between them is complete; None when an entry is missing."""
    return (await chains(conn, [(session_id, after_seq, through_seq)]))[0]


#: a chain a compute asks for: (session, after_seq exclusive, through_seq)
Span = tuple[str, int, int]
#: log entries by (session, change_seq): (prev_seq, packed ranges), as ``walk`` takes them
Entries = dict[tuple[str, int], tuple[int, bytes | None]]


async def chains(conn: AsyncConnection, spans: Sequence[Span]) -> list[list[LogEntry] | None]:
    """``chain`` of every span, in one read: a batch of computes walks the logs of all its
    views from the entries of one statement (per session, those after its oldest span)."""
    walks: list[list[LogEntry] | None] = [[] if t == a else None for _s, a, t in spans]
    wanted: dict[str, tuple[int, int]] = {}
    for session_id, after, through in spans:
        if through > after:
            lo, hi = wanted.get(session_id, (after, through))
            wanted[session_id] = (min(lo, after), max(hi, through))
    if not wanted:
        return walks
    params: dict[str, object] = {}
    for i, (session_id, (lo, hi)) in enumerate(sorted(wanted.items())):
        params |= {f"s{i}": session_id, f"lo{i}": lo, f"hi{i}": hi}
    rows = await _entries_of(len(wanted)).rows(conn, params)
    by_seq: Entries = {(row.session_id, row.change_seq): (row.prev_seq, row.ranges) for row in rows}
    for i, (session_id, after, through) in enumerate(spans):
        if through > after:
            walks[i] = walk(by_seq, session_id, after, through)
    return walks


_ENTRIES: dict[int, Prepared] = {}


def _entries_of(n_sessions: int) -> Prepared:
    """The read of ``chains`` for that many sessions, built once: the entries of session
    ``:s{i}`` with ``:lo{i} < change_seq <= :hi{i}``."""
    statement = _ENTRIES.get(n_sessions)
    if statement is None:
        statement = _ENTRIES[n_sessions] = Prepared(
            sa.select(c.session_id, c.change_seq, c.prev_seq, c.ranges).where(
                sa.or_(
                    *(
                        sa.and_(
                            c.session_id == sa.bindparam(f"s{i}"),
                            c.change_seq > sa.bindparam(f"lo{i}", type_=sa.BigInteger),
                            c.change_seq <= sa.bindparam(f"hi{i}", type_=sa.BigInteger),
                        )
                        for i in range(n_sessions)
                    )
                )
            )
        )
    return statement


def walk(
    by_seq: Entries, session_id: str, after_seq: int, through_seq: int
) -> list[LogEntry] | None:
    """``chain`` from entries read already (e.g. with a compute's claim, ``telemetry.store``):
    the session's entries from ``after_seq`` (exclusive) to ``through_seq``, oldest first, when
    the chain between them is complete; None when an entry is missing."""
    walked: list[LogEntry] = []
    seq = through_seq
    while seq != after_seq:
        found = by_seq.get((session_id, seq))
        if found is None or seq < after_seq:
            return None
        prev_seq, ranges = found
        walked.append(LogEntry(session_id, seq, prev_seq, _unpack(ranges)))
        seq = prev_seq
    walked.reverse()
    return walked


async def prune_many(
    conn: AsyncConnection, session_ids: Sequence[str], *, through_seq: sa.ColumnElement[int]
) -> None:
    """``prune`` of several sessions in one statement; ``through_seq`` is an expression that may
    refer to ``session_changes``'s columns (e.g. the oldest watermark of each session's views)."""
    if session_ids:
        await conn.execute(
            sa.delete(session_changes).where(
                c.session_id.in_(sorted(set(session_ids))), c.change_seq <= through_seq
            )
        )


async def prune(
    conn: AsyncConnection, session_id: str, *, through_seq: int | sa.ScalarSelect[int]
) -> None:
    """Drop the session's entries up to ``through_seq`` (a number, or a query of one, e.g. the
    oldest watermark of the session's cached views): no view needs them any more. A NULL
    bound drops nothing."""
    await conn.execute(
        sa.delete(session_changes).where(c.session_id == session_id, c.change_seq <= through_seq)
    )
