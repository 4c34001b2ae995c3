"""Samples by month (PostgreSQL partitions; one table on SQLite, same logical schema): a
record's identity stays one row whichever month it moves to, history from years ago lands,
range deletes, erasure and retention take the identity rows with the samples, and on
PostgreSQL retention drops whole months while today's inserts go on."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import PG_ADMIN_URL, TEST_SECRET, _pg_admin
from tests.lifecycle.traces import all_rows, rows_holding
from vitalcast.clock import SystemClock, now_ms
from vitalcast.db.engine import Database, create_engine
from vitalcast.db.migrate import upgrade
from vitalcast.db.partitions import Month, attached_months
from vitalcast.db.tables import health_samples, sample_identities
from vitalcast.lifecycle.erasure import ErasureService
from vitalcast.lifecycle.retention import DAY_MS, RetentionService
from vitalcast.settings import Settings
from vitalcast.testing import hr_sample
from vitalcast.wiring import build_worker

#: partitions exist on PostgreSQL only (SQLite keeps one table; retention deletes rows there,
#: see tests/lifecycle/test_retention.py)
postgres_only = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)


def _iso(ms: int) -> str:
    from vitalcast.clock import iso_ms

    return iso_ms(ms)


async def _post(client: httpx.AsyncClient, auth: dict[str, str], samples: list[Any]) -> Any:
    response = await client.post("/api/v1/samples", json={"samples": samples}, headers=auth)
    assert response.status_code == 200, response.text
    return response.json()


async def _rows(db: Database, *where: Any) -> list[Any]:
    async with db.read() as conn:
        query = sa.select(health_samples).where(*where).order_by(health_samples.c.start_ms)
        return list((await conn.execute(query)).all())


async def _identities(db: Database, user_id: str) -> dict[str, int]:
    async with db.read() as conn:
        i = sample_identities.c
        rows = await conn.execute(sa.select(i.record_id, i.start_ms).where(i.user_id == user_id))
        return {r.record_id: r.start_ms for r in rows}


async def _month_of_row(db: Database, record_id: str) -> str | None:
    """The partition a sample row is stored in (None on SQLite)."""
    if db.sqlite:
        return None
    async with db.read() as conn:
        return str(
            await conn.scalar(
                sa.text("SELECT tableoid::regclass::text FROM health_samples WHERE record_id = :r"),
                {"r": record_id},
            )
        )


def _months_back(k: int) -> Month:
    month = Month.of_ms(now_ms())
    for _ in range(k):
        month = Month(month.year - (month.month == 1), (month.month - 2) % 12 + 1)
    return month


async def test_a_record_sent_again_in_another_month_stays_one_row(
    client: httpx.AsyncClient, users: Any, db: Database
) -> None:
    user_id, token = await users.create()
    auth = {"Authorization": f"Bearer {token}"}
    old = _months_back(3).start_ms + 5 * DAY_MS
    new = now_ms() - 60_000
    assert Month.of_ms(old) != Month.of_ms(new)
    assert (await _post(client, auth, [hr_sample("moving", old, 70.0)]))["inserted"] == 1

    moved = await _post(client, auth, [hr_sample("moving", new, 71.0)])
    assert (moved["inserted"], moved["updated"]) == (0, 1)
    rows = await _rows(db, health_samples.c.user_id == user_id)
    assert [(r.record_id, r.start_ms, r.value) for r in rows] == [("moving", new, 71.0)]
    assert await _identities(db, user_id) == {"moving": new}
    if not db.sqlite:
        assert await _month_of_row(db, "moving") == Month.of_ms(new).name

    # Back to the old month, then deleted through ingest: still one row, a tombstone.
    back = await _post(client, auth, [hr_sample("moving", old, 72.0)])
    assert back["updated"] == 1
    again = await _post(client, auth, [hr_sample("moving", old, 72.0)])
    assert again["unchanged"] == 1
    body = {"deleted": [{"source": "healthkit", "record_id": "moving"}]}
    gone = await client.post("/api/v1/samples", json=body, headers=auth)
    assert gone.status_code == 200 and gone.json()["deleted"] == 1
    rows = await _rows(db, health_samples.c.user_id == user_id)
    assert [(r.start_ms, r.deleted) for r in rows] == [(old, True)]
    assert await _identities(db, user_id) == {"moving": old}
    if not db.sqlite:
        assert await _month_of_row(db, "moving") == Month.of_ms(old).name


async def test_history_from_years_ago_lands_in_months_created_on_demand(
    client: httpx.AsyncClient, users: Any, db: Database
) -> None:
    """An import of years of history: every sample is stored, none refused, whatever month."""
    user_id, token = await users.create()
    auth = {"Authorization": f"Bearer {token}"}
    first = Month(2016, 2).start_ms + 12 * 3_600_000
    samples = [hr_sample(f"h{k}", first + k * 40 * DAY_MS, 60.0 + k % 30) for k in range(40)]
    months = {Month.of_ms(first + k * 40 * DAY_MS) for k in range(40)}
    assert len(months) >= 30
    assert (await _post(client, auth, samples))["inserted"] == 40
    assert (await _post(client, auth, samples))["unchanged"] == 40
    assert len(await _rows(db, health_samples.c.user_id == user_id)) == 40
    assert len(await _identities(db, user_id)) == 40
    if not db.sqlite:
        async with db.read() as conn:
            attached = await attached_months(conn)
        assert months <= attached
        # The server's keeper made this month and the next three at start.
        ahead = [Month.of_ms(now_ms())]
        for _ in range(3):
            ahead.append(ahead[-1].next())
        assert set(ahead) <= attached


async def test_range_delete_takes_the_identity_rows_with_the_samples(
    client: httpx.AsyncClient, users: Any, db: Database
) -> None:
    user_id, token = await users.create()
    auth = {"Authorization": f"Bearer {token}"}
    base = _months_back(2).start_ms + DAY_MS
    samples = [hr_sample(f"d{k}", base + k * 10 * DAY_MS, 65.0) for k in range(6)]
    await _post(client, auth, samples)
    body = {"from": _iso(base + 5 * DAY_MS), "to": _iso(base + 35 * DAY_MS)}
    deleted = await client.post("/api/v1/samples/delete", json=body, headers=auth)
    assert deleted.status_code == 200 and deleted.json()["deleted"] == 3
    assert set(await _identities(db, user_id)) == {"d0", "d4", "d5"}
    # A record sent again after its deletion is a new sample.
    resent = await _post(client, auth, [hr_sample("d2", base + 20 * DAY_MS, 66.0)])
    assert resent["inserted"] == 1
    assert len(await _rows(db, health_samples.c.user_id == user_id)) == 4


async def test_erasure_leaves_nothing_in_any_month_or_identity_row(
    client: httpx.AsyncClient, users: Any, db: Database
) -> None:
    """The erasure scan reads every table the database has: on PostgreSQL the partitioned
    parent and each month (relkind 'p' and 'r') and the identity table."""
    victim, token = await users.create("erased-in-months")
    other, other_token = await users.create("kept-in-months")
    for tag, auth in (("v", token), ("o", other_token)):
        samples = [
            hr_sample(f"{tag}{k}", _months_back(k).start_ms + 2 * DAY_MS, 60.0) for k in range(4)
        ]
        await _post(client, {"Authorization": f"Bearer {auth}"}, samples)
    before = await all_rows(db)
    if not db.sqlite:
        assert {m.name for m in (_months_back(k) for k in range(4))} <= set(
            rows_holding(before, [victim])
        )
    assert "sample_identities" in rows_holding(before, [victim])
    erasure = ErasureService(db, SystemClock(), revoke=_no_revoke, redis=None, batch_rows=2)
    await erasure.request(victim)
    await erasure.run_pending()
    after = await all_rows(db)
    assert rows_holding(after, [victim, "erased-in-months"]) == {}
    assert len(await _identities(db, other)) == 4


async def _no_revoke(user_id: str) -> None:
    return None


@postgres_only
async def test_retention_drops_whole_months_while_today_is_written(
    client: httpx.AsyncClient, users: Any, db: Database
) -> None:
    user_id, token = await users.create()
    auth = {"Authorization": f"Bearer {token}"}
    expired = [_months_back(k) for k in (3, 4, 5)]
    boundary = _months_back(2)
    old = [hr_sample(f"x{m.name}", m.start_ms + 3 * DAY_MS, 70.0) for m in expired]
    edge = [
        hr_sample("edge-old", boundary.start_ms + DAY_MS, 70.0),
        hr_sample("edge-new", boundary.start_ms + 20 * DAY_MS, 70.0),
    ]
    await _post(client, auth, old + edge)
    now = now_ms()
    days = -(-(now - (boundary.start_ms + 15 * DAY_MS)) // DAY_MS)
    cutoff = now - days * DAY_MS
    assert boundary.start_ms + DAY_MS < cutoff < boundary.start_ms + 20 * DAY_MS

    stop = asyncio.Event()
    written: list[str] = []

    async def today() -> None:
        n = 0
        while not stop.is_set() or n < 5:
            record = f"today-{n}"
            await _post(client, auth, [hr_sample(record, now_ms() - 1_000, 80.0)])
            written.append(record)
            n += 1

    writer = asyncio.create_task(today())
    try:
        done = await RetentionService(db, SystemClock(), days=days).run()
    finally:
        stop.set()
        await writer

    assert done.partitions_dropped >= 3 and done.samples_deleted == 1
    async with db.read() as conn:
        attached = await attached_months(conn)
        tables = set(
            await conn.scalars(sa.text("SELECT relname FROM pg_class WHERE relkind IN ('r','p')"))
        )
    assert not {m for m in expired} & attached
    assert not {m.name for m in expired} & tables
    assert boundary in attached
    left = await _rows(db, health_samples.c.user_id == user_id)
    assert sorted(r.record_id for r in left) == sorted(["edge-new", *written])
    assert set(await _identities(db, user_id)) == {"edge-new", *written}
    # An expired record sent again is stored again: its month is created anew.
    again = await _post(client, auth, old[:1])
    assert again["inserted"] == 1


_COLUMNS = "id, user_id, source, record_id, metric, value, unit, start_ms, end_ms, device, deleted"


async def _fill_at_0005(url: str) -> None:
    """Two users' samples over five months (one a tombstone), written as 0005 stored them."""
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            for user in ("mig-a", "mig-b"):
                await conn.execute(
                    sa.text("INSERT INTO users (id, name, created_at_ms) VALUES (:u, :u, 0)"),
                    {"u": user},
                )
            rows = [
                {
                    "u": user,
                    "r": f"{user}-{k}",
                    "t": _months_back(k % 5).start_ms + (k + 1) * 3_600_000,
                    "d": k == 7,
                }
                for user in ("mig-a", "mig-b")
                for k in range(12)
            ]
            await conn.execute(
                sa.text(
                    "INSERT INTO health_samples (user_id, source, record_id, metric, value, unit, "
                    "start_ms, end_ms, deleted, change_seq) "
                    "VALUES (:u, 'healthkit', :r, 'heart_rate', 61.5, 'bpm', :t, :t, :d, 3)"
                ),
                rows,
            )
    finally:
        await engine.dispose()


async def _snapshot(url: str) -> tuple[list[Any], list[Any], str]:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            rows = (
                await conn.execute(sa.text(f"SELECT {_COLUMNS} FROM health_samples ORDER BY id"))
            ).all()
            has_identities = await conn.scalar(sa.text("SELECT to_regclass('sample_identities')"))
            identities = (
                (
                    await conn.execute(
                        sa.text(
                            "SELECT user_id, source, record_id, start_ms FROM sample_identities "
                            "ORDER BY record_id"
                        )
                    )
                ).all()
                if has_identities
                else []
            )
            kind = await conn.scalar(
                sa.text("SELECT relkind::text FROM pg_class WHERE oid = 'health_samples'::regclass")
            )
        return list(rows), list(identities), str(kind)
    finally:
        await engine.dispose()


async def test_migration_0006_converts_a_populated_database_and_back(
    database_url: str, tmp_path: Any
) -> None:
    if database_url.startswith("sqlite"):
        # SQLite: the same rows and identities after an upgrade from 0005 (one table there).
        url = f"sqlite+aiosqlite:///{tmp_path / 'at0005.db'}"
    else:
        name = f"vc_mig_{uuid.uuid4().hex[:10]}"
        await _pg_admin(f'CREATE DATABASE "{name}"')
        url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        await asyncio.to_thread(upgrade, url, "0005")
        await _fill_at_0005(url)
        if url.startswith("sqlite"):
            await _check_sqlite_upgrade(url)
            return
        before, _, kind = await _snapshot(url)
        assert kind == "r" and len(before) == 24
        await asyncio.to_thread(upgrade, url)
        after, identities, kind = await _snapshot(url)
        assert kind == "p"
        assert [tuple(r) for r in after] == [tuple(r) for r in before]
        assert sorted((r.user_id, r.record_id, r.start_ms) for r in before) == sorted(
            (i.user_id, i.record_id, i.start_ms) for i in identities
        )
        db = Database(create_engine(url))
        try:
            async with db.read() as conn:
                attached = await attached_months(conn)
                indexes = set(
                    await conn.scalars(
                        sa.text(
                            "SELECT indexname FROM pg_indexes WHERE tablename = 'health_samples'"
                        )
                    )
                )
            assert {Month.of_ms(r.start_ms) for r in before} <= attached
            assert Month.of_ms(now_ms()).next() in attached
            assert indexes == {
                "pk_health_samples",
                "uq_health_samples_user_id_source_record_id_start_ms",
                "ix_health_samples_user_metric_start",
            }
            # Ids go on from the old sequence; a converted record sent again stays one row.
            from vitalcast.ingest.repository import write_samples
            from vitalcast.samples import Sample

            moved = Sample(
                source="healthkit",
                record_id="mig-a-1",
                metric="heart_rate",
                value=62.0,
                unit="bpm",
                start_ms=now_ms() - 1_000,
                end_ms=now_ms() - 1_000,
                device=None,
            )
            fresh = dataclasses.replace(moved, record_id="mig-a-new")
            await db.partitions.ensure([moved.start_ms])
            async with db.write() as conn:
                written = await write_samples(conn, "mig-a", [moved, fresh], [], change_seq=4)
            assert (written.inserted, written.updated) == (1, 1)
            async with db.read() as conn:
                ids = dict(
                    (
                        await conn.execute(
                            sa.text(
                                "SELECT record_id, id FROM health_samples "
                                "WHERE record_id IN ('mig-a-1', 'mig-a-new')"
                            )
                        )
                    ).all()
                )
            assert ids["mig-a-new"] > max(r.id for r in before)
            assert ids["mig-a-1"] == next(r.id for r in before if r.record_id == "mig-a-1")
        finally:
            await db.dispose()

        await asyncio.to_thread(_downgrade, url, "0005")
        down, _, kind = await _snapshot(url)
        assert kind == "r" and len(down) == 25
    finally:
        if not url.startswith("sqlite"):
            await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _downgrade(url: str, revision: str) -> None:
    from alembic import command

    from vitalcast.db.migrate import alembic_config

    command.downgrade(alembic_config(url), revision)


async def _check_sqlite_upgrade(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            before = (
                await conn.execute(sa.text(f"SELECT {_COLUMNS} FROM health_samples ORDER BY id"))
            ).all()
    finally:
        await engine.dispose()
    await asyncio.to_thread(upgrade, url)
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            after = (
                await conn.execute(sa.text(f"SELECT {_COLUMNS} FROM health_samples ORDER BY id"))
            ).all()
            identities = await conn.scalar(sa.text("SELECT count(*) FROM sample_identities"))
    finally:
        await engine.dispose()
    assert [tuple(r) for r in after] == [tuple(r) for r in before] and len(before) == 24
    assert identities == 24


@postgres_only
async def test_a_worker_creates_the_months_ahead_at_start(
    database_url: str, tmp_path: Any, redis_url: str, unique_prefix: str
) -> None:
    ahead = Month.of_ms(now_ms()).next().next()
    db = Database(create_engine(database_url))
    try:
        async with db.write() as conn:
            # empty: no sample may be more than 5 minutes ahead of the clock
            await conn.execute(sa.text(f'DROP TABLE IF EXISTS "{ahead.name}"'))
            assert ahead not in await attached_months(conn)
        settings = Settings(
            data_dir=tmp_path / "data",
            database_url=database_url,
            secret=TEST_SECRET,
            redis_url=redis_url,
            queue_prefix=f"{unique_prefix}q",
            socketio_channel=f"{unique_prefix}sio",
        )
        worker = build_worker(settings)
        try:
            await worker.start()
        finally:
            await worker.close()
        async with db.read() as conn:
            assert ahead in await attached_months(conn)
    finally:
        await db.dispose()


@postgres_only
async def test_a_month_left_detached_by_a_cut_retention_is_finished_by_writers_and_the_next_run(
    client: httpx.AsyncClient, users: Any, db: Database
) -> None:
    """A retention cut between detaching a month and dropping it leaves the month's table and
    its identity rows behind: a re-send into that month still lands (the writer finishes the
    drop before creating the month anew), and the next retention run drops the other."""
    user_id, token = await users.create()
    auth = {"Authorization": f"Bearer {token}"}
    older, newer = _months_back(8), _months_back(7)
    sent = {m: hr_sample(f"left-{m.name}", m.start_ms + 2 * DAY_MS, 70.0) for m in (older, newer)}
    await _post(client, auth, list(sent.values()))
    async with db.write() as conn:
        for month in (older, newer):
            await conn.execute(
                sa.text(f'ALTER TABLE health_samples DETACH PARTITION "{month.name}"')
            )
    assert await _rows(db, health_samples.c.user_id == user_id) == []
    assert len(await _identities(db, user_id)) == 2

    resent = await _post(client, auth, [sent[newer] | {"value": 71.0}])
    assert resent["inserted"] == 1
    rows = await _rows(db, health_samples.c.user_id == user_id)
    assert [(r.record_id, r.value) for r in rows] == [(f"left-{newer.name}", 71.0)]

    now = now_ms()
    days = -(-(now - (newer.start_ms + DAY_MS)) // DAY_MS)
    assert older.end_ms <= now - days * DAY_MS < newer.start_ms + 2 * DAY_MS
    done = await RetentionService(db, SystemClock(), days=days).run()
    assert done.partitions_dropped >= 1
    async with db.read() as conn:
        left = await conn.scalar(sa.text("SELECT to_regclass(:n)::text"), {"n": older.name})
        attached = await attached_months(conn)
    assert left is None and newer in attached
    assert await _identities(db, user_id) == {f"left-{newer.name}": newer.start_ms + 2 * DAY_MS}
