"""Core queries on users and sessions. Every function takes the caller's connection, so the caller
decides the transaction; nothing here commits.

Wherever a session's watermark moves, its change-log entry is written here too (``changelog``),
so no caller can move one without the other.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from vitalcast.db import cascade
from vitalcast.db.prepared import Prepared
from vitalcast.db.tables import erasures, sessions, users
from vitalcast.errors import Unauthenticated
from vitalcast.sessions import changelog
from vitalcast.sessions.models import WIDEST_PAD_MS, Session, SessionStatus


async def get_or_create_user(conn: AsyncConnection, name: str, *, now_ms: int) -> str:
    """The id of the user called ``name``, created on first use."""
    existing = await conn.scalar(sa.select(users.c.id).where(users.c.name == name))
    if existing is not None:
        return str(existing)
    user_id = str(uuid.uuid4())
    await conn.execute(
        sa.insert(users).values(id=user_id, name=name, change_seq=0, created_at_ms=now_ms)
    )
    return user_id


async def user_exists(conn: AsyncConnection, user_id: str) -> bool:
    """True for a user that exists and is not being erased (an erasure refuses its tokens from
    the moment it is requested, while its rows are purged in batches)."""
    erasing = sa.exists().where(erasures.c.user_id == users.c.id)
    query = sa.select(users.c.id).where(users.c.id == user_id, ~erasing)
    return await conn.scalar(query) is not None


async def next_change_seq(conn: AsyncConnection, user_id: str) -> int:
    """Increment the user's change counter and return the new value (row-locks the user)."""
    seq = await conn.scalar(
        sa.update(users)
        .where(users.c.id == user_id)
        .values(change_seq=users.c.change_seq + 1)
        .returning(users.c.change_seq)
    )
    if seq is None:
        raise LookupError(user_id)
    return int(seq)


async def lock_user(conn: AsyncConnection, user_id: str) -> int | None:
    """The user's change counter, read under the user's row lock for this transaction
    (PostgreSQL; SQLite's write transaction already serialises); None when the user does not
    exist. An ingest of this user that has not committed yet is waited for, and one that starts
    later waits for us and then sees what we wrote."""
    seq: int | None = await _LOCK_USER.scalar(conn, {"user_id": user_id})
    return seq


_LOCK_USER = Prepared(
    sa.select(users.c.change_seq).where(users.c.id == sa.bindparam("user_id")).with_for_update()
)


async def get(
    conn: AsyncConnection, user_id: str, session_id: str, *, for_update: bool = False
) -> Session | None:
    """The session if it exists and belongs to ``user_id``; None otherwise (no existence leak).
    ``for_update`` row-locks it (PostgreSQL) until the caller's transaction ends."""
    query = sa.select(sessions).where(sessions.c.id == session_id, sessions.c.user_id == user_id)
    if for_update:
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    return None if row is None else Session.from_row(row)


async def get_by_client_id(
    conn: AsyncConnection, user_id: str, client_session_id: str
) -> Session | None:
    row = (
        await conn.execute(
            sa.select(sessions).where(
                sessions.c.user_id == user_id, sessions.c.client_session_id == client_session_id
            )
        )
    ).first()
    return None if row is None else Session.from_row(row)


async def insert(
    conn: AsyncConnection,
    *,
    user_id: str,
    client_session_id: str | None,
    start_ms: int,
    notes: str | None,
    now_ms: int,
) -> Session:
    session_id = str(uuid.uuid4())
    # Under the user's lock, like an ingest: reading change_seq without it could take N while an
    # ingest that committed N+1 afterwards did not see this session to bump its watermark, and
    # a payload cached at N would then miss that ingest's samples for good.
    watermark = await lock_user(conn, user_id)
    if watermark is None:
        # Erased since its token was checked: refused like any token of a user that is gone.
        raise Unauthenticated("The token's user does not exist.", code="TOKEN_INVALID")
    await conn.execute(
        sa.insert(sessions).values(
            id=session_id,
            user_id=user_id,
            client_session_id=client_session_id,
            status=SessionStatus.ACTIVE.value,
            start_ms=start_ms,
            end_ms=None,
            notes=notes,
            source_watermark=watermark,
            created_at_ms=now_ms,
            updated_at_ms=now_ms,
        )
    )
    return Session(
        id=session_id,
        user_id=user_id,
        client_session_id=client_session_id,
        status=SessionStatus.ACTIVE,
        start_ms=start_ms,
        end_ms=None,
        notes=notes,
        source_watermark=watermark,
    )


async def close(
    conn: AsyncConnection,
    session: Session,
    *,
    status: SessionStatus,
    end_ms: int,
    now_ms: int,
) -> Session:
    """End or cancel ``session``; the change bumps the user's change_seq into its watermark and
    logs the whole session as changed."""
    seq = await next_change_seq(conn, session.user_id)
    # Read under the user's row lock (taken by next_change_seq), which every watermark move holds.
    previous = await conn.scalar(
        sa.select(sessions.c.source_watermark).where(sessions.c.id == session.id)
    )
    await changelog.record(
        conn, [changelog.LogEntry(session.id, seq, int(previous or 0), ranges=None)]
    )
    await conn.execute(
        sa.update(sessions)
        .where(sessions.c.id == session.id)
        .values(status=status.value, end_ms=end_ms, source_watermark=seq, updated_at_ms=now_ms)
    )
    return replace(session, status=status, end_ms=end_ms, source_watermark=seq)


async def list_page(
    conn: AsyncConnection,
    user_id: str,
    *,
    status: SessionStatus | None,
    limit: int,
    after: tuple[int, str] | None,
) -> list[Session]:
    """Up to ``limit`` sessions, newest start first, strictly after the ``(start_ms, id)`` cursor."""
    query = sa.select(sessions).where(sessions.c.user_id == user_id)
    if status is not None:
        query = query.where(sessions.c.status == status.value)
    if after is not None:
        start_ms, session_id = after
        query = query.where(
            sa.or_(
                sessions.c.start_ms < start_ms,
                sa.and_(sessions.c.start_ms == start_ms, sessions.c.id < session_id),
            )
        )
    query = query.order_by(sessions.c.start_ms.desc(), sessions.c.id.desc()).limit(limit)
    return [Session.from_row(row) for row in (await conn.execute(query))]


async def bump_watermarks(
    conn: AsyncConnection,
    user_id: str,
    *,
    change_seq: int,
    changed_times_ms: Iterable[int],
    now_ms: int,
) -> list[Session]:
    """Set ``source_watermark = change_seq`` on every session of the user whose widest window holds
    at least one of ``changed_times_ms`` (old and new sample times), log the times each one got
    (one multi-row insert), and return those sessions.

    Precision is per time, not per batch range: two samples far apart do not stale every session
    between them. The caller holds the user's row lock, so the watermarks read here are the ones
    being replaced.
    """
    times: Sequence[int] = sorted(set(changed_times_ms))
    if not times:
        return []
    candidates = await _WIDEST_WINDOW_HOLDS.rows(conn, widest_window_params(user_id, times, now_ms))
    touched, entries = touched_by(candidates, times, change_seq=change_seq, now_ms=now_ms)
    if touched:
        await _MOVE_WATERMARKS.run(conn, {"ids": [s.id for s in touched], "change_seq": change_seq})
        await changelog.record(conn, entries)
    return [replace(s, source_watermark=change_seq) for s in touched]


def widest_window_params(user_id: str, times: Sequence[int], now_ms: int) -> dict[str, object]:
    """The parameters of ``WIDEST_WINDOW_HOLDS`` for the sorted, non-empty ``times``."""
    return {"user_id": user_id, "lo": times[0], "hi": times[-1], "now_ms": now_ms}


def touched_by(
    candidates: Iterable[Any],  # Any: rows carrying the session columns by name
    times: Sequence[int],
    *,
    change_seq: int,
    now_ms: int,
) -> tuple[list[Session], list[changelog.LogEntry]]:
    """The candidate sessions whose widest window holds one of the sorted ``times``, and the
    change-log entry each one gets (watermarks as read, before the move to ``change_seq``)."""
    touched: list[Session] = []
    entries: list[changelog.LogEntry] = []
    for row in candidates:
        session = Session.from_row(row)
        ranges = changelog.ranges_of(times, *session.widest_window(now_ms))
        if ranges:
            touched.append(session)
            entries.append(
                changelog.LogEntry(session.id, change_seq, session.source_watermark, ranges)
            )
    return touched, entries


#: the sessions of a user whose widest window may hold a time in [lo, hi]
WIDEST_WINDOW_HOLDS = sa.select(sessions).where(
    sessions.c.user_id == sa.bindparam("user_id"),
    # Archived (retention): its views are kept as they are, never recomputed.
    sessions.c.archived_at_ms.is_(None),
    sessions.c.start_ms - WIDEST_PAD_MS <= sa.bindparam("hi", type_=sessions.c.start_ms.type),
    sa.func.coalesce(sessions.c.end_ms, sa.bindparam("now_ms", type_=sessions.c.start_ms.type))
    + WIDEST_PAD_MS
    > sa.bindparam("lo", type_=sessions.c.start_ms.type),
)
_WIDEST_WINDOW_HOLDS = Prepared(WIDEST_WINDOW_HOLDS)
_MOVE_WATERMARKS = Prepared(
    sa.update(sessions)
    .where(sessions.c.id.in_(sa.bindparam("ids", expanding=True)))
    .values(source_watermark=sa.bindparam("change_seq"))
)


async def delete(conn: AsyncConnection, session: Session) -> None:
    """Remove ``session`` and every row that refers to it (its views, their history and
    partials, its change log, and whatever later tables point at a session), found from the
    schema. The caller holds the user's lock and the session's row lock: an ingest cannot move
    its watermark meanwhile, and a compute cannot insert a view row for it (PostgreSQL's foreign
    key check waits for the lock, then finds the session gone). The cascade locks the
    session's view rows before it touches its change log, in the order a compute's save takes
    them (``cascade.LOCKED_FIRST``): the delete waits for a save, whose result then finds no row
    to land in."""
    await cascade.delete_tree(conn, sessions, sessions.c.id == session.id)
