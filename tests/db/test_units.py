"""``Database.unit``: one transaction's body, committed when it returns, rolled back when it
raises; on a SQLite file it runs on a database thread (one hop), elsewhere on the caller's loop."""

from __future__ import annotations

import asyncio
import threading

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
