"""The operators' commands: ``vitalcast users list``, ``users erase NAME`` and ``retention run``,
as real subprocesses on a real database."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import sqlalchemy as sa

from tests.accounts import new_user
from tests.conftest import in_thread
from tests.lifecycle.traces import all_rows, rows_holding
from tests.processes import run_cli, vitalcast_env
from vitalcast.clock import now_ms
from vitalcast.db.engine import Database, create_engine
from vitalcast.db.tables import health_samples
from vitalcast.lifecycle.retention import DAY_MS
from vitalcast.testing import insert_sample_rows


async def _samples(url: str, user_id: str, starts: list[int]) -> None:
    db = Database(create_engine(url))
    try:
        await insert_sample_rows(
            db,
            [
                {
                    "user_id": user_id,
                    "source": "cli",
                    "record_id": f"r{at}",
                    "metric": "heart_rate",
                    "value": 70.0,
                    "unit": "bpm",
                    "start_ms": at,
                    "end_ms": at,
                    "device": None,
                    "deleted": False,
                    "change_seq": 1,
                }
                for at in starts
            ],
        )
    finally:
        await db.dispose()


async def _starts(url: str, user_id: str) -> list[int]:
    db = Database(create_engine(url))
    try:
        async with db.read() as conn:
            query = sa.select(health_samples.c.start_ms).where(health_samples.c.user_id == user_id)
            return sorted(await conn.scalars(query))
    finally:
        await db.dispose()


def test_users_list_erase_and_retention_run(database_url: str, tmp_path: Path) -> None:
    env = vitalcast_env(
        tmp_path / "data", database_url=database_url, raw_retention_days="5", log_level="warning"
    )
    keeper, _ = in_thread(asyncio.run, new_user(database_url, "cli-keeper"))
    erased, _ = in_thread(asyncio.run, new_user(database_url, "cli-erased-person"))
    now = now_ms()
    in_thread(asyncio.run, _samples(database_url, keeper, [now - 10 * DAY_MS, now - 60_000]))
    in_thread(asyncio.run, _samples(database_url, erased, [now - 120_000, now - 60_000]))

    listed = run_cli(["users", "list"], env)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split("\t") == ["name", "id", "sessions", "samples", "state"]
    assert f"cli-erased-person\t{erased}\t0\t2\tactive" in lines

    erase = run_cli(["users", "erase", "cli-erased-person"], env)
    assert erase.returncode == 0, erase.stderr
    # two samples, their two identity rows, the user
    assert erase.stdout.strip() == "erased cli-erased-person: 5 rows"
    assert "cli-erased-person" not in run_cli(["users", "list"], env).stdout
    db = Database(create_engine(database_url))
    try:
        assert rows_holding(in_thread(asyncio.run, all_rows(db)), [erased]) == {}
    finally:
        in_thread(asyncio.run, db.dispose())
    missing = run_cli(["users", "erase", "nobody-by-that-name"], env)
    assert missing.returncode == 1 and "no user named" in missing.stderr

    retention = run_cli(["retention", "run"], env)
    assert retention.returncode == 0, retention.stderr
    # The old sample went row by row, or (PostgreSQL, when its month ended before the cutoff)
    # with its whole month; the recent one stays.
    archived, deleted, dropped = map(
        int, re.findall(r"(\d+) (?:sessions|samples|months) ", retention.stdout)
    )
    assert archived == 0 and (deleted, dropped >= 1) in {(1, False), (0, True)}, retention.stdout
    if database_url.startswith("sqlite"):
        assert (deleted, dropped) == (1, 0)
    assert in_thread(asyncio.run, _starts(database_url, keeper)) == [now - 60_000]
    unset = run_cli(["retention", "run"], env | {"VITALCAST_RAW_RETENTION_DAYS": ""})
    assert unset.returncode == 1
