"""``vitalcast backfill``: schedule a compute for every session whose default cache is missing or
stale, page by page, waiting whenever the scheduler is full.

The default cache of an ended session is its default window at 1m and at 5m (what
``session_completed`` precomputes); of a live session, the default window at the auto
resolution. A cache row is up to date when it holds a payload (ready or no_data) at the
session's current watermark; anything else is scheduled with reason ``backfill``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from vitalcast.db.engine import Database
from vitalcast.db.tables import sessions, telemetry_cache, users
from vitalcast.sessions.models import Session
from vitalcast.telemetry.keys import (
    COMPUTE_VERSION,
    CacheState,
    Resolution,
    ScheduleReason,
    TelemetryKey,
)
from vitalcast.telemetry.run.coordinator import BoundedComputeCoordinator

PAGE_SIZE = 500
#: seconds between retries of a submit the scheduler refused (queue full)
FULL_WAIT_S = 0.25
# How often an in-process backfill looks for room in the coordinator.
ROOM_POLL_S = 0.005

Submit = Callable[[TelemetryKey, int], Awaitable[bool]]
"""Schedule one key at a watermark; False when the scheduler is full (retried after a wait)."""


@dataclass(slots=True)
class BackfillProgress:
    """Counts so far; ``total`` is the number of sessions the filters select."""

    total: int
    checked: int = 0
    scheduled: int = 0
    up_to_date: int = 0
    #: how many times a submit found the scheduler full and waited
    waits: int = 0


@dataclass(frozen=True, slots=True)
class BackfillFilter:
    #: only sessions starting at or after this epoch millisecond
    since_ms: int | None = None
    #: only the sessions of the user with this name
    user_name: str | None = None


def coordinator_submit(coordinator: BoundedComputeCoordinator) -> Submit:
    """Submit to an in-process coordinator, first waiting until it has room: a backfill fills
    the pending bound without being shed (and logged) over and over."""

    async def submit(key: TelemetryKey, watermark: int) -> bool:
        while True:
            if coordinator.stats.pending < coordinator.max_pending:
                return await coordinator.submit(
                    key, watermark=watermark, reason=ScheduleReason.BACKFILL
                )
            await asyncio.sleep(ROOM_POLL_S)

    return submit


def default_keys(session: Session, *, window_minutes: int, now_ms: int) -> list[TelemetryKey]:
    """The cache keys a session's default view needs (see module docstring)."""
    resolutions: list[Resolution | None] = [None] if session.live else list(Resolution)
    return [
        TelemetryKey.default_for(
            session, window_minutes=window_minutes, now_ms=now_ms, resolution=resolution
        )
        for resolution in resolutions
    ]


async def run_backfill(
    db: Database,
    submit: Submit,
    *,
    window_minutes: int,
    now_ms: Callable[[], int],
    selection: BackfillFilter = BackfillFilter(),
    on_progress: Callable[[BackfillProgress], None] = lambda _p: None,
) -> BackfillProgress:
    """Walk the selected sessions (oldest first) and submit every key that is not up to date.
    Returns the final counts; ``on_progress`` is called after every page."""
    async with db.read() as conn:
        total = await _count(conn, selection)
    progress = BackfillProgress(total=total)
    on_progress(progress)
    after: tuple[int, str] | None = None
    while True:
        async with db.read() as conn:
            page = await _page(conn, selection, after)
            if not page:
                break
            fresh = await _fresh_keys(conn, [s.id for s in page], window_minutes)
        for session in page:
            for key in default_keys(session, window_minutes=window_minutes, now_ms=now_ms()):
                if (key.session_id, key.resolution, session.source_watermark) in fresh:
                    progress.up_to_date += 1
                    continue
                while not await submit(key, session.source_watermark):
                    progress.waits += 1
                    await asyncio.sleep(FULL_WAIT_S)
                progress.scheduled += 1
            progress.checked += 1
        after = (page[-1].start_ms, page[-1].id)
        on_progress(progress)
    return progress


def _selected(
    query: sa.Select[Any],  # Any: the row type of the select, whatever its columns
    selection: BackfillFilter,
) -> sa.Select[Any]:  # Any: the same
    if selection.since_ms is not None:
        query = query.where(sessions.c.start_ms >= selection.since_ms)
    if selection.user_name is not None:
        query = query.where(
            sessions.c.user_id
            == sa.select(users.c.id).where(users.c.name == selection.user_name).scalar_subquery()
        )
    return query


async def _count(conn: AsyncConnection, selection: BackfillFilter) -> int:
    query = _selected(sa.select(sa.func.count()).select_from(sessions), selection)
    return int(await conn.scalar(query) or 0)


async def _page(
    conn: AsyncConnection, selection: BackfillFilter, after: tuple[int, str] | None
) -> list[Session]:
    query = _selected(sa.select(sessions), selection)
    if after is not None:
        start_ms, session_id = after
        query = query.where(
            sa.or_(
                sessions.c.start_ms > start_ms,
                sa.and_(sessions.c.start_ms == start_ms, sessions.c.id > session_id),
            )
        )
    query = query.order_by(sessions.c.start_ms, sessions.c.id).limit(PAGE_SIZE)
    return [Session.from_row(row) for row in await conn.execute(query)]


async def _fresh_keys(
    conn: AsyncConnection, session_ids: list[str], window_minutes: int
) -> set[tuple[str, Resolution, int]]:
    """(session, resolution, watermark) of every cache row holding a payload at that watermark."""
    c = telemetry_cache.c
    rows = await conn.execute(
        sa.select(c.session_id, c.resolution, c.source_watermark).where(
            c.session_id.in_(session_ids),
            c.window_minutes == window_minutes,
            c.compute_version == COMPUTE_VERSION,
            c.status.in_([state.value for state in CacheState if state.has_payload]),
            c.source_watermark.is_not(None),
        )
    )
    return {(row.session_id, Resolution(row.resolution), int(row.source_watermark)) for row in rows}
