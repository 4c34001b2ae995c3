"""Statements built once, and run on SQLite's own connection inside a unit of work.

SQLAlchemy Core costs more CPU than the statements of a live update do. Measured on this code
base (SQLite, a database thread): a one-row ``SELECT`` built at each call cost 95 µs of CPU, the
same statement built once 44 µs (no construction, no cache key to compute, no type to adapt), and
the same SQL run on the ``sqlite3`` connection 1–2 µs. An ingest of a 5 s batch ran ten
statements: 3.0 ms of its database thread, a third of a whole live update.

``Prepared`` holds one statement, written once with SQLAlchemy like any other. Inside a SQLite
unit (``db.units``: the connection's driver runs in the calling thread) it is compiled once to
SQLite's SQL and executed on the ``sqlite3`` connection directly; anywhere else (PostgreSQL, a
SQLite connection owned by aiosqlite's thread) it goes through ``conn.execute`` as before, still
built once. Both run the same SQL in the caller's transaction.

Listeners of SQLAlchemy's ``before_cursor_execute`` and ``after_cursor_execute`` hear these
statements as they hear any other (the tests count statements that way).

Kept to plain column types (text, integers, floats, bytes, booleans), which ``sqlite3`` binds and
returns as SQLAlchemy would, except that a boolean comes back as 0 or 1. Rows answer by column
name (``row.change_seq``) and by position either way.
"""

from __future__ import annotations

import sqlite3
from collections import namedtuple
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from vitalcast.db.units import InlineConnection

#: parameters of one execution, by bind name
Params = Mapping[str, Any]  # Any: whatever the columns take


def sqlite_driver(conn: AsyncConnection) -> sqlite3.Connection | None:
    """The ``sqlite3`` connection under ``conn`` when this thread may use it directly (a unit's
    connection, see ``db.units``); None otherwise."""
    if conn.dialect.name != "sqlite":
        return None
    fairy = conn.sync_connection.connection if conn.sync_connection is not None else None
    driver = None if fairy is None else fairy.driver_connection
    return driver.sqlite_connection if isinstance(driver, InlineConnection) else None


def _execute(
    conn: AsyncConnection,
    driver: sqlite3.Connection,
    sql: str,
    values: Any,  # Any: one parameter list, or (many) a list of them
    *,
    many: bool = False,
) -> sqlite3.Cursor:
    """``sql`` on ``driver``, told to the connection's cursor-execute listeners."""
    sync = conn.sync_connection
    dispatch = None if sync is None else sync.dispatch
    if dispatch is not None and dispatch.before_cursor_execute:
        dispatch.before_cursor_execute(sync, None, sql, values, None, many)
    cursor = driver.executemany(sql, values) if many else driver.execute(sql, values)
    if dispatch is not None and dispatch.after_cursor_execute:
        dispatch.after_cursor_execute(sync, cursor, sql, values, None, many)
    return cursor


class _Compiled:
    """The statement as SQLite runs it: SQL with ``?`` markers, the bind name of each marker,
    the values the statement carries itself, and the markers of expanding (``IN``) lists."""

    __slots__ = ("defaults", "expanding", "names", "row_type", "sql")

    def __init__(self, statement: sa.Executable, dialect: sa.Dialect) -> None:
        compiled = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
        self.sql: str = str(compiled)
        self.names: tuple[str, ...] = tuple(compiled.positiontup or ())
        self.defaults: dict[str, Any] = {  # Any: literal values bound by the statement
            name: bind.effective_value for name, bind in compiled.binds.items()
        }
        self.expanding = frozenset(name for name, bind in compiled.binds.items() if bind.expanding)
        self.row_type: Any = None  # Any: a namedtuple class made from the first result

    def bind(self, params: Params) -> tuple[str, list[Any]]:  # Any: parameter values
        values: list[Any] = []  # Any: as above
        sql = self.sql
        for name in self.names:
            value = params[name] if name in params else self.defaults[name]
            if name in self.expanding:
                items = list(value)
                if items and isinstance(items[0], tuple):
                    # a tuple IN: one row value per item
                    row = "(" + ", ".join("?" * len(items[0])) + ")"
                    marks = ", ".join([row] * len(items))
                    values.extend(v for item in items for v in item)
                else:
                    marks = ", ".join("?" * len(items))
                    values.extend(items)
                # an empty list matches nothing, as SQLAlchemy renders it
                sql = sql.replace(f"__[POSTCOMPILE_{name}]", marks or "NULL", 1)
            else:
                values.append(value)
        return sql, values

    def rows(self, cursor: sqlite3.Cursor) -> list[Any]:  # Any: namedtuple rows
        fetched = cursor.fetchall()
        if cursor.description is None:
            return []
        if self.row_type is None:
            self.row_type = namedtuple(  # type: ignore[misc]
                "Row", [d[0] for d in cursor.description], rename=True
            )
        make = self.row_type._make
        return [make(row) for row in fetched]


class Prepared:
    """One statement, built once; see the module docstring."""

    __slots__ = ("_sqlite", "statement")

    def __init__(self, statement: sa.Executable) -> None:
        self.statement = statement
        self._sqlite: _Compiled | None = None

    def _compiled(self, conn: AsyncConnection) -> _Compiled:
        if self._sqlite is None:
            self._sqlite = _Compiled(self.statement, conn.dialect)
        return self._sqlite

    # Any: rows of whatever the statement selects
    async def rows(self, conn: AsyncConnection, params: Params | None = None) -> list[Any]:
        """Every row the statement returns (a SELECT, or a write with RETURNING)."""
        driver = sqlite_driver(conn)
        if driver is None:
            return list((await conn.execute(self.statement, dict(params or {}))).all())
        compiled = self._compiled(conn)
        sql, values = compiled.bind(params or {})
        return compiled.rows(_execute(conn, driver, sql, values))

    # Any: the value of that column
    async def scalar(self, conn: AsyncConnection, params: Params | None = None) -> Any:
        """The first column of the first row, None without a row."""
        found = await self.rows(conn, params)
        return found[0][0] if found else None

    async def run(self, conn: AsyncConnection, params: Params | Sequence[Params]) -> None:
        """Execute a statement that returns nothing, once or (a sequence) once per item."""
        driver = sqlite_driver(conn)
        if driver is None:
            await conn.execute(
                self.statement, dict(params) if isinstance(params, Mapping) else list(params)
            )
            return
        compiled = self._compiled(conn)
        if isinstance(params, Mapping):
            _execute(conn, driver, *compiled.bind(params))
            return
        if not params:
            return
        if compiled.expanding:
            for one in params:
                _execute(conn, driver, *compiled.bind(one))
            return
        values = [compiled.bind(one)[1] for one in params]
        _execute(conn, driver, compiled.sql, values, many=True)
