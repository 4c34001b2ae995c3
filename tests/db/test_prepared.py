"""``Prepared``: a statement built once runs on the driver's own connection (sqlite3 in a unit,
asyncpg under SQLAlchemy's connection) in the caller's transaction, with the rows, errors and
statement events that ``conn.execute`` gives."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.services import service_missing
from vitalcast.api.errors import unexpected_problem
from vitalcast.db import engine as engine_module
from vitalcast.db.engine import Database, create_engine
from vitalcast.db.errors import DATABASE_ERRORS, DATABASE_RETRY_AFTER_S, is_outage
from vitalcast.db.prepared import Prepared
from vitalcast.db.tables import users

_ADD = Prepared(
    sa.insert(users).values(
        id=sa.bindparam("id"),
        name=sa.bindparam("name"),
        created_at_ms=sa.bindparam("at", type_=sa.BigInteger),
        change_seq=0,
    )
)
_BY_IDS = Prepared(
    sa.select(users.c.id, users.c.name, users.c.created_at_ms)
    .where(users.c.id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(users.c.id)
)
_BY_PAIRS = Prepared(
    sa.select(users.c.id)
    .where(
        sa.tuple_(users.c.id, users.c.name).in_(
            sa.bindparam("pairs", expanding=True, type_=sa.TupleType(sa.String(), sa.String()))
        ),
        users.c.created_at_ms >= sa.bindparam("since", type_=sa.BigInteger),
    )
    .order_by(users.c.id)
)
_RENAME = Prepared(
    sa.update(users)
    .where(users.c.id == sa.bindparam("id"))
    .values(name=sa.bindparam("name"))
    .returning(users.c.id, users.c.name)
)


@pytest.fixture
async def pg_db(pg_database_url: str | None) -> AsyncIterator[Database]:
    if pg_database_url is None:
        service_missing("PostgreSQL")
    assert pg_database_url is not None
    database = Database(create_engine(pg_database_url))
    yield database
    await database.dispose()


async def _ids(db: Database, ids: list[str]) -> list[str]:
    async def read(conn: AsyncConnection) -> list[str]:
        return [row.id for row in await _BY_IDS.rows(conn, {"ids": ids})]

    return await db.unit(read)


async def test_a_prepared_write_first_in_a_unit_is_in_its_transaction(db: Database) -> None:
    async def add_then_fail(conn: AsyncConnection) -> None:
        await _ADD.run(conn, {"id": "p-dropped", "name": "p-dropped", "at": 1})
        raise LookupError("the unit's own error")

    with pytest.raises(LookupError):
        await db.unit(add_then_fail, write=True)
    with pytest.raises(LookupError):
        await db.unit(add_then_fail, derived=True)
    await db.unit(lambda conn: _ADD.run(conn, {"id": "p-kept", "name": "p-kept", "at": 1}))
    assert await _ids(db, ["p-dropped", "p-kept"]) == ["p-kept"]


async def test_rows_answer_by_name_and_position_and_lists_expand(db: Database) -> None:
    many = [{"id": f"p-{i}", "name": f"name-{i}", "at": 10 + i} for i in range(4)]
    await db.unit(lambda conn: _ADD.run(conn, many), write=True)

    async def read(conn: AsyncConnection) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
        return (
            await _BY_IDS.rows(conn, {"ids": ["p-2", "p-0", "missing"]}),
            await _BY_IDS.rows(conn, {"ids": []}),
            await _BY_PAIRS.rows(
                conn, {"pairs": [("p-1", "name-1"), ("p-3", "wrong")], "since": 0}
            ),
            await _BY_PAIRS.rows(conn, {"pairs": [], "since": 0}),
        )

    found, none, pairs, no_pairs = await db.unit(read)
    assert [(r.id, r.name, r.created_at_ms) for r in found] == [
        ("p-0", "name-0", 10),
        ("p-2", "name-2", 12),
    ]
    assert [tuple(r) for r in found] == [("p-0", "name-0", 10), ("p-2", "name-2", 12)]
    assert found[0][2] == 10
    assert none == [] and no_pairs == []
    assert [r.id for r in pairs] == ["p-1"]
    renamed = await db.unit(
        lambda conn: _RENAME.rows(conn, {"id": "p-3", "name": "renamed"}), write=True
    )
    assert [(r.id, r.name) for r in renamed] == [("p-3", "renamed")]


async def test_errors_are_the_drivers_as_sqlalchemy_raises_them(db: Database) -> None:
    """On PostgreSQL SQLAlchemy's (a lost connection is invalidated as through
    ``conn.execute``); in a SQLite unit sqlite3's own, as ``db.units`` runs it."""
    row = {"id": "p-twice", "name": "p-twice", "at": 1}
    await db.unit(lambda conn: _ADD.run(conn, row), write=True)
    expected = sqlite3.IntegrityError if db.sqlite else sa.exc.IntegrityError
    with pytest.raises(expected):
        await db.unit(lambda conn: _ADD.run(conn, row), write=True)
    assert await _ids(db, ["p-twice"]) == ["p-twice"]


async def test_statement_listeners_hear_prepared_statements_on_postgres(
    pg_db: Database,
) -> None:
    """(A SQLite unit runs on its thread's own engine, ``db.units``.)"""
    db = pg_db
    heard: list[str] = []

    def listen(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        heard.append(statement)

    sa.event.listen(db.engine.sync_engine, "before_cursor_execute", listen)
    try:
        await _ids(db, ["nobody"])
    finally:
        sa.event.remove(db.engine.sync_engine, "before_cursor_execute", listen)
    assert any("FROM users" in statement for statement in heard)


async def test_a_locked_sqlite_file_is_an_outage_answered_503(
    sqlite_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prepared write in a SQLite unit that cannot get the write lock raises sqlite3's own
    error (no SQLAlchemy wrapper on that path): it must still count as a database outage, a 503
    with Retry-After and no partial write, as the same lock met through SQLAlchemy is."""
    path = tmp_path / "locked.db"
    shutil.copy(sqlite_template, path)
    monkeypatch.setattr(engine_module, "SQLITE_BUSY_TIMEOUT_MS", 50)
    db = Database(create_engine(f"sqlite+aiosqlite:///{path}"))
    holder = sqlite3.connect(path, timeout=0)
    try:
        holder.execute("BEGIN IMMEDIATE")
        row = {"id": "p-locked", "name": "p-locked", "at": 1}
        with pytest.raises(sqlite3.OperationalError) as raised:
            await db.unit(lambda conn: _ADD.run(conn, row))
        assert isinstance(raised.value, DATABASE_ERRORS) and is_outage(raised.value)
        answer = unexpected_problem(raised.value)
        assert answer.status_code == 503
        assert json.loads(bytes(answer.body))["code"] == "DATABASE_UNAVAILABLE"
        assert answer.headers["retry-after"] == str(DATABASE_RETRY_AFTER_S)
        holder.rollback()
        assert await _ids(db, ["p-locked"]) == []
        await db.unit(lambda conn: _ADD.run(conn, row))
        assert await _ids(db, ["p-locked"]) == ["p-locked"]
    finally:
        holder.close()
        await db.dispose()
