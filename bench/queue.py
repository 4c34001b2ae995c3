"""Queue against in-process, one run on PostgreSQL + Redis.

- Freshness of a live session: from an ingest's commit until the cache row holds the payload at
  the new watermark (the saving process's timestamp), batch after batch (10 heart-rate samples
  each, like a phone sync). Through the BullMQ queue and one ``vitalcast worker`` subprocess,
  and through the in-process ``BoundedComputeCoordinator`` (the embedded mode's path, the
  baseline); the same ingest and scheduling code runs in both.
- Backfill throughput: every ended session's default cache (1m and 5m) computed from scratch,
  in-process (coordinator, 3 at once, as `vitalcast backfill` runs embedded: the baseline) and
  through the queue with 1, 2 and 4 worker subprocesses (3 jobs at once each). Sessions/s from
  the first enqueue until the last row is fresh; each configuration runs ``--repeat`` times
  (workers started once) and reports the median and range, since the machine is shared.

The database is created for the run and dropped after it; the queue lives under a unique prefix
on the shared Redis and its keys are deleted at the end.

    uv run python -m bench.queue [--batches 300] [--sessions 200] [--workers 1,2,4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as redis
import sqlalchemy as sa

from bench.common import (
    REDIS_URL,
    SECRET,
    bulk_load,
    database,
    delete_keys,
    emit,
    percentiles,
)
from vitalcast.clock import SystemClock
from vitalcast.db.engine import Database, create_engine
from vitalcast.db.tables import telemetry_cache
from vitalcast.ingest.service import IngestService
from vitalcast.observability import Metrics, configure_logging
from vitalcast.queue.backfill import BackfillFilter, coordinator_submit, run_backfill
from vitalcast.queue.service import SessionTelemetryQueueService
from vitalcast.sessions import repository as session_repository
from vitalcast.sessions.changes import CachedView, ChangeFanout
from vitalcast.sessions.models import Session, SessionStatus
from vitalcast.settings import Settings
from vitalcast.telemetry.keys import CacheState, ScheduleReason, TelemetryKey
from vitalcast.telemetry.run.coordinator import BoundedComputeCoordinator
from vitalcast.telemetry.run.triggers import TelemetryTriggers
from vitalcast.telemetry.scheduling import Scheduler
from vitalcast.testing import ensure_user, hr_sample
from vitalcast.wiring import build_local_computes

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
SYNC_SAMPLES = 10
# First syncs of each run are not counted: connection pools and the worker warm up.
WARMUP_BATCHES = 10
#: heart-rate samples in one backfill session's default window (every 10 s over 3 h)
SAMPLES_PER_WINDOW = 3 * 360


@contextlib.contextmanager
def workers(
    count: int, env: dict[str, str], folder: Path
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``count`` ``vitalcast worker`` subprocesses, each started (``worker_started`` logged)."""
    procs: list[subprocess.Popen[bytes]] = []
    logs = [folder / f"worker-{uuid.uuid4().hex[:6]}.log" for _ in range(count)]
    try:
        for log in logs:
            with log.open("wb") as handle:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "vitalcast", "worker"],
                        env=env,
                        stdout=handle,
                        stderr=subprocess.STDOUT,
                    )
                )
        deadline = time.monotonic() + 120
        for proc, log in zip(procs, logs, strict=True):
            while "worker_started" not in log.read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker did not start:\n{log.read_text(errors='replace')}")
                time.sleep(0.05)
        yield procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Bench:
    """The database, settings and services of one run."""

    def __init__(self, url: str, prefix: str, folder: Path) -> None:
        self.settings = Settings(
            data_dir=folder / "data",
            database_url=url,
            redis_url=REDIS_URL,
            queue_prefix=prefix,
            socketio_channel=f"{prefix}-sio",
            secret=SECRET,
        )
        self.db = Database(create_engine(url))
        self.clock = SystemClock()
        self.metrics = Metrics()
        self.folder = folder
        env = {k: v for k, v in os.environ.items() if not k.startswith("VITALCAST_")}
        self.env = env | {
            "VITALCAST_DATABASE_URL": url,
            "VITALCAST_REDIS_URL": REDIS_URL,
            "VITALCAST_QUEUE_PREFIX": prefix,
            "VITALCAST_SOCKETIO_CHANNEL": f"{prefix}-sio",
            "VITALCAST_SECRET": SECRET,
            "VITALCAST_DATA_DIR": str(folder / "data"),
            "VITALCAST_LOG_LEVEL": "info",
        }

    async def user(self, name: str) -> str:
        return await ensure_user(self.db, name)

    async def session(self, user_id: str, start_ms: int, end_ms: int | None = None) -> Session:
        async with self.db.write() as conn:
            session = await session_repository.insert(
                conn,
                user_id=user_id,
                client_session_id=None,
                start_ms=start_ms,
                notes=None,
                now_ms=self.clock.now_ms(),
            )
            if end_ms is not None:
                session = await session_repository.close(
                    conn,
                    session,
                    status=SessionStatus.COMPLETED,
                    end_ms=end_ms,
                    now_ms=self.clock.now_ms(),
                )
        return session

    async def saved_at(self, key: TelemetryKey, watermark: int) -> int | None:
        """When the row of ``key`` was saved at ``watermark`` or later (None: not yet)."""
        c = telemetry_cache.c
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    sa.select(c.source_watermark, c.status, c.updated_at_ms).where(
                        c.session_id == key.session_id,
                        c.window_minutes == key.window_minutes,
                        c.resolution == key.resolution.value,
                        c.compute_version == key.compute_version,
                    )
                )
            ).first()
        if row is None or row[0] is None or row[0] < watermark or row[1] != CacheState.READY:
            return None
        return int(row[2])

    async def fresh_rows(self) -> int:
        c = telemetry_cache.c
        async with self.db.read() as conn:
            return int(
                await conn.scalar(
                    sa.select(sa.func.count()).where(
                        c.status.in_([CacheState.READY.value, CacheState.NO_DATA.value])
                    )
                )
                or 0
            )

    async def clear_cache(self) -> None:
        async with self.db.write() as conn:
            await conn.execute(sa.delete(telemetry_cache))


class CommitClock:
    """A change listener that notes when the ingest transaction committed (it is told first)."""

    def __init__(self, clock: SystemClock) -> None:
        self._clock = clock
        self.committed_ms = 0

    async def sessions_changed(
        self, sessions: Sequence[Session], views: Sequence[CachedView]
    ) -> None:
        self.committed_ms = self._clock.now_ms()

    async def session_status(self, session: Session) -> None:
        return None


async def live_freshness(
    bench: Bench,
    scheduler: Scheduler,
    batches: int,
    *,
    in_process: BoundedComputeCoordinator | None = None,
) -> list[float]:
    """Commit → saved (ms) of each of ``batches`` sequential syncs into a new live session
    (after ``WARMUP_BATCHES`` uncounted ones). ``in_process``: the coordinator to wait on; else a
    worker computes, and its ``session.updated`` publish on the Socket.IO channel says when to
    look. Neither waits by polling the database, which would compete with the compute."""
    user_id = await bench.user(f"live-{uuid.uuid4().hex[:8]}")
    start = bench.clock.now_ms() - HOUR_MS
    session = await bench.session(user_id, start)
    window_minutes = bench.settings.default_window_minutes
    key = TelemetryKey.default_for(session, window_minutes=window_minutes, now_ms=start)
    commits = CommitClock(bench.clock)
    triggers = TelemetryTriggers(
        bench.db, bench.clock, scheduler, default_window_minutes=window_minutes
    )
    ingest = IngestService(bench.db, bench.clock, bench.metrics, ChangeFanout(commits, triggers))
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=None)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(bench.settings.socketio_channel)
    latencies = []
    try:
        for b in range(WARMUP_BATCHES + batches):
            samples = [
                hr_sample(f"s{b}-{i}", start + (b * SYNC_SAMPLES + i) * 1_000, 60 + (b + i) % 40)
                for i in range(SYNC_SAMPLES)
            ]
            outcome = await ingest.ingest(user_id, {"samples": samples})
            committed_ms = commits.committed_ms
            watermark = outcome.touched[0].source_watermark
            if in_process is not None:
                await in_process.wait_idle()
            deadline = time.monotonic() + 30
            while (saved := await bench.saved_at(key, watermark)) is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"batch {b} never became ready")
                await pubsub.get_message(timeout=1.0)
            if b >= WARMUP_BATCHES:
                latencies.append(float(saved - committed_ms))
    finally:
        await pubsub.aclose()
        await client.aclose()
    return latencies


async def ended_sessions(bench: Bench, url: str, count: int) -> BackfillFilter:
    """``count`` ended one-hour sessions of a new user, 3 h apart, heart rate every 10 s around
    and during each (COPY-loaded, then ANALYZE); the filter that selects them."""
    name = f"backfill-{uuid.uuid4().hex[:8]}"
    user_id = await bench.user(name)
    base = bench.clock.now_ms() - (count + 2) * 3 * HOUR_MS
    rows = []
    for n in range(count):
        start = base + n * 3 * HOUR_MS
        await bench.session(user_id, start, start + HOUR_MS)
        for i in range(SAMPLES_PER_WINDOW):
            at = start - HOUR_MS + i * 10_000
            value = 55.0 + i % 50
            rows.append(
                (user_id, "bench", f"b{n}-{i}", "heart_rate", value, "bpm", at, at, None, False, 1)
            )
    await bulk_load(url, rows)
    return BackfillFilter(user_name=name)


async def backfill_in_process(
    bench: Bench, sessions: int, selection: BackfillFilter, repeat: int
) -> dict[str, Any]:
    """Embedded backfill (coordinator in this process), ``repeat`` times from an empty cache."""
    local = build_local_computes(bench.settings)
    coordinator = local.coordinator
    runs = []
    try:
        for _ in range(repeat):
            await bench.clear_cache()
            began = time.perf_counter()
            progress = await run_backfill(
                bench.db,
                coordinator_submit(coordinator),
                window_minutes=bench.settings.default_window_minutes,
                now_ms=bench.clock.now_ms,
                selection=selection,
            )
            await coordinator.wait_idle()
            runs.append(time.perf_counter() - began)
            assert await bench.fresh_rows() == progress.scheduled == 2 * sessions
    finally:
        await local.close()
    return _rates(sessions, runs)


async def backfill_queue(
    bench: Bench, sessions: int, selection: BackfillFilter, count: int, repeat: int
) -> dict[str, Any]:
    """Backfill through the queue with ``count`` workers (started once), ``repeat`` times from an
    empty cache: first enqueue → last row fresh."""
    queue = SessionTelemetryQueueService(bench.settings, fallback=None, metrics=Metrics())

    async def enqueue(key: TelemetryKey, watermark: int) -> bool:
        return await queue.enqueue(key, watermark=watermark, reason=ScheduleReason.BACKFILL)

    runs = []
    try:
        with workers(count, bench.env, bench.folder):
            for _ in range(repeat):
                await bench.clear_cache()
                began = time.perf_counter()
                progress = await run_backfill(
                    bench.db,
                    enqueue,
                    window_minutes=bench.settings.default_window_minutes,
                    now_ms=bench.clock.now_ms,
                    selection=selection,
                )
                while await bench.fresh_rows() < progress.scheduled:
                    if time.perf_counter() - began > 600:
                        raise RuntimeError("backfill did not finish")
                    await asyncio.sleep(0.02)
                runs.append(time.perf_counter() - began)
    finally:
        await queue.close()
    return _rates(sessions, runs)


def _rates(sessions: int, runs_s: list[float]) -> dict[str, Any]:
    rates = sorted(sessions / elapsed for elapsed in runs_s)
    return {
        "sessions": sessions,
        "computes": 2 * sessions,
        "runs": len(runs_s),
        "sessions_per_s_median": round(statistics.median(rates), 1),
        "sessions_per_s_min": round(rates[0], 1),
        "sessions_per_s_max": round(rates[-1], 1),
    }


@contextlib.asynccontextmanager
async def queue_keys_removed(prefix: str) -> AsyncIterator[None]:
    """The run's BullMQ keys under ``prefix`` are deleted after the block."""
    try:
        yield
    finally:
        await delete_keys(f"{prefix}:*")


async def main(
    batches: int, sessions: int, worker_counts: list[int], repeat: int
) -> dict[str, Any]:
    prefix = f"vcbench{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="vc-bench-queue-") as tmp:
        folder = Path(tmp)
        async with database("postgres") as url, queue_keys_removed(prefix):
            bench = Bench(url, prefix, folder)
            try:
                # baseline: the in-process coordinator
                local = build_local_computes(bench.settings)
                try:
                    in_process = await live_freshness(
                        bench, local.coordinator, batches, in_process=local.coordinator
                    )
                finally:
                    await local.close()
                # the queue: this process schedules like a server, one worker computes
                queue = SessionTelemetryQueueService(
                    bench.settings, fallback=None, metrics=Metrics()
                )
                try:
                    with workers(1, bench.env, folder):
                        queued = await live_freshness(bench, queue, batches)
                finally:
                    await queue.close()

                selection = await ended_sessions(bench, url, sessions)
                backfill = {
                    "in_process_coordinator": await backfill_in_process(
                        bench, sessions, selection, repeat
                    )
                }
                for count in worker_counts:
                    backfill[f"queue_{count}_workers"] = await backfill_queue(
                        bench, sessions, selection, count, repeat
                    )
            finally:
                await bench.db.dispose()
    local_p = percentiles(in_process)
    queue_p = percentiles(queued)
    return {
        "benchmark": "queue",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "database": "postgresql",
        "live_freshness_commit_to_ready": {
            "batches": batches,
            "warmup_batches_not_counted": WARMUP_BATCHES,
            "samples_per_batch": SYNC_SAMPLES,
            "in_process_coordinator": local_p,
            "queue_and_worker": queue_p,
            "queue_overhead_p50_ms": round(queue_p["p50_ms"] - local_p["p50_ms"], 3),
            "queue_overhead_p99_ms": round(queue_p["p99_ms"] - local_p["p99_ms"], 3),
        },
        "backfill": {
            "samples_per_session_window": SAMPLES_PER_WINDOW,
            "jobs_at_once_per_worker": Settings().max_concurrent_computes,
            **backfill,
        },
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--repeat", type=int, default=3, help="Backfill runs per configuration.")
    args = parser.parse_args()
    configure_logging("warning")
    counts = [int(n) for n in args.workers.split(",") if n]
    emit("queue", asyncio.run(main(args.batches, args.sessions, counts, args.repeat)))
