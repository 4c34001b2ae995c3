"""Units of work on SQLite: a whole transaction on a database thread, in one hop.

Through aiosqlite every DBAPI call (cursor, execute, fetch, close, commit) is a round trip
between the event loop and the connection's thread: a future, a ``call_soon_threadsafe`` and a
GIL hand-over each way. Measured on this code base, a one-row SELECT cost 0.19 ms of CPU through
it against 0.02 ms on the same file synchronously, and opening plus committing a transaction
0.3 ms against 0.03 ms; a live update ran about twenty such calls.

``SqliteUnits`` runs a *unit* (an async function of one ``AsyncConnection``, the same code that
runs on PostgreSQL) entirely on one of a few database threads. Each thread has its own engine
whose driver is aiosqlite's connection class with the thread hand-off taken out
(``InlineConnection``): every call runs at once, in the thread that made it, so no await in a
unit ever suspends and the thread drives the unit's coroutine to its end without an event loop.
A unit costs one hop there and one back, whatever it executes, and while SQLite works (a GROUP
BY, a wait for the write lock) the GIL is released and the server's event loop keeps serving.

Each thread runs its units one after another; the threads run side by side. A unit must not
wait for anything but its connection (a unit that does fails with ``UnitSuspended``): it gets a
connection and returns values.

A *short* write unit (a live ingest, a compute's claim or save: the caller says so) runs on the
caller's own thread instead, the event loop's, on a connection made there that never waits for
SQLite's lock (busy timeout 0), when the process's write lock is free at once and SQLite grants
its write lock at BEGIN. On a database thread the lock was held while the unit's statements
waited for the GIL, which the loop held: at 1,000 live sessions the lock was held 16.7 s of
every 20 s while the process used 0.65 of a core. On the loop the unit holds the GIL and the
lock only for its own work, and costs no hop. When a database thread holds the process's lock
(a long unit, a checkpoint), the short unit waits for it on the loop, not blocking it: sent to
a thread instead, short units queued there and held the lock as before, and the process stayed
in that state (at 700 sessions p99 4.1 s against 0.3 s for all units on threads). When SQLite
answers busy (another process, e.g. a CLI command, holds the file's write lock), the unit runs
on a database thread as any other, which waits for it; nothing of it ran before. A long unit
(an import's batch, a full aggregate) stays on the threads: on the loop it would stop every
request and socket for its whole run.

A *short* read unit (a few rows by their key: a token's user, on every token that left the
authenticator's cache) runs on the loop's thread as well, on its own connection: a WAL reader
waits for no writer, so it never waits for the process's write lock. Through aiosqlite such a
lookup cost about 1 ms of CPU (hops for BEGIN, the statement and COMMIT); on a database thread it
queued behind the computes' reads. When SQLite answers busy all the same (another connection
resetting the log), it runs again on a database thread: a short read must only read.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import sqlite3
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

import aiosqlite
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

T = TypeVar("T")
#: what a unit is: the body of one transaction
Unit = Callable[[AsyncConnection], Coroutine[Any, Any, T]]  # Any: a coroutine's yield/send types
#: told of every unit: (write, seconds it waited for its thread and the write lock, seconds it
#: ran, whether it ran on the caller's thread: a short unit, see the module docstring)
UnitObserver = Callable[[bool, float, float, bool], None]

#: database threads per SQLite database (SQLite has one writer at a time; readers run beside it)
UNIT_THREADS = 2
#: SQLite's primary result code for a lock held by another connection (``SQLITE_BUSY``)
_SQLITE_BUSY = 5
#: and for a table locked within this connection's shared cache (``SQLITE_LOCKED``)
_SQLITE_LOCKED = 6
#: short write units run on the loop between two checkpoints on a database thread (a live
#: update's units write a few pages each; SQLite's own default checkpoints at 1,000 pages)
CHECKPOINT_EVERY_UNITS = 100


class _Inline:
    """Stands where aiosqlite keeps the queue to its thread: runs each call at once."""

    # Any: aiosqlite's queue items, whatever the call returns
    def put_nowait(self, item: tuple[asyncio.Future[Any] | None, Callable[[], Any]]) -> None:
        future, function = item
        try:
            result = function()
        except BaseException as exc:
            if future is not None and not future.done():
                future.set_exception(exc)
        else:
            if future is not None and not future.done():
                future.set_result(result)


class InlineConnection(aiosqlite.Connection):
    """aiosqlite's connection without its thread: the caller's thread runs every call."""

    def __init__(self, connector: Callable[[], sqlite3.Connection]) -> None:
        super().__init__(connector, 64)
        self._tx = _Inline()  # type: ignore[assignment]

    def __await__(self) -> Any:  # Any: overrides aiosqlite's untyped one
        return self._connect().__await__()

    # Any: overrides aiosqlite's _execute, which runs any sqlite3 call with its arguments
    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        return fn(*args, **kwargs)

    @property
    def sqlite_connection(self) -> sqlite3.Connection | None:
        """The ``sqlite3`` connection itself, for the thread running this one's unit
        (``db.prepared``); None once closed."""
        return self._connection

    def stop(self) -> None:
        self._running = False
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _driver_of(conn: AsyncConnection) -> sqlite3.Connection:
    """The ``sqlite3`` connection under a unit's connection."""
    sync = conn.sync_connection
    driver = None if sync is None else sync.connection.driver_connection
    if not isinstance(driver, InlineConnection) or driver.sqlite_connection is None:
        raise RuntimeError("a unit's connection has no sqlite3 connection under it")
    return driver.sqlite_connection


class _Running(threading.local):
    """The unit a database thread runs: its connection, the ``sqlite3`` connection under it, and
    whether anything listens to its statements. ``db.prepared`` asks both at every statement;
    found through SQLAlchemy's connection, pool entry and event dispatch (listener collections
    answering truthiness twice per statement), that was a tenth of a live update's database
    thread."""

    conn: AsyncConnection | None = None
    driver: sqlite3.Connection | None = None
    heard: bool = True


_running = _Running()


def running_unit(conn: AsyncConnection) -> tuple[sqlite3.Connection, bool] | None:
    """When ``conn`` is the connection of the unit this thread runs: the ``sqlite3`` connection
    under it and whether statements on it are to be told to SQLAlchemy's cursor-execute
    listeners (decided when the unit began). None otherwise."""
    if _running.conn is conn and _running.driver is not None:
        return _running.driver, _running.heard
    return None


def _heard(conn: AsyncConnection) -> bool:
    sync = conn.sync_connection
    if sync is None:
        return True
    dispatch = sync.dispatch
    return bool(dispatch.before_cursor_execute) or bool(dispatch.after_cursor_execute)


class UnitSuspended(RuntimeError):
    """A unit waited for something other than its database (see the module docstring)."""


def _drive(coro: Coroutine[Any, Any, T]) -> T:  # Any: a coroutine's yield/send types
    """Run a coroutine that never suspends to its end, with no event loop running: every
    awaitable in a unit (a finished future, the inline driver's calls) completes at once."""
    try:
        while True:
            coro.send(None)
            coro.throw(UnitSuspended("a unit of work waited for something other than SQLite"))
    except StopIteration as stop:
        return cast(T, stop.value)


class _WriteLock:
    """The process's SQLite write lock. Database threads block on it; the loop's short units
    take it only when it is free, and otherwise wait for a thread to let it go without blocking
    the loop (a thread's release wakes them through the loop, only when one waits)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: list[asyncio.Future[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def locked(self) -> bool:
        return self._lock.locked()

    def acquire_nowait(self) -> bool:
        return self._lock.acquire(blocking=False)

    def release(self) -> None:
        """On the loop's thread (nobody waits there while the loop holds the lock)."""
        self._lock.release()

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *_exc: object) -> None:
        self._lock.release()
        # read after the release: a waiter added later saw the lock free (``released``)
        if self._waiters and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                self._loop.call_soon_threadsafe(self._wake)

    async def released(self) -> None:
        """Return once the lock was let go since it was found taken (it may be taken again)."""
        self._loop = asyncio.get_running_loop()
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        try:
            if self._lock.locked():
                await waiter
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


class _Refused(enum.Enum):
    """Why a short unit did not run on the loop (nothing of it ran)."""

    #: a database thread of this process holds the write lock: wait for it on the loop
    LOCK_TAKEN = enum.auto()
    #: another process holds the file's write lock: a database thread waits for it
    SQLITE_BUSY = enum.auto()


class _Busy(Exception):
    """SQLite refused a runner that does not wait for its write lock at BEGIN: nothing of the unit
    ran."""


def _is_busy(exc: BaseException) -> bool:
    """Whether ``exc`` (sqlite3's, or SQLAlchemy's around it) is SQLite answering that a lock is
    held by another connection (``SQLITE_BUSY`` or ``SQLITE_LOCKED``)."""
    orig = getattr(exc, "orig", exc)
    code = getattr(orig, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)


class _Runner:
    """A thread's connections to the file (one per kind of unit: checking a connection out of
    a pool and resetting it cost more than a small unit) and how a unit runs on them, driven to
    its end in one go (``_drive``): a database thread's, or the event loop's for short units."""

    def __init__(self, engine: AsyncEngine, write_option: str, wait_busy: bool) -> None:
        self.engine = engine
        self._write_option = write_option
        #: whether this runner's connections wait for another's write lock (else ``_Busy``)
        self._wait_busy = wait_busy
        self._conns: dict[bool, AsyncConnection] = {}

    async def _connection(self, write: bool) -> AsyncConnection:
        conn = self._conns.get(write)
        if conn is None or conn.closed or conn.invalidated:
            engine = (
                self.engine.execution_options(**{self._write_option: True})
                if write
                else self.engine
            )
            conn = await engine.connect()
            if not self._wait_busy:
                driver = _driver_of(conn)
                driver.execute("PRAGMA busy_timeout=0")
                # a commit past SQLite's WAL limit would copy pages and sync files here, on
                # the loop: ``SqliteUnits`` checkpoints on a database thread instead
                driver.execute("PRAGMA wal_autocheckpoint=0")
            self._conns[write] = conn
        return conn

    async def _transaction(self, unit: Unit[T], write: bool) -> T:
        """The unit between a BEGIN and a COMMIT sent to ``sqlite3`` itself.

        Through SQLAlchemy's ``conn.begin()`` and its commit (two greenlet hand-offs, the begin
        event, the transaction objects) an empty unit cost 60 µs of CPU against 5 µs for the
        same BEGIN and COMMIT on ``sqlite3``, and a unit's statements mostly go to ``sqlite3``
        already (``db.prepared``). A statement a unit runs through SQLAlchemy still works:
        SQLAlchemy then begins its own transaction object over the one open here (its begin
        event sends no second BEGIN, see ``engine._sqlite_begin``), and it commits it."""
        conn = await self._connection(write)
        driver = _driver_of(conn)
        try:
            driver.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.OperationalError as exc:
            if not self._wait_busy and exc.sqlite_errorcode & 0xFF == _SQLITE_BUSY:
                raise _Busy from exc
            raise
        _running.conn, _running.driver, _running.heard = conn, driver, _heard(conn)
        try:
            result = await unit(conn)
            if conn.in_transaction():
                await conn.commit()
            else:
                driver.commit()
            return result
        except BaseException:
            await self._roll_back(conn, driver, write)
            raise
        finally:
            _running.conn = _running.driver = None

    async def _roll_back(
        self, conn: AsyncConnection, driver: sqlite3.Connection, write: bool
    ) -> None:
        """Roll back a failed unit; a connection that cannot be rolled back is not used again."""
        with contextlib.suppress(Exception):  # what could not be rolled back is checked below
            if conn.in_transaction():
                await conn.rollback()
            if driver.in_transaction:
                driver.rollback()
        if conn.in_transaction() or conn.invalidated or driver.in_transaction:
            self._conns.pop(write, None)
            await conn.close()

    async def dispose(self) -> None:
        for conn in self._conns.values():
            await conn.close()
        self._conns.clear()
        await self.engine.dispose()


class _Worker(_Runner):
    """One database thread and the engine made on it. The thread runs no event loop: a unit's
    coroutine is driven to its end in one go (``_drive``), so handing a unit over costs a queue
    put here and one wake-up of the caller's loop."""

    def __init__(
        self,
        name: str,
        make_engine: Callable[[], AsyncEngine],
        write_option: str,
        write_lock: _WriteLock,
    ) -> None:
        self.busy = 0
        self._write_lock = write_lock
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=name)
        engine = self.executor.submit(self._start, make_engine).result()
        super().__init__(engine, write_option, wait_busy=True)

    @staticmethod
    def _start(make_engine: Callable[[], AsyncEngine]) -> AsyncEngine:
        # aiosqlite and SQLAlchemy ask for the thread's event loop to make futures that are
        # done at once; it is never run.
        asyncio.set_event_loop(asyncio.new_event_loop())
        return make_engine()

    def run(self, unit: Unit[T], write: bool) -> tuple[T, float, float]:
        """On the worker's thread: the unit in one transaction; with the ``perf_counter`` times
        it started (its write lock taken) and ended."""
        if not write:
            started = time.perf_counter()
            return _drive(self._transaction(unit, write)), started, time.perf_counter()
        with self._write_lock:
            started = time.perf_counter()
            return _drive(self._transaction(unit, write)), started, time.perf_counter()

    def checkpoint(self) -> None:
        """On the worker's thread: a checkpoint (it copies what no reader still needs from the
        WAL to the database file), the bulk of it beside the writers, then what they wrote
        meanwhile under the process's write lock. SQLite starts the WAL over only once it was
        fully copied: with short units coming at once behind each other, checkpoints beside
        them alone left the WAL growing without end. The short units that find the lock taken
        meanwhile wait for it."""
        conn = _drive(self._connection(False))
        driver = _driver_of(conn)
        driver.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        with self._write_lock:
            driver.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _stop(self) -> None:
        _drive(self.dispose())
        asyncio.get_event_loop().close()

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self.executor, self._stop)
        await asyncio.to_thread(self.executor.shutdown)


class _OnLoop(_Runner):
    """Short write units on the thread that made it (the event loop's), never waiting: see the
    module docstring."""

    def __init__(
        self, make_engine: Callable[[], AsyncEngine], write_option: str, write_lock: _WriteLock
    ) -> None:
        super().__init__(make_engine(), write_option, wait_busy=False)
        self.thread = threading.get_ident()
        self._write_lock = write_lock

    def try_run(self, unit: Unit[T]) -> tuple[T, float, float] | _Refused:
        """The write unit in one transaction, with the ``perf_counter`` times it started and
        ended; why not, with nothing of it run, when a write lock is taken."""
        if not self._write_lock.acquire_nowait():
            return _Refused.LOCK_TAKEN
        try:
            started = time.perf_counter()
            try:
                result = _drive(self._transaction(unit, True))
            except _Busy:
                return _Refused.SQLITE_BUSY
            return result, started, time.perf_counter()
        finally:
            self._write_lock.release()

    def try_read(self, unit: Unit[T]) -> tuple[T, float, float] | _Refused:
        """The read unit in one transaction, with the times it started and ended; ``SQLITE_BUSY``
        when SQLite would have made it wait (a WAL reader seldom waits: while another
        connection resets the log), after which the caller runs it again elsewhere."""
        started = time.perf_counter()
        try:
            result = _drive(self._transaction(unit, False))
        except Exception as exc:
            if _is_busy(exc):
                return _Refused.SQLITE_BUSY
            raise
        return result, started, time.perf_counter()


class SqliteUnits:
    """The database threads of one SQLite file; ``run`` hands a unit to the least busy one."""

    def __init__(
        self,
        url: sa.URL,
        *,
        configure: Callable[[AsyncEngine], None],
        write_option: str,
        busy_timeout_s: float,
        threads: int = UNIT_THREADS,
        observer: UnitObserver | None = None,
    ) -> None:
        database = url.database or ""
        self._observer = observer

        def connector() -> sqlite3.Connection:
            return sqlite3.connect(database, timeout=busy_timeout_s)

        async def creator() -> InlineConnection:
            connection = InlineConnection(connector)
            await connection._connect()
            return connection

        def make_engine() -> AsyncEngine:
            engine = create_async_engine(
                url, async_creator=creator, hide_parameters=True, pool_size=2, max_overflow=2
            )
            configure(engine)
            return engine

        # Write units of this process queue on a lock before BEGIN IMMEDIATE: SQLite's own
        # busy handler would poll for the write lock with sleeps of up to 100 ms.
        self._write_lock = write_lock = _WriteLock()
        self._make_engine = make_engine
        self._write_option = write_option
        self._workers = [
            _Worker(f"vitalcast-sqlite-{i}", make_engine, write_option, write_lock)
            for i in range(threads)
        ]
        #: the short write units' runner, made on the first thread that runs one (the loop's)
        self._on_loop: _OnLoop | None = None
        #: short write units committed since the last checkpoint; the checkpoint running
        self._since_checkpoint = 0
        self._checkpointing: asyncio.Future[None] | None = None
        self._closed = False

    async def run(self, unit: Unit[T], *, write: bool, short: bool = False) -> T:
        """The unit's result, run in one transaction (``write``: taking SQLite's write lock at
        BEGIN, as ``Database.write`` does) on a database thread, or (``short``) on this thread:
        a write once this process's write lock is free, unless another process holds the
        file's, a read at once, unless SQLite answers busy (the module docstring); its
        exception if it raised (the transaction then rolled back)."""
        if self._closed:
            raise RuntimeError("the database is closed")
        if short:
            on_loop = self._on_loop
            if on_loop is None:
                on_loop = self._on_loop = _OnLoop(
                    self._make_engine, self._write_option, self._write_lock
                )
            if not write and on_loop.thread == threading.get_ident():
                read = on_loop.try_read(unit)
                if not isinstance(read, _Refused):
                    result, started, ended = read
                    if self._observer is not None:
                        self._observer(write, 0.0, ended - started, True)
                    return result
            elif on_loop.thread == threading.get_ident():
                called = time.perf_counter()
                while (ran := on_loop.try_run(unit)) is _Refused.LOCK_TAKEN:
                    await self._write_lock.released()
                if not isinstance(ran, _Refused):
                    result, started, ended = ran
                    if self._observer is not None:
                        self._observer(write, started - called, ended - started, True)
                    self._since_checkpoint += 1
                    if (
                        self._since_checkpoint >= CHECKPOINT_EVERY_UNITS
                        and self._checkpointing is None
                    ):
                        self._checkpoint()
                    return result
        worker = min(self._workers, key=lambda w: w.busy)
        worker.busy += 1
        handed = time.perf_counter()
        try:
            loop = asyncio.get_running_loop()
            result, started, ended = await loop.run_in_executor(
                worker.executor, worker.run, unit, write
            )
        finally:
            worker.busy -= 1
        if self._observer is not None:
            self._observer(write, started - handed, ended - started, False)
        return result

    @property
    def write_locked(self) -> bool:
        """Whether a unit of this process holds the write lock now (a test's probe)."""
        return self._write_lock.locked()

    def _checkpoint(self) -> None:
        """Start a checkpoint on the least busy database thread, not waited for: the loop's
        connection makes none itself (``_OnLoop``)."""
        self._since_checkpoint = 0
        worker = min(self._workers, key=lambda w: w.busy)
        worker.busy += 1
        running = asyncio.get_running_loop().run_in_executor(worker.executor, worker.checkpoint)
        self._checkpointing = running

        def done(future: asyncio.Future[None]) -> None:
            worker.busy -= 1
            self._checkpointing = None
            # a checkpoint that failed (the file closed under it) is tried again after the
            # next units; a busy one (another process's running) is no error, it stops short
            if not future.cancelled():
                future.exception()

        running.add_done_callback(done)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        on_loop, self._on_loop = self._on_loop, None
        if on_loop is not None and on_loop.thread == threading.get_ident():
            await on_loop.dispose()
        await asyncio.gather(*(worker.close() for worker in self._workers))


def is_file_url(url: sa.URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
