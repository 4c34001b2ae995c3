"""Shared plumbing of the benchmark scripts: databases, servers as subprocesses, tokens, figures.

Every script measures a capability against a baseline in the same run and prints JSON; the
README's table is produced from bench/results/*.json by bench/report.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import redis.asyncio as aioredis
import sqlalchemy as sa

from vitalcast.db.engine import Database, create_engine
from vitalcast.db.migrate import upgrade
from vitalcast.ingest.repository import IDENTITY_COLUMNS
from vitalcast.testing import user_with_token

PG_ADMIN_URL = os.environ.get(
    "VITALCAST_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("VITALCAST_TEST_REDIS", "redis://127.0.0.1:6379/0")
SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
#: where ``emit`` keeps results: bench/results, read by the README table, unless
#: VITALCAST_BENCH_RESULTS names another folder (bench/smoke.py runs every script at toy sizes
#: into a temporary one, so a smoke run never replaces a measured result)
RESULTS = Path(os.environ.get("VITALCAST_BENCH_RESULTS") or Path(__file__).parent / "results")
#: how long a server subprocess may take to answer /healthz (imports are slow on a loaded machine)
START_TIMEOUT_S = 120.0
#: health_samples columns in the order of ``bulk_load``'s row tuples
HEALTH_SAMPLE_COLUMNS = (
    "user_id",
    "source",
    "record_id",
    "metric",
    "value",
    "unit",
    "start_ms",
    "end_ms",
    "device",
    "deleted",
    "change_seq",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentiles(values_ms: Sequence[float]) -> dict[str, float]:
    """p50 / p99 / mean of a list of milliseconds, rounded for reading."""
    ordered = sorted(values_ms)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "p50_ms": round(statistics.median(ordered), 3),
        "p99_ms": round(p99, 3),
        "mean_ms": round(statistics.fmean(ordered), 3),
        "n": len(ordered),
    }


async def _pg_admin(sql: str) -> None:
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text(sql))
    finally:
        await engine.dispose()


async def _upgrade(url: str, env: dict[str, str] | None) -> None:
    if env is None:
        await asyncio.to_thread(upgrade, url)
        return
    # another code base's migrations (a baseline run with PYTHONPATH set in ``env``)
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "vitalcast", "db", "upgrade"],
        env={**env, "VITALCAST_DATABASE_URL": url},
        capture_output=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"db upgrade failed: {done.stderr.decode()[-500:]}")


@contextlib.asynccontextmanager
async def database(backend: str, upgrade_env: dict[str, str] | None = None) -> AsyncIterator[str]:
    """A fresh migrated database URL on ``backend`` (sqlite|postgres), removed afterwards;
    migrated by ``vitalcast db upgrade`` run with ``upgrade_env`` when given."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="vc-bench-") as folder:
            url = f"sqlite+aiosqlite:///{folder}/bench.db"
            await _upgrade(url, upgrade_env)
            yield url
        return
    name = f"vc_bench_{uuid.uuid4().hex[:10]}"
    await _pg_admin(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        await _upgrade(url, upgrade_env)
        yield url
    finally:
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def create_user(url: str, name: str) -> tuple[str, str]:
    """(user_id, bearer token valid a day) of a new user in the database at ``url``."""
    return await user_with_token(url, SECRET, name, ttl_s=86_400)


async def bulk_load(url: str, rows: list[tuple]) -> None:
    """Rows straight into health_samples with their identity rows (their months created first,
    as an ingest would): COPY on PostgreSQL, executemany on SQLite."""
    at = [HEALTH_SAMPLE_COLUMNS.index(c) for c in IDENTITY_COLUMNS]
    identities = [tuple(r[i] for i in at) for r in rows]
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        conn = sqlite3.connect(parsed.database or "")
        with conn:
            conn.executemany(
                f"INSERT INTO health_samples ({', '.join(HEALTH_SAMPLE_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(HEALTH_SAMPLE_COLUMNS))})",
                rows,
            )
            conn.executemany(
                f"INSERT INTO sample_identities ({', '.join(IDENTITY_COLUMNS)}) "
                "VALUES (?, ?, ?, ?)",
                identities,
            )
        conn.execute("ANALYZE")
        conn.close()
        return
    db = Database(create_engine(url))
    try:
        await db.partitions.ensure(int(r[at[-1]]) for r in rows)
    finally:
        await db.dispose()
    conn = await asyncpg.connect(parsed.set(drivername="postgresql").render_as_string(False))
    try:
        await conn.copy_records_to_table(
            "health_samples", records=rows, columns=HEALTH_SAMPLE_COLUMNS
        )
        await conn.copy_records_to_table(
            "sample_identities", records=identities, columns=IDENTITY_COLUMNS
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


def server_env(database_url: str, data_dir: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITALCAST_")}
    env |= {
        "VITALCAST_DATABASE_URL": database_url,
        "VITALCAST_DATA_DIR": data_dir,
        "VITALCAST_SECRET": SECRET,
        "VITALCAST_LOG_LEVEL": "warning",
    }
    return env | extra


@contextlib.contextmanager
def process(
    args: Sequence[str], env: dict[str, str], *, module: str = "vitalcast"
) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m MODULE ARGS``, terminated (then killed after 10 s) on exit."""
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.asynccontextmanager
async def serving(
    env: dict[str, str], *, module: str = "vitalcast"
) -> AsyncIterator[tuple[str, int]]:
    """``python -m MODULE serve`` on a free loopback port: (base URL, pid) once /healthz answers
    (RuntimeError if it exits or does not answer within START_TIMEOUT_S)."""
    port = free_port()
    with process(["serve", "--host", "127.0.0.1", "--port", str(port)], env, module=module) as proc:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        async with httpx.AsyncClient() as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{module} serve exited during start-up")
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(f"{base}/healthz")).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{module} serve did not start")
                await asyncio.sleep(0.1)
        yield base, proc.pid


@contextlib.asynccontextmanager
async def server(database_url: str, **extra_env: str) -> AsyncIterator[str]:
    """``vitalcast serve`` on a free loopback port; yields its base URL once /healthz answers."""
    async with server_with_pid(database_url, **extra_env) as (base, _pid):
        yield base


@contextlib.asynccontextmanager
async def server_with_pid(database_url: str, **extra_env: str) -> AsyncIterator[tuple[str, int]]:
    """Like ``server``, yielding (base URL, pid) for scripts that watch the process (RSS)."""
    with tempfile.TemporaryDirectory(prefix="vc-bench-data-") as data_dir:
        async with serving(server_env(database_url, data_dir, **extra_env)) as (base, pid):
            yield base, pid


async def delete_keys(pattern: str) -> None:
    """Delete the run's keys matching ``pattern`` on the shared Redis (never a flush)."""
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=pattern, count=1000)]
        for start in range(0, len(keys), 500):
            await client.delete(*keys[start : start + 500])
    finally:
        await client.aclose()


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def cpu_ms(pid: int) -> float:
    """CPU time (user + system) a process has used so far, in ms (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # after the command: state is field 3, utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def emit(name: str, result: dict[str, Any]) -> None:
    """Print the result as JSON and keep it in RESULTS/<name>.json (bench/results: the README
    table's source)."""
    text = json.dumps(result, indent=2, sort_keys=False)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(text + "\n")


class GcPauses:
    """The garbage collector's pauses in this process since the last ``take``: a pause of a
    driver delays every send or receipt behind it, so a step reports the longest one, in wall
    time and in the CPU time of the collecting thread (which a busy machine does not inflate)."""

    def __init__(self) -> None:
        self.started = (0.0, 0.0)
        self.longest_ms = self.longest_cpu_ms = self.total_cpu_ms = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            self.started = (time.perf_counter(), time.thread_time())
            return
        wall = (time.perf_counter() - self.started[0]) * 1000
        cpu = (time.thread_time() - self.started[1]) * 1000
        self.longest_ms = max(self.longest_ms, wall)
        self.longest_cpu_ms = max(self.longest_cpu_ms, cpu)
        self.total_cpu_ms += cpu

    def take(self) -> dict[str, float]:
        taken = {
            "longest_ms": round(self.longest_ms, 1),
            "longest_cpu_ms": round(self.longest_cpu_ms, 1),
            "total_cpu_ms": round(self.total_cpu_ms, 1),
        }
        self.longest_ms = self.longest_cpu_ms = self.total_cpu_ms = 0.0
        return taken


def settle_gc() -> None:
    """What a driver process holds for the whole run (its watchers: their clients, engines,
    transports) is moved out of the collector's reach, as ``vitalcast serve`` does for what it
    loaded, and automatic collections stop until the next call (between steps, or
    ``gc.enable()`` after the measured rounds).
    Without it the load process's full collections grew with the watchers it held, to 0.7 s of
    CPU (1.0-1.1 s wall) at 5,000 watchers, 17 s into a 1,000-session step: every receipt
    behind such a pause was stamped up to a second late, and the step's p99 measured the
    driver. Frozen alone, the watchers' ping cycles still promoted enough to cost 0.2 s pauses.
    A step's cyclic garbage (30 s of events) is collected at the next call."""
    gc.enable()
    gc.collect()
    gc.freeze()
    gc.disable()
