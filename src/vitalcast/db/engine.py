"""Engine construction for both backends; SQLite gets WAL and a busy timeout on every connection."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from vitalcast.db.partitions import SamplePartitions
from vitalcast.db.prepared import Prepared
from vitalcast.db.units import InlineConnection, SqliteUnits, Unit, UnitObserver, is_file_url

T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_MS = 30_000
WRITE_OPTION = "vitalcast_write"
#: marks a connection whose prepared statements begin no transaction (``Database.unit``'s alone)
ALONE_OPTION = "vitalcast_alone"
_ASYNC_COMMIT = Prepared(sa.text("SET LOCAL synchronous_commit TO OFF"))


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:  # Any: create_async_engine's options
    """An async engine for ``url``. SQLite files are created with their folder when missing.

    Statement parameters are kept out of error messages: they hold health values, and an error's
    text can reach a log through any traceback."""
    kwargs.setdefault("hide_parameters", True)
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            _private_sqlite_files(Path(parsed.database))
        engine = create_async_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **kwargs
        )
        _configure_sqlite(engine)
        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 10)
    # No ping at checkout: on asyncpg it is a transaction, a SELECT 1 and a rollback (three
    # round trips) before every transaction, a fifth of a live update's ingest on the server
    # and more on a worker. A connection PostgreSQL dropped fails its first statement instead;
    # SQLAlchemy then discards every connection of the pool made before, the request answers
    # 503 DATABASE_UNAVAILABLE (db.errors) and its retry gets a new connection.
    kwargs.setdefault("pool_pre_ping", False)
    return create_async_engine(url, **kwargs)


def _private_sqlite_files(database: Path) -> None:
    """Health data is for its owner's eyes: a folder created for the database is ``0700``, the
    database file is created ``0600`` before SQLite opens it (SQLite gives its WAL and shared
    memory files the database file's mode), and files an older version left readable to
    everyone are narrowed to ``0600``. A folder that already existed keeps its mode: it may be
    shared (``/tmp``)."""
    database.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.close(os.open(database, os.O_CREAT | os.O_RDWR, 0o600))
    for suffix in ("", "-wal", "-shm", "-journal"):
        path = database.with_name(database.name + suffix)
        if path.exists() and path.stat().st_mode & 0o077:
            path.chmod(0o600)


def _configure_sqlite(engine: AsyncEngine) -> None:
    sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    sa.event.listen(engine.sync_engine, "begin", _sqlite_begin)


def _sqlite_pragmas(
    dbapi_connection: Any,  # Any: the DBAPI connection of SQLAlchemy's aiosqlite adapter (untyped)
    _record: object,
) -> None:
    # Let SQLAlchemy emit BEGIN itself (see _sqlite_begin_immediate).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(conn: sa.Connection) -> None:
    # A writer takes SQLite's write lock at BEGIN: a read that later upgrades to a write could
    # otherwise fail with SQLITE_BUSY_SNAPSHOT, which no busy timeout waits out. Readers stay
    # deferred so that cache hits never queue behind an ingest.
    immediate = conn.get_execution_options().get(WRITE_OPTION, False)
    begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"
    driver = conn.connection.driver_connection
    if isinstance(driver, InlineConnection) and driver.sqlite_connection is not None:
        # a unit's connection (``units``): its unit began the transaction on sqlite3 already
        # (with the lock its kind needs); otherwise straight to sqlite3, as ``prepared``
        # statements go
        if not driver.sqlite_connection.in_transaction:
            driver.sqlite_connection.execute(begin)
    else:
        conn.exec_driver_sql(begin)


class Database:
    """The engine plus the two ways of opening a transaction: ``read()`` and ``write()``.

    Repositories take a connection from their caller, so a service decides where one transaction
    begins and ends. On SQLite ``write()`` takes the write lock up front; PostgreSQL ignores that.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        #: the months of ``health_samples`` this process knows exist (PostgreSQL)
        self.partitions = SamplePartitions(engine)
        self._writer = engine.execution_options(**{WRITE_OPTION: True})
        self._units: SqliteUnits | None = None
        self._sqlite_file = is_sqlite(engine) and is_file_url(engine.url)
        self._kept = KeptConnections(engine)
        #: told of each SQLite unit's wait and run (set before the first unit; a server's
        #: /metrics), so a stalled write can be told from a held event loop
        self.unit_observer: UnitObserver | None = None

    @property
    def sqlite(self) -> bool:
        return is_sqlite(self.engine)

    @property
    def alone_units(self) -> bool:
        """Whether ``unit(..., alone=True)`` runs its statements without a transaction (each
        commits by itself: PostgreSQL on asyncpg); elsewhere it is one transaction."""
        return not self._sqlite_file and self.engine.dialect.driver == "asyncpg"

    def read(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """``async with db.read() as conn``: a read-only transaction."""
        return self.engine.begin()

    def write(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """``async with db.write() as conn``: a read-write transaction, committed on exit."""
        return self._writer.begin()

    @asynccontextmanager
    async def derived_write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction for derived data (telemetry cache rows). On PostgreSQL its commit
        does not wait for the WAL flush: a row lost to a server crash is recomputed on the next
        read, and a lost lease only makes its holder's conditional save fail."""
        async with self.write() as conn:
            if not self.sqlite:
                await _ASYNC_COMMIT.run(conn, {})
            yield conn

    async def unit(
        self,
        unit: Unit[T],
        *,
        write: bool = False,
        derived: bool = False,
        alone: bool = False,
        short: bool = False,
    ) -> T:
        """``await unit(conn)`` in one transaction (``read()``, ``write()`` or, with
        ``derived``, ``derived_write()``), committed when it returns. On a SQLite file the whole
        unit runs on a database thread in one hop (``units``); elsewhere on this loop. A unit
        only talks to its connection: it must not wait for anything of the caller's loop.

        ``alone`` (with ``derived`` or ``write``): the unit's prepared statements each stand
        alone (one statement, or statements none of which needs another to have happened), so
        on PostgreSQL each commits by itself and the unit costs no BEGIN and COMMIT round trips
        (a compute's save, a live ingest's ``vitalcast_ingest_new``, are one statement).
        Elsewhere it is a transaction as any other.

        ``short`` (a write or derived unit of a few indexed statements: a live ingest, a
        compute's claim or save): on a SQLite file it runs on this loop's thread, with no hop,
        once this process's write lock is free (waiting for it without blocking the loop), and
        on a database thread when another process holds the file's (``units``).
        A short read (a few rows by their key: a token's user) runs on this loop's thread too,
        beside the short writes (a WAL reader waits for no writer), and on a database thread
        when SQLite answers busy; it must only read, since it may then run again.
        A unit that can run long (an import's batch, an aggregate over hours) must not say so:
        on the loop it would stop every request and socket while it runs."""
        if self._sqlite_file:
            if self._units is None:
                self._units = SqliteUnits(
                    self.engine.url,
                    configure=_configure_sqlite,
                    write_option=WRITE_OPTION,
                    busy_timeout_s=SQLITE_BUSY_TIMEOUT_MS / 1000,
                    observer=self.unit_observer,
                )
            return await self._units.run(unit, write=write or derived, short=short)
        if self.engine.dialect.driver == "asyncpg":
            kind = (
                (_DERIVED_ALONE if alone else _DERIVED)
                if derived
                else (_WRITE_ALONE if alone else _WRITE)
                if write
                else _READ
            )
            return await self._kept.run(unit, kind)
        if derived:
            async with self.derived_write() as conn:
                return await unit(conn)
        async with self.write() if write else self.read() as conn:
            return await unit(conn)

    async def dispose(self) -> None:
        if self._units is not None:
            units, self._units = self._units, None
            await units.close()
        await self._kept.close()
        await self.engine.dispose()


#: the kinds of unit a kept PostgreSQL connection serves (its execution options differ)
_READ, _WRITE, _DERIVED = "read", "write", "derived"
#: derived statements that each stand alone: no transaction around them (``Database.unit``)
_DERIVED_ALONE = "derived-alone"
#: write statements that each stand alone, committed as any write (``Database.unit``)
_WRITE_ALONE = "write-alone"
_ALONE = frozenset({_DERIVED_ALONE, _WRITE_ALONE})
_SESSION_ASYNC_COMMIT = frozenset({_DERIVED, _DERIVED_ALONE})
#: idle connections kept per kind of unit
KEPT_PER_KIND = 2


class KeptConnections:
    """PostgreSQL connections for units of work, checked out of the engine's pool once and kept
    between units (``Database.unit``).

    A unit through ``engine.begin()`` checked a connection out of SQLAlchemy's pool and back in,
    building a ``Connection`` each time: on a scaled-out worker that was a tenth of a live
    update's CPU (three units per compute), more than the unit's own statements. A kept
    connection only begins and commits. A derived unit's connection turns ``synchronous_commit``
    off once for its session instead of a ``SET LOCAL`` round trip per transaction (see
    ``Database.derived_write``); such a connection never goes back to the pool with that
    setting: it is closed outright (invalidated) when it is let go.

    At most ``KEPT_PER_KIND`` idle connections per kind are kept; units running at once beyond
    them check out and return connections as before. A unit that raises gives its connection
    back (or closes it) and lets every idle one go too, so a database restart costs one failed
    unit, not one per kept connection: the pool then replaces the dead connections at checkout
    as it always did. Connections belong to the loop that opened them: on another loop (a test's
    next one) the idle ones are dropped, not reused.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._idle: dict[str, list[AsyncConnection]] = {
            _READ: [],
            _WRITE: [],
            _DERIVED: [],
            _DERIVED_ALONE: [],
            _WRITE_ALONE: [],
        }
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self, unit: Unit[T], kind: str) -> T:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # connections of a loop that is gone cannot be closed from here: forget them
            self._idle = {k: [] for k in self._idle}
            self._loop = loop
        idle = self._idle[kind]
        conn = idle.pop() if idle else await self._open(kind)
        try:
            if kind in _ALONE:
                result = await unit(conn)
                # a statement through SQLAlchemy itself began its transaction as usual
                if conn.in_transaction():
                    await conn.commit()
            else:
                async with conn.begin():
                    result = await unit(conn)
        except BaseException:
            await self._let_go(conn, kind)
            await self.close()
            raise
        if len(self._idle[kind]) < KEPT_PER_KIND and self._loop is loop:
            self._idle[kind].append(conn)
        else:
            await self._let_go(conn, kind)
        return result

    async def _open(self, kind: str) -> AsyncConnection:
        conn = await self._engine.connect()
        try:
            if kind != _READ:
                await conn.execution_options(**{WRITE_OPTION: True})
            if kind in _ALONE:
                await conn.execution_options(**{ALONE_OPTION: True})
            if kind in _SESSION_ASYNC_COMMIT:
                await conn.exec_driver_sql("SET synchronous_commit TO OFF")
                await conn.commit()
        except BaseException:
            await conn.invalidate()
            raise
        return conn

    @staticmethod
    async def _let_go(conn: AsyncConnection, kind: str) -> None:
        with contextlib.suppress(Exception):
            if kind in _SESSION_ASYNC_COMMIT:
                await conn.invalidate()
            else:
                await conn.close()

    async def close(self) -> None:
        """Let every idle connection go (back to the pool, or closed)."""
        idle, self._idle = self._idle, {k: [] for k in self._idle}
        for kind, conns in idle.items():
            for conn in conns:
                await self._let_go(conn, kind)
