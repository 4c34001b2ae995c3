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
    """Every SQL statement sent to ``engine``'s database while the block runs (their text, for
    messages), by ``engine`` or by the engines of its database threads (``db.units``), but
    SQLite's own ``BEGIN`` (``db.engine`` issues it as a statement; PostgreSQL's is implicit)."""
    seen: list[str] = []
    url = engine.url

    def record(conn: sa.Connection, _cursor: Any, statement: str, *_args: Any) -> None:
        if conn.engine.url == url and not statement.startswith("BEGIN"):
            seen.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", record)
