"""Shared fixtures: real SQLite files and a real PostgreSQL database (parametrised), real Redis.

PostgreSQL tests use one database per test run, migrated once and truncated before each test;
SQLite tests get a copy of a migrated template file. A missing service skips its tests, or fails
them when ``VITALCAST_REQUIRE_SERVICES=1`` (CI).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from vitalcast.app import create_app
from vitalcast.auth import issue_token
from vitalcast.clock import now_ms
from vitalcast.db.engine import Database, create_engine
from vitalcast.db.migrate import upgrade
from vitalcast.db.tables import metadata
from vitalcast.settings import Settings
from vitalcast.testing import ensure_user

PG_ADMIN_URL = os.environ.get(
    "VITALCAST_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("VITALCAST_TEST_REDIS", "redis://127.0.0.1:6379/0")
REQUIRE_SERVICES = os.environ.get("VITALCAST_REQUIRE_SERVICES") == "1"
TEST_SECRET = "test-secret-not-for-production-0123456789abcdef"


def service_missing(what: str) -> None:
    """Skip, or fail under VITALCAST_REQUIRE_SERVICES=1."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{what} is required (VITALCAST_REQUIRE_SERVICES=1) but unreachable")
    pytest.skip(f"{what} unreachable")


def in_thread(fn: Any, *args: Any) -> Any:
    """Run blocking or loop-owning set-up (asyncio.run, Alembic) outside the test's event loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


def _pg_admin_sync(sql: str) -> None:
    asyncio.run(_pg_admin(sql))


async def _pg_admin(sql: str) -> None:
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text(sql))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str | None]:
    """A fresh, migrated PostgreSQL database for this test run, dropped at the end."""
    name = f"vc_test_{uuid.uuid4().hex[:12]}"
    try:
        in_thread(_pg_admin_sync, f'CREATE DATABASE "{name}"')
    except Exception:
        yield None
        return
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    in_thread(upgrade, url)
    yield url
    in_thread(_pg_admin_sync, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    in_thread(upgrade, f"sqlite+aiosqlite:///{path}")
    return path


async def _truncate_all(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            names = ", ".join(t.name for t in reversed(metadata.sorted_tables))
            await conn.execute(sa.text(f"TRUNCATE {names} CASCADE"))
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> str:
    """A migrated, empty database on each backend."""
    if request.param == "sqlite":
        path = tmp_path / "vitalcast.db"
        shutil.copy(sqlite_template, path)
        return f"sqlite+aiosqlite:///{path}"
    url = request.getfixturevalue("pg_database_url")
    if url is None:
        service_missing("PostgreSQL")
    await _truncate_all(url)
    return url


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url, secret=TEST_SECRET)


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = Database(create_engine(settings.resolved_database_url))
    yield database
    await database.dispose()


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Any]:
    """The real app with its lifespan running."""
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


class Users:
    """Creates users in the test database and hands out their tokens and auth headers."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, name: str | None = None, *, ttl_s: int = 3600) -> tuple[str, str]:
        """(user_id, token) of a new user."""
        user_id = await ensure_user(self._db, name or f"user-{uuid.uuid4().hex[:8]}")
        return user_id, issue_token(TEST_SECRET, user_id, now_s=now_ms() // 1000, ttl_s=ttl_s)

    async def headers(self, name: str | None = None) -> dict[str, str]:
        _user_id, token = await self.create(name)
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def users(db: Database) -> Users:
    return Users(db)


@pytest.fixture
async def redis_url() -> str:
    """The shared Redis, verified reachable. Tests isolate themselves with unique key prefixes."""
    import redis.asyncio as redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except Exception:
        service_missing("Redis")
    finally:
        await client.aclose()
    return REDIS_URL


@pytest.fixture
def unique_prefix() -> str:
    return f"vt{uuid.uuid4().hex[:10]}"
