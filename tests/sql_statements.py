"""The SQL statements a block of code sends, for tests that count them ("one statement", "no
database read")."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine


@contextmanager
def statements_where(keep: Callable[[sa.Connection], bool]) -> Iterator[list[str]]:
    """Every SQL statement (its text, for messages) sent while the block runs through a
    connection ``keep`` accepts, but SQLite's own ``BEGIN`` (``db.engine`` issues it as a
    statement; PostgreSQL's is implicit, so counts agree on both databases)."""
    seen: list[str] = []

    def record(conn: sa.Connection, _cursor: Any, statement: str, *_args: Any) -> None:
        if keep(conn) and not statement.startswith("BEGIN"):
            seen.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", record)


def count_statements(engine: AsyncEngine) -> Any:  # Any: the context manager above
    """The statements sent to ``engine``'s database, by ``engine`` or by the engines of its
    database threads (``db.units``)."""
    url = engine.url
    return statements_where(lambda conn: conn.engine.url == url)
