"""Core queries on announced alerts; the caller's connection decides the transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from vitalcast.alerts.models import Alert
from vitalcast.db.tables import session_alerts


def _alert(row: Any) -> Alert:  # Any: a row of session_alerts, read by column name
    return Alert(
        session_id=row.session_id,
        user_id=row.user_id,
        metric=row.metric,
        rule=row.rule,
        level=row.level,
        slot_ms=int(row.slot_ms),
        start_ms=int(row.start_ms),
        extreme=float(row.extreme),
        source_watermark=int(row.source_watermark),
        announced_at_ms=int(row.announced_at_ms),
    )


async def lock_session(conn: AsyncConnection, session_id: str) -> None:
    """Serialise announcements of one session until the transaction ends (PostgreSQL: an
    advisory lock; SQLite's write transaction already runs alone)."""
    if conn.dialect.name == "postgresql":
        await conn.execute(
            sa.text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"alerts:{session_id}"}
        )


async def announced_slots(
    conn: AsyncConnection, session_id: str
) -> dict[tuple[str, str], set[int]]:
    """The slots announced so far per (metric, rule) of the session."""
    a = session_alerts.c
    rows = await conn.execute(
        sa.select(a.metric, a.rule, a.slot_ms).where(a.session_id == session_id)
    )
    slots: dict[tuple[str, str], set[int]] = {}
    for row in rows:
        slots.setdefault((row.metric, row.rule), set()).add(int(row.slot_ms))
    return slots


async def insert_if_absent(conn: AsyncConnection, alerts: Sequence[Alert]) -> list[Alert]:
    """Insert ``alerts``; returns those this call wrote (a row already there is left as is)."""
    if not alerts:
        return []
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    a = session_alerts.c
    statement = (
        insert(session_alerts)
        .values(
            [
                {
                    "session_id": x.session_id,
                    "metric": x.metric,
                    "rule": x.rule,
                    "slot_ms": x.slot_ms,
                    "user_id": x.user_id,
                    "level": x.level,
                    "start_ms": x.start_ms,
                    "extreme": x.extreme,
                    "source_watermark": x.source_watermark,
                    "announced_at_ms": x.announced_at_ms,
                }
                for x in alerts
            ]
        )
        .on_conflict_do_nothing(index_elements=["session_id", "metric", "rule", "slot_ms"])
        .returning(a.metric, a.rule, a.slot_ms)
    )
    written = {(r.metric, r.rule, int(r.slot_ms)) for r in await conn.execute(statement)}
    return [x for x in alerts if (x.metric, x.rule, x.slot_ms) in written]


async def since(conn: AsyncConnection, session_id: str, watermark: int) -> list[Alert]:
    """The session's alerts announced by saves after ``watermark``, oldest first."""
    a = session_alerts.c
    rows = await conn.execute(
        sa.select(session_alerts)
        .where(a.session_id == session_id, a.source_watermark > watermark)
        .order_by(a.source_watermark, a.start_ms, a.metric, a.rule)
    )
    return [_alert(row) for row in rows]
