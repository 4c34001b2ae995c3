"""Statements built once, and run on the database driver's own connection.

SQLAlchemy Core costs more CPU than the statements of a live update do. Measured on this code
base (SQLite, a database thread): a one-row ``SELECT`` built at each call cost 95 µs of CPU, the
same statement built once 44 µs (no construction, no cache key to compute, no type to adapt), and
the same SQL run on the ``sqlite3`` connection 1–2 µs. An ingest of a 5 s batch ran ten
statements: 3.0 ms of its database thread, a third of a whole live update. On PostgreSQL the
same statements through SQLAlchemy's asyncpg adapter were a third of a scaled-out server's CPU
and of its worker's (a greenlet hop, an execution context and a result object per statement).

``Prepared`` holds one statement, written once with SQLAlchemy like any other, and compiles it
once per dialect:

- Inside a SQLite unit (``db.units``: the connection's driver runs in the calling thread) it
  runs on the ``sqlite3`` connection directly.
- On PostgreSQL it runs on the asyncpg connection under the SQLAlchemy connection, as a
  statement asyncpg prepares once per connection (its statement cache), in the transaction
  SQLAlchemy's adapter holds: the adapter begins its transaction lazily at a connection's first
  statement, and a prepared statement that comes first begins it the same way (under the
  adapter's lock), so SQLAlchemy commits or rolls back what it did. A ``read_only`` statement
  that comes first in a unit that is no write (``Database.read``) begins none: under READ
  COMMITTED a transaction gives a read no more than each statement's own snapshot, and the
  BEGIN and COMMIT were two of a compute's round trips. In a unit of statements that each
  stand alone (``Database.unit(..., alone=True)``) no statement begins one: each commits by
  itself, as one statement is atomic. An error is SQLAlchemy's, as it would
  be through ``conn.execute`` (and a lost connection is invalidated the same way).
- Anywhere else (a SQLite connection owned by aiosqlite's thread) it goes through
  ``conn.execute``, still built once.

Listeners of SQLAlchemy's ``before_cursor_execute`` and ``after_cursor_execute`` hear these
statements as they hear any other (the tests count statements that way).

Kept to plain column types (text, integers, floats, bytes, booleans), which ``sqlite3`` and
asyncpg bind and return as SQLAlchemy would, except that a boolean comes back from SQLite as 0
or 1. Rows answer by column name (``row.change_seq``) and by position either way.
"""

from __future__ import annotations

import sqlite3
from collections import namedtuple
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from vitalcast.db.units import InlineConnection, running_unit

#: parameters of one execution, by bind name
Params = Mapping[str, Any]  # Any: whatever the columns take
#: the execution option that marks a write transaction (``engine.WRITE_OPTION``)
_WRITE_OPTION = "vitalcast_write"
#: the execution option of a unit whose statements each stand alone (``engine.ALONE_OPTION``)
_ALONE_OPTION = "vitalcast_alone"


class PgRow(asyncpg.Record):  # type: ignore[misc]  # asyncpg ships no type hints
    """An asyncpg row that also answers by attribute, as SQLAlchemy's rows do."""

    def __getattr__(self, name: str) -> Any:  # Any: the column's value
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def sqlite_driver(conn: AsyncConnection) -> sqlite3.Connection | None:
    """The ``sqlite3`` connection under ``conn`` when this thread may use it directly (a unit's
    connection, see ``db.units``); None otherwise."""
    running = running_unit(conn)
    if running is not None:
        return running[0]
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
    running = running_unit(conn)
    if running is not None and not running[1]:
        return driver.executemany(sql, values) if many else driver.execute(sql, values)
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
        # the expanding lists, with their row width (0: a list of scalars)
        self.expanding: dict[str, int] = {
            name: len(getattr(bind.type, "types", ()))
            for name, bind in compiled.binds.items()
            if bind.expanding
        }
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
                if not items:
                    # an empty list matches nothing, as SQLAlchemy renders it
                    width = self.expanding[name]
                    marks = "(" + ", ".join(["NULL"] * width) + ")" if width else "NULL"
                sql = sql.replace(f"__[POSTCOMPILE_{name}]", marks, 1)
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


class _PgCompiled:
    """The statement as asyncpg runs it: SQL with ``$n`` markers, the bind name of each
    (SQLAlchemy numbers every bind but the expanding ones, once each), the values the statement
    carries itself, and the expanding (``IN``) lists, numbered after the others at each call."""

    __slots__ = ("defaults", "expanding", "names", "processors", "sql")

    def __init__(self, statement: sa.Executable, dialect: sa.Dialect) -> None:
        compiled = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
        self.sql: str = str(compiled)
        binds = compiled.binds
        self.defaults: dict[str, Any] = {  # Any: literal values bound by the statement
            name: bind.effective_value for name, bind in binds.items()
        }
        order = list(dict.fromkeys(compiled.positiontup or ()))
        self.names: tuple[str, ...] = tuple(n for n in order if not binds[n].expanding)
        # (name, row width: 0 for a list of scalars) of each expanding list, as they appear
        self.expanding: tuple[tuple[str, int], ...] = tuple(
            (n, len(getattr(binds[n].type, "types", ()))) for n in order if binds[n].expanding
        )
        # SQLAlchemy's conversions on binding (a Boolean's check), as ``conn.execute`` applies
        self.processors: tuple[Any, ...] | None = tuple(  # Any: callables of one value
            binds[name].type._cached_bind_processor(dialect) for name in self.names
        )
        if not any(self.processors):
            self.processors = None

    def bind(self, params: Params) -> tuple[str, list[Any]]:  # Any: parameter values
        values: list[Any] = [  # Any: as above
            params[name] if name in params else self.defaults[name] for name in self.names
        ]
        if self.processors is not None:
            values = [
                v if p is None else p(v) for p, v in zip(self.processors, values, strict=True)
            ]
        sql = self.sql
        for name, width in self.expanding:
            items = list(params[name] if name in params else self.defaults[name])
            n = len(values)
            if not items:
                # an empty list matches nothing, as SQLAlchemy renders it
                marks = "NULL" if not width else "(" + ", ".join(["NULL"] * width) + ")"
            elif not width:
                marks = ", ".join(f"${n + i}" for i in range(1, len(items) + 1))
                values.extend(items)
            else:
                marks = ", ".join(
                    "(" + ", ".join(f"${n + r * width + i}" for i in range(1, width + 1)) + ")"
                    for r in range(len(items))
                )
                values.extend(v for item in items for v in item)
            sql = sql.replace(f"__[POSTCOMPILE_{name}]", marks, 1)
        return sql, values


async def _on_asyncpg(
    conn: AsyncConnection,
    sql: str,
    values: Any,  # Any: one parameter list, or (many) a list of them
    *,
    read_only: bool,
    many: bool = False,
    fetch: bool = True,
) -> list[Any]:  # Any: PgRow rows
    """``sql`` on the asyncpg connection under ``conn``, in its transaction (see the module)."""
    sync = conn.sync_connection
    assert sync is not None
    fairy = sync.connection
    adapter: Any = fairy.dbapi_connection  # Any: SQLAlchemy's asyncpg adapter (untyped)
    driver: Any = fairy.driver_connection  # Any: an asyncpg.Connection (no type hints)
    # SQLAlchemy's own test before it looks at its listeners (cheaper than the dispatcher's)
    dispatch = sync.dispatch if sync._has_events or sync.engine._has_events else None
    if dispatch is not None and dispatch.before_cursor_execute:
        dispatch.before_cursor_execute(sync, None, sql, values, None, many)
    try:
        async with adapter._execute_mutex:
            if adapter._transaction is None:
                options = sync.get_execution_options()
                if not options.get(_ALONE_OPTION, False) and not (
                    read_only and not options.get(_WRITE_OPTION, False)
                ):
                    await adapter._start_transaction()
            if many:
                await driver.executemany(sql, values)
                rows = []
            elif fetch:
                rows = await driver.fetch(sql, *values, record_class=PgRow)
            else:
                await driver.execute(sql, *values)
                rows = []
    except Exception as error:
        try:
            adapter._handle_exception(error)  # raises the DBAPI error SQLAlchemy maps
        except Exception as dbapi_error:
            # raises SQLAlchemy's error, invalidating a lost connection
            sync._handle_dbapi_exception(dbapi_error, sql, values, None, None)
        raise
    if dispatch is not None and dispatch.after_cursor_execute:
        dispatch.after_cursor_execute(sync, None, sql, values, None, many)
    return rows


class Prepared:
    """One statement, built once; see the module docstring. ``read_only``: the statement writes
    nothing and takes no lock (a SELECT without FOR UPDATE is one unless told otherwise)."""

    __slots__ = ("_pg", "_sqlite", "read_only", "statement")

    def __init__(self, statement: sa.Executable, *, read_only: bool | None = None) -> None:
        self.statement = statement
        if read_only is None:
            read_only = isinstance(statement, sa.Select) and statement._for_update_arg is None
        self.read_only = read_only
        self._sqlite: _Compiled | None = None
        self._pg: _PgCompiled | None = None

    def _compiled(self, conn: AsyncConnection) -> _Compiled:
        if self._sqlite is None:
            self._sqlite = _Compiled(self.statement, conn.dialect)
        return self._sqlite

    def _pg_compiled(self, conn: AsyncConnection) -> _PgCompiled | None:
        """The statement compiled for asyncpg, None on any other driver."""
        if conn.dialect.driver != "asyncpg":
            return None
        if self._pg is None:
            self._pg = _PgCompiled(self.statement, conn.dialect)
        return self._pg

    # Any: rows of whatever the statement selects
    async def rows(self, conn: AsyncConnection, params: Params | None = None) -> list[Any]:
        """Every row the statement returns (a SELECT, or a write with RETURNING)."""
        driver = sqlite_driver(conn)
        if driver is None:
            pg = self._pg_compiled(conn)
            if pg is not None:
                sql, values = pg.bind(params or {})
                return await _on_asyncpg(conn, sql, values, read_only=self.read_only)
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
            pg = self._pg_compiled(conn)
            if pg is not None:
                await self._run_pg(conn, pg, params)
                return
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

    async def _run_pg(
        self, conn: AsyncConnection, pg: _PgCompiled, params: Params | Sequence[Params]
    ) -> None:
        read_only = self.read_only
        if isinstance(params, Mapping):
            sql, values = pg.bind(params)
            await _on_asyncpg(conn, sql, values, read_only=read_only, fetch=False)
            return
        if not params:
            return
        if pg.expanding:
            for one in params:
                sql, values = pg.bind(one)
                await _on_asyncpg(conn, sql, values, read_only=read_only, fetch=False)
            return
        batch = [pg.bind(one)[1] for one in params]
        await _on_asyncpg(conn, pg.sql, batch, read_only=read_only, many=True)
