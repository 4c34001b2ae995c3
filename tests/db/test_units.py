"""``Database.unit``: one transaction's body, committed when it returns, rolled back when it
raises; on a SQLite file it runs on a database thread (one hop), elsewhere on the caller's loop."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from vitalcast.db.engine import Database
from vitalcast.db.prepared import Prepared
from vitalcast.db.tables import users
from vitalcast.db.units import UnitSuspended


async def _count(db: Database, name: str) -> int:
    async def count(conn: AsyncConnection) -> int:
        return int(
            await conn.scalar(
                sa.select(sa.func.count()).select_from(users).where(users.c.name == name)
            )
            or 0
        )

    return await db.unit(count)


def _insert(name: str) -> sa.Insert:
    return sa.insert(users).values(id=f"id-{name}", name=name, created_at_ms=0, change_seq=0)


async def test_a_unit_commits_when_it_returns_and_rolls_back_when_it_raises(db: Database) -> None:
    async def add(conn: AsyncConnection) -> str:
        await conn.execute(_insert("kept"))
        return "done"

    async def add_then_fail(conn: AsyncConnection) -> None:
        await conn.execute(_insert("dropped"))
        raise LookupError("the unit's own error")

    assert await db.unit(add, write=True) == "done"
    with pytest.raises(LookupError):
        await db.unit(add_then_fail, write=True)
    assert await _count(db, "kept") == 1
    assert await _count(db, "dropped") == 0
    # the connection that saw the failure serves the next unit
    await db.unit(lambda conn: conn.execute(_insert("after")), write=True)
    assert await _count(db, "after") == 1


async def test_units_in_parallel_all_commit_and_run_off_the_loop_thread_on_sqlite(
    db: Database,
) -> None:
    threads: set[int] = set()

    async def add(conn: AsyncConnection, i: int) -> None:
        threads.add(threading.get_ident())
        await conn.execute(_insert(f"parallel-{i}"))

    await asyncio.gather(*(db.unit(lambda c, i=i: add(c, i), write=True) for i in range(40)))
    assert sum([await _count(db, f"parallel-{i}") for i in range(40)]) == 40
    if db.sqlite:
        assert threading.get_ident() not in threads
    else:
        assert threads == {threading.get_ident()}


#: a test of SQLite's own locks, WAL or the SQLite units (the write lock, the loop's runner)
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

_INSERT = Prepared(
    sa.insert(users).values(
        id=sa.bindparam("id"), name=sa.bindparam("name"), created_at_ms=0, change_seq=0
    )
)


async def test_a_unit_of_prepared_statements_is_one_transaction_with_its_sqlalchemy_ones(
    db: Database,
) -> None:
    """Prepared statements go to the driver beside SQLAlchemy's transaction objects (on SQLite
    the unit's BEGIN and COMMIT do too): a unit of them alone commits, and one that also runs a
    statement through SQLAlchemy commits or rolls back as one."""

    async def prepared_only(conn: AsyncConnection) -> None:
        await _INSERT.run(conn, {"id": "id-p", "name": "prepared"})

    async def mixed_then_fail(conn: AsyncConnection) -> None:
        await _INSERT.run(conn, {"id": "id-m1", "name": "mixed-1"})
        await conn.execute(_insert("mixed-core"))
        await _INSERT.run(conn, {"id": "id-m2", "name": "mixed-2"})
        raise LookupError("the unit's own error")

    async def mixed(conn: AsyncConnection) -> None:
        await conn.execute(_insert("both-core"))
        await _INSERT.run(conn, {"id": "id-b", "name": "both"})

    await db.unit(prepared_only, write=True)
    with pytest.raises(LookupError):
        await db.unit(mixed_then_fail, write=True)
    await db.unit(mixed, write=True)
    names = ("prepared", "mixed-1", "mixed-core", "mixed-2", "both-core", "both")
    assert [await _count(db, n) for n in names] == [1, 0, 0, 0, 1, 1]


def _database_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("vitalcast-sqlite")}


async def test_dispose_stops_the_database_threads(db: Database) -> None:
    before = _database_threads()
    await _count(db, "nobody")
    assert len(_database_threads() - before) == (2 if db.sqlite else 0)
    await db.dispose()
    await db.dispose()
    assert _database_threads() - before == set()


async def test_a_unit_that_waits_for_the_loop_fails_on_sqlite_and_leaves_nothing(
    db: Database,
) -> None:
    """On SQLite a unit runs on a database thread with no event loop: waiting for anything but
    the database is a bug, and it fails loudly (its transaction rolled back) instead of
    stalling the thread."""

    async def add_then_wait(conn: AsyncConnection) -> None:
        await conn.execute(_insert("waited"))
        await asyncio.sleep(0)

    if not db.sqlite:
        await db.unit(add_then_wait, write=True)
        assert await _count(db, "waited") == 1
        return
    with pytest.raises(UnitSuspended):
        await db.unit(add_then_wait, write=True)
    assert await _count(db, "waited") == 0


async def test_a_short_write_unit_runs_on_the_loop_thread_and_is_observed(db: Database) -> None:
    """A short write unit finds no write lock taken and runs on the caller's thread (no hop
    to a database thread), committed, and the unit observer hears it with its lock time."""
    heard: list[tuple[bool, bool]] = []
    db.unit_observer = lambda write, _waited, _ran, looped: heard.append((write, looped))
    threads: set[int] = set()

    async def add(conn: AsyncConnection, i: int) -> None:
        threads.add(threading.get_ident())
        await _INSERT.run(conn, {"id": f"id-short-{i}", "name": f"short-{i}"})

    for i in range(3):
        await db.unit(lambda c, i=i: add(c, i), write=True, short=True)
    await db.unit(lambda c: add(c, 3), derived=True, short=True)
    assert threads == {threading.get_ident()}
    assert sum([await _count(db, f"short-{i}") for i in range(4)]) == 4
    if db.sqlite:
        assert heard[:4] == [(True, True)] * 4
        assert heard[4:] == [(False, False)] * 4  # the counts: read units, on a thread


async def test_a_short_unit_that_raises_or_waits_leaves_nothing_and_the_next_one_commits(
    db: Database,
) -> None:
    """On the loop's thread a short unit is the same transaction: one that raises after its
    writes rolls back all of them, one that waits for the loop fails (on SQLite) and leaves
    nothing, and the connection serves the next unit."""

    async def add_then_fail(conn: AsyncConnection) -> None:
        await _INSERT.run(conn, {"id": "id-f1", "name": "failed-1"})
        await conn.execute(_insert("failed-core"))
        raise LookupError("the unit's own error")

    async def add_then_wait(conn: AsyncConnection) -> None:
        await _INSERT.run(conn, {"id": "id-w1", "name": "waited-short"})
        await asyncio.sleep(0)

    with pytest.raises(LookupError):
        await db.unit(add_then_fail, write=True, short=True)
    if db.sqlite:
        with pytest.raises(UnitSuspended):
            await db.unit(add_then_wait, write=True, short=True)
    await db.unit(lambda c: _INSERT.run(c, {"id": "id-n", "name": "next"}), write=True, short=True)
    names = ("failed-1", "failed-core", "waited-short", "next")
    assert [await _count(db, n) for n in names] == [0, 0, 0, 1]


_HOLD_WRITE_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute(
    "INSERT INTO users (id, name, created_at_ms, change_seq) VALUES ('id-o', 'other', 0, 0)"
)
print("holding", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
print("committed", flush=True)
"""


@contextlib.asynccontextmanager
async def _holding_write_lock(database_url: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """Another process holding the SQLite file's write lock (``_HOLD_WRITE_LOCK``) until it is
    told ``go``; killed if the test ends before."""
    other = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _HOLD_WRITE_LOCK,
        database_url.partition(":///")[2],
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert other.stdout is not None
    try:
        assert await other.stdout.readline() == b"holding\n"
        yield other
    finally:
        if other.returncode is None:
            other.kill()
        await other.wait()


@sqlite_only
async def test_a_short_unit_waits_on_a_database_thread_while_another_process_writes(
    db: Database, database_url: str
) -> None:
    """When another process (a CLI command) holds the SQLite file's write lock, a short unit
    does not fail with SQLITE_BUSY on the loop: it runs on a database thread, which waits for
    the lock, and commits after the other process's transaction."""
    async with _holding_write_lock(database_url) as other:
        assert other.stdin is not None and other.stdout is not None
        ran_on: list[int] = []
        heard: list[bool] = []
        db.unit_observer = lambda _write, _waited, _ran, looped: heard.append(looped)

        async def add(conn: AsyncConnection) -> int:
            ran_on.append(threading.get_ident())
            await _INSERT.run(conn, {"id": "id-a", "name": "after-other"})
            return await _COUNT_OTHER.scalar(conn)

        unit = asyncio.create_task(db.unit(add, write=True, short=True))
        # the unit is refused on the loop at BEGIN, before any of it ran
        await asyncio.sleep(0.2)
        assert not unit.done() and not heard
        other.stdin.write(b"go\n")
        assert await other.stdout.readline() == b"committed\n"
        # it ran on a database thread, after the other process's commit (it sees its row)
        assert await unit == 1
        assert ran_on and threading.get_ident() not in ran_on
        assert heard == [False]
        assert await _count(db, "after-other") == 1


@sqlite_only
async def test_a_short_read_unit_runs_on_the_loop_thread_while_another_process_writes(
    db: Database, database_url: str
) -> None:
    """A short read unit (a token's user) runs on the caller's thread, no hop, and a writer
    holding the file's write lock (another process) holds it up no more than a WAL reader:
    it sees what was committed before, not the open transaction; the observer hears a read
    run on the loop."""
    heard: list[tuple[bool, bool]] = []
    db.unit_observer = lambda write, _waited, _ran, looped: heard.append((write, looped))
    await db.unit(lambda c: _INSERT.run(c, {"id": "id-r", "name": "read-me"}), write=True)
    threads: list[int] = []

    async def count(conn: AsyncConnection, name: str) -> int:
        threads.append(threading.get_ident())
        return int(
            await conn.scalar(
                sa.select(sa.func.count()).select_from(users).where(users.c.name == name)
            )
            or 0
        )

    async with _holding_write_lock(database_url) as other:
        assert other.stdin is not None and other.stdout is not None
        assert await db.unit(lambda c: count(c, "read-me"), short=True) == 1
        assert await db.unit(lambda c: count(c, "other"), short=True) == 0
        other.stdin.write(b"go\n")
        assert await other.stdout.readline() == b"committed\n"
    assert await db.unit(lambda c: count(c, "other"), short=True) == 1
    assert threads == [threading.get_ident()] * 3
    assert heard[1:] == [(False, True)] * 3


_COUNT_OTHER = Prepared(
    sa.select(sa.func.count()).select_from(users).where(users.c.name == "other")
)


@sqlite_only
async def test_a_short_unit_waits_on_the_loop_while_a_database_thread_holds_the_lock(
    db: Database, database_url: str
) -> None:
    """While a write unit on a database thread holds the process's write lock (here waiting
    for another process's), a short unit waits for it without blocking the loop, then runs on
    the loop's thread after it."""
    async with _holding_write_lock(database_url) as other:
        assert other.stdin is not None and other.stdout is not None
        ran: list[tuple[str, bool]] = []

        async def add(conn: AsyncConnection, name: str) -> None:
            ran.append((name, threading.get_ident() == loop_thread))
            await _INSERT.run(conn, {"id": f"id-{name}", "name": name})

        loop_thread = threading.get_ident()
        long_unit = asyncio.create_task(db.unit(lambda c: add(c, "long"), write=True))
        # the long unit holds the process's lock, waiting at BEGIN
        for _ in range(3_000):
            if db._units is not None and db._units.write_locked:
                break
            await asyncio.sleep(0.01)
        assert db._units is not None and db._units.write_locked
        short_unit = asyncio.create_task(db.unit(lambda c: add(c, "short"), write=True, short=True))
        # the loop goes on meanwhile: a read unit is answered
        assert await _count(db, "other") == 0
        assert ran == [] and not short_unit.done()
        other.stdin.write(b"go\n")
        await asyncio.gather(long_unit, short_unit)
        assert ran == [("long", False), ("short", True)]
        assert [await _count(db, n) for n in ("other", "long", "short")] == [1, 1, 1]


@sqlite_only
async def test_short_units_on_the_loop_keep_the_wal_checkpointed(
    db: Database, database_url: str
) -> None:
    """The loop's connection makes no checkpoint itself (it would copy pages and sync files on
    the loop): the database threads checkpoint behind it, so the WAL of many short writes stays
    a fraction of what they wrote instead of growing with every one."""
    name = "x" * 16_000
    units = 1_500
    for i in range(units):
        await db.unit(
            lambda c, i=i: _INSERT.run(c, {"id": f"id-wal-{i}", "name": f"{i}{name}"}),
            write=True,
            short=True,
        )
        await asyncio.sleep(0)  # a server's loop turns between its requests
    wal = Path(database_url.partition(":///")[2] + "-wal")
    # Every unit wrote its row and its index entry: with no checkpoint the WAL holds 99 MB of
    # them, on a quiet machine 10 MB (a checkpoint every 100 units). On a loaded one a
    # checkpoint's copy and sync take longer while the loop writes on (27 MB seen in CI), so
    # the bound is half of the uncheckpointed WAL, not the quiet figure.
    assert await asyncio.to_thread(_size, wal) < 2 * units * len(name)


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0
