"""Identity fixtures: the realtime suite's live server and Socket.IO clients, and a counter of
the SQL statements an engine runs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.realtime.conftest import live, socket_client

__all__ = ["count_statements", "live", "socket_client"]


@contextmanager
def count_statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """Every SQL statement ``engine`` sends while the block runs (their text, for messages), but
    SQLite's own ``BEGIN`` (``db.engine`` issues it as a statement; PostgreSQL's is implicit)."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not statement.startswith("BEGIN"):
            seen.append(statement)

    sa.event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", record)
