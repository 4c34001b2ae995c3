"""Shared fixtures: real SQLite files and a real PostgreSQL database (parametrised), real Redis.

PostgreSQL tests use one database per test run, migrated once and truncated before each test;
SQLite tests get a copy of a migrated template file. A missing service or program goes through
``service_missing`` (``tests/services.py``), the one place that decides: it skips the test, or
fails it when ``VITALCAST_REQUIRE_SERVICES=1`` (CI), so that CI can never turn green by skipping.
"""

from __future__ import annotations

import asyncio
import compileall
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
from _pytest.nodeid import coerce_node_id

from tests.services import service_missing
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
TEST_SECRET = "test-secret-not-for-production-0123456789abcdef"


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


#: a table with more live rows than this is emptied by TRUNCATE, a smaller one by DELETE
TRUNCATE_ABOVE_ROWS = 5_000


async def _truncate_all(url: str) -> None:
    """Empty every table. DELETE for the few rows most tests leave: a TRUNCATE of every table
    (new files for each table and index) took about 0.3 s before each PostgreSQL test, a
    DELETE of all of them 0.1 s. TRUNCATE for the tables a bulk test filled (the row counts
    are the statistics' estimate: a stale one costs time, never an emptier table)."""
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            # a partition's rows count for its parent (health_samples: one table per month)
            counts = await conn.execute(
                sa.text(
                    "SELECT coalesce(p.relname, s.relname), sum(s.n_live_tup) "
                    "FROM pg_stat_user_tables s "
                    "LEFT JOIN pg_inherits i ON i.inhrelid = s.relid "
                    "LEFT JOIN pg_class p ON p.oid = i.inhparent GROUP BY 1"
                )
            )
            big = {name for name, rows in counts if rows > TRUNCATE_ABOVE_ROWS}
            tables = list(reversed(metadata.sorted_tables))
            if big:
                names = ", ".join(t.name for t in tables if t.name in big)
                await conn.execute(sa.text(f"TRUNCATE {names} CASCADE"))
            for table in tables:
                if table.name not in big:
                    await conn.execute(table.delete())
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


#: tests that put the machine under load (a thousand concurrent requests, hundreds of cold
#: sessions, a day of samples streamed while memory is measured, fuzzers), by group: the tests of
#: a group run on one pytest-xdist worker, one at a time, so that two loads of a group never
#: overlap. Two groups, because one was the suite's critical path (about 650 s on one worker);
#: the fuzzers judge answers, not their speed, so they may run beside the other loads.
LOAD_MODULES = {
    "tests/telemetry/test_herd.py": "load",
    "tests/interop/test_export_memory.py": "load",
    "tests/hardening/test_export_pool.py": "load",
    # floods that time another client's answers against the same run's quiet figures
    "tests/hardening/test_compute_fairness.py": "load",
    "tests/hardening/test_transport_abuse.py": "load",
    "tests/hardening/test_request_limits.py": "fuzz",
    "tests/hardening/test_fuzz_api.py": "fuzz",
    "tests/hardening/test_fuzz_socketio.py": "fuzz",
}


def xdist_group_of(item: pytest.Item) -> str | None:
    """The pytest-xdist group of a test without an explicit ``xdist_group`` mark:

    - ``properties``: the Hypothesis property tests on real databases (the proof that
      incremental equals full), together on one worker with their full example counts;
    - ``load`` and ``fuzz``: the tests of ``LOAD_MODULES``;
    - the module's own path when the test uses a module-scoped fixture of ours (a shared
      server): the module stays on one worker, which builds that fixture once.
    """
    if getattr(getattr(item, "obj", None), "is_hypothesis_test", False) and (
        "database_url" in getattr(item, "fixturenames", ())
    ):
        return "properties"
    path = item.nodeid.split("::", 1)[0]
    if path in LOAD_MODULES:
        return LOAD_MODULES[path]
    fixture_info = getattr(item, "_fixtureinfo", None)
    if fixture_info is not None:
        for definitions in fixture_info.name2fixturedefs.values():
            last = definitions[-1]
            if last.scope == "module" and last.baseid.startswith("tests"):
                return path
    return None


#: the code that the suite's subprocesses import from this checkout (``python -m vitalcast``,
#: ``tests.held_worker``, schemathesis's hooks)
SPAWNED_CODE = (Path(__file__).parents[1] / "src" / "vitalcast", Path(__file__).parent)


def pytest_configure(config: pytest.Config) -> None:
    """Compile the checkout's own modules once, before any test spawns a process. Where
    PYTHONDONTWRITEBYTECODE is set (as on CI), Python reads bytecode but never writes it, and
    ``uv sync --compile-bytecode`` compiles the dependencies, not the editable project: every
    server, worker and CLI a test spawned compiled about 150 modules again, 0.2 s of CPU each
    time. Up to date, this is a check of file times; on xdist only the controller does it."""
    if hasattr(config, "workerinput"):
        return
    for folder in SPAWNED_CODE:
        compileall.compile_dir(folder, quiet=2)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Group tests for ``--dist loadgroup`` (``make test``): mark them, then name the group in
    each grouped test's node id (``…@group``), which is how an xdist worker tells the scheduler.

    pytest-xdist 3.8 appends that suffix to ``item._nodeid``, which pytest 9.2 no longer reads
    (a node id is ``str(item._id)``): every group was silently spread over all workers
    (pytest-dev/pytest-xdist#1386). Until xdist handles it, the suffix is set here."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None and (group := xdist_group_of(item)):
            item.add_marker(pytest.mark.xdist_group(group))
    if not getattr(config.option, "loadgroup", False):  # set on xdist workers (--dist loadgroup)
        return
    for item in items:
        names = {
            str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
            for mark in item.iter_markers("xdist_group")
        }
        suffix = "@" + "_".join(sorted(names))
        if names and not item.nodeid.endswith(suffix):
            item._id = coerce_node_id(item.nodeid + suffix)  # type: ignore[attr-defined]
