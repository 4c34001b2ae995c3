"""Lifecycle fixtures: the telemetry suite's app on a manual clock and its HTTP driver, reused
(deleting and erasing are judged by what the telemetry and realtime surfaces show afterwards)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from tests.realtime.conftest import live, socket_client
from tests.telemetry.conftest import clock, tapp, tc, view_memo
from vitalcast.db.engine import Database

__all__ = ["clock", "count", "live", "socket_client", "tapp", "tc", "view_memo"]


async def count(db: Database, table: sa.Table, *where: Any) -> int:
    """Rows of ``table`` matching ``where``."""
    async with db.read() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(table).where(*where)))
