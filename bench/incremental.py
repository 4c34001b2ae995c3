"""A live update's cost: the incremental compute next to the full recompute, and the delta next to
the full payload, for live sessions of 1 h, 4 h and 24 h, on SQLite and PostgreSQL, in one run.

Each session has run for its length (heart rate at 1 Hz, the other metrics at their catalog
cadences, from three hours before its start: bulk-loaded), then receives 100 syncs of 5 s of
samples through the real ingest service (validation, upsert, watermarks, change log), the clock
moving with them. After each sync the default view (60 min of padding, ``auto`` resolution) is
recomputed by the real ``TelemetryComputer`` (lease, compute, save, log pruning):

- incremental: the default compute, from the partials stored by the previous save;
- full (the baseline): the same computer on a twin session (same samples, another user) whose
  compute ignores its partials: one GROUP BY over the whole window.

Both are timed end to end (the leased compute: what an update costs) and as the aggregate alone
(session, partials and log read, GROUP BY, assembly, packing; without lease and save). Then a
client at the previous watermark asks for the view (``since_watermark``): the delta's bytes next
to the full answer's. The last incremental payload is checked against a full recompute of the
same view at the same time (byte for byte). Also recorded: the stored partials' size and decode
time, and the ingest call per sync (its change-log insert included).

    uv run python -m bench.incremental [--backends sqlite,postgres] [--batches 100]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from bench.common import bulk_load, database, emit, percentiles
from bench.telemetry import CADENCE_MS, rows_for
from vitalcast import catalog
from vitalcast.clock import ManualClock, iso_ms
from vitalcast.db.engine import Database, create_engine
from vitalcast.db.tables import telemetry_cache
from vitalcast.ingest.service import IngestService
from vitalcast.observability import Metrics, configure_logging
from vitalcast.sessions import changelog
from vitalcast.sessions.changes import NO_LISTENER
from vitalcast.sessions.service import SessionService
from vitalcast.settings import Settings
from vitalcast.telemetry.compute.incremental import (
    BatchComputed,
    BatchRead,
    assemble_batch,
    compute_batch_views,
    compute_view,
)
from vitalcast.telemetry.compute.partials import decode
from vitalcast.telemetry.keys import ComputeOutcome, Resolution, ScheduleReason, TelemetryKey
from vitalcast.telemetry.read.reader import open_reader
from vitalcast.telemetry.read.service import SessionTelemetryService
from vitalcast.telemetry.store import queries
from vitalcast.testing import ensure_user, load_session
from vitalcast.wiring import Seams, build_local_computes

MINUTE = 60_000
HOUR = 60 * MINUTE
LENGTHS_H = (1, 4, 24)
SYNC_MS = 5_000
PRE_MS = 3 * HOUR
WINDOW_MINUTES = 60
# 2026-03-02T08:00:00Z, as in the tests: a fixed "now" for the clock the run moves by hand
T0_MS = 1_772_438_400_000


class TimedCompute:
    """The compute seam of a computer (from the stored partials, or ``full``: ignoring them),
    with its own duration (the aggregate alone: change-log read, GROUP BY, assembly, packing;
    without lease and save, from the batch's stage times) and the paths it took.

    The computer reads a batch in the unit of work that claims its leases and hands the seam
    what it read (``BatchRead``). The incremental side assembles that read. The full side drops
    it and computes its views again with no stored partials: one GROUP BY over each whole
    window. So a full compute's end-to-end time also holds the claim's small read (the change
    log and a bucket or two): that errs against the full side, by at most the incremental
    side's aggregate time."""

    def __init__(self, *, full: bool) -> None:
        self.full = full
        self.paths: dict[str, int] = {}
        self.ms: list[float] = []

    async def __call__(self, db: Database, read: BatchRead) -> BatchComputed:
        if self.full:
            views = [dataclasses.replace(p.view, stored=None) for p in read.planned]
            computed = await compute_batch_views(db, views, memo=read.memo)
        else:
            computed = await assemble_batch(db, read)
        self.ms.append(sum(computed.stage_seconds.values()) * 1000)
        for result in computed.results:
            if not isinstance(result, Exception):
                self.paths[result.path.value] = self.paths.get(result.path.value, 0) + 1
        return computed


@dataclass
class Twin:
    """One user's live session and what ingests into it."""

    user_id: str
    session_id: str
    key: TelemetryKey | None = None


def sync_samples(start_ms: int, lo_ms: int, hi_ms: int, n: int) -> list[dict[str, Any]]:
    """What the watch syncs for ``[lo_ms, hi_ms)``: every metric at its cadence."""
    samples = []
    for metric, cadence in CADENCE_MS.items():
        first = lo_ms + (-(lo_ms - start_ms) % cadence)
        for i, t in enumerate(range(first, hi_ms, cadence)):
            value = catalog.BY_CODE[metric].min_value + 10 + ((n * 31 + i) * 7919 % 400) / 10
            samples.append(
                {
                    "source": "bench",
                    "record_id": f"{metric}-live-{t}",
                    "metric": metric,
                    "value": value,
                    "start": iso_ms(t),
                }
            )
    return samples


async def log_insert_ms(db: Database, session_id: str, start_ms: int, n: int) -> list[float]:
    """The change-log insert of one ingest (one entry, one range), timed alone ``n`` times, each in
    a transaction rolled back (the chain is left as it was)."""
    timings = []
    async with db.engine.connect() as conn:
        for i in range(n):
            transaction = await conn.begin()
            seq = 10**12 + i
            entry = changelog.LogEntry(session_id, seq, seq - 1, ((start_ms, start_ms + SYNC_MS),))
            started = time.perf_counter()
            await changelog.record(conn, [entry])
            timings.append((time.perf_counter() - started) * 1000)
            await transaction.rollback()
    return timings


async def run_length(url: str, length_h: int, batches: int) -> dict[str, Any]:
    clock = ManualClock(T0_MS)
    settings = Settings(database_url=url, secret="bench", default_window_minutes=WINDOW_MINUTES)
    db = Database(create_engine(url))
    start_ms = T0_MS - length_h * HOUR
    twins: dict[str, Twin] = {}
    loaded = 0
    for role in ("incremental", "full"):
        user_id = await ensure_user(db, f"{role}-{length_h}h")
        rows = [
            row
            for metric, cadence in CADENCE_MS.items()
            for row in rows_for(user_id, metric, start_ms - PRE_MS, T0_MS, cadence)
        ]
        loaded = len(rows)
        await bulk_load(url, rows)
        session, _ = await SessionService(db, clock, NO_LISTENER).create(
            user_id, client_session_id=None, start_ms=start_ms, notes=None
        )
        twins[role] = Twin(user_id, session.id)
    ingest = IngestService(db, clock, Metrics(), NO_LISTENER)
    counted = TimedCompute(full=False)
    baseline = TimedCompute(full=True)
    incremental = build_local_computes(settings, Seams(clock=clock, aggregator=counted))
    full = build_local_computes(settings, Seams(clock=clock, aggregator=baseline))
    reader = open_reader(url)
    answers = SessionTelemetryService(
        db, clock, Metrics(), incremental.coordinator, reader, default_window_minutes=60
    )
    times: dict[str, list[float]] = {"incremental": [], "full": []}
    delta_bytes: list[int] = []
    full_bytes: list[int] = []
    ingest_ms: list[float] = []
    load_ms: list[float] = []
    partials_bytes = 0
    try:

        async def compute(role: str) -> None:
            twin = twins[role]
            async with db.read() as conn:
                session = await load_session(
                    conn, TelemetryKey(twin.session_id, WINDOW_MINUTES, Resolution.ONE_MINUTE)
                )
            assert session is not None
            twin.key = TelemetryKey.default_for(
                session, window_minutes=WINDOW_MINUTES, now_ms=clock.now_ms()
            )
            computer = (incremental if role == "incremental" else full).computer
            started = time.perf_counter()
            outcome = await computer.compute(twin.key, reason=ScheduleReason.LIVE_UPDATE)
            times[role].append((time.perf_counter() - started) * 1000)
            assert outcome is ComputeOutcome.COMPUTED, outcome

        for role in twins:  # the first compute of each view is full for both
            await compute(role)
        times = {"incremental": [], "full": []}
        for timed in (counted, baseline):
            timed.paths.clear()
            timed.ms.clear()
        for n in range(batches):
            lo = clock.now_ms()
            clock.advance(SYNC_MS)
            samples = sync_samples(start_ms, lo, clock.now_ms(), n)
            for role, twin in twins.items():
                started = time.perf_counter()
                await ingest.ingest(twin.user_id, {"samples": samples})
                if role == "incremental":
                    ingest_ms.append((time.perf_counter() - started) * 1000)
            inc = twins["incremental"]
            assert inc.key is not None
            async with db.read() as conn:
                held = await queries.row_of(conn, inc.key)
            assert held is not None and held.source_watermark is not None
            await compute("incremental")
            await compute("full")
            delta = await answers.get(
                inc.user_id,
                inc.session_id,
                window_minutes=60,
                resolution="auto",
                metrics=["all"],
                since_watermark=held.source_watermark,
            )
            whole = await answers.get(
                inc.user_id, inc.session_id, window_minutes=60, resolution="auto", metrics=["all"]
            )
            assert delta.delta is not None, "no delta was served"
            delta_bytes.append(len(delta.body()))
            full_bytes.append(len(whole.body()))
            async with db.read() as conn:
                partials = await conn.scalar(
                    sa.select(telemetry_cache.c.partials).where(queries.key_clause(inc.key))
                )
            assert partials is not None
            partials_bytes = len(partials)
            started = time.perf_counter()
            decode(partials)
            load_ms.append((time.perf_counter() - started) * 1000)
        inc = twins["incremental"]
        assert inc.key is not None
        async with db.read() as conn:
            row = await queries.row_of(conn, inc.key)
            session = await load_session(conn, inc.key)
            assert row is not None and session is not None and row.computed_at_ms is not None
            check = await compute_view(conn, session, inc.key, row.computed_at_ms, None)
        assert row.payload == check.blob, "the incremental payload differs from a full recompute"
        log_ms = await log_insert_ms(db, inc.session_id, start_ms, batches)
    finally:
        await reader.close()
        await incremental.close()
        await full.close()
        await db.dispose()
    inc_stats, full_stats = percentiles(times["incremental"]), percentiles(times["full"])
    inc_only, full_only = percentiles(counted.ms), percentiles(baseline.ms)
    return {
        "session_hours": length_h,
        "resolution": twins["incremental"].key.resolution.value
        if twins["incremental"].key
        else None,
        "samples_loaded_per_session": loaded,
        "incremental_compute": inc_stats,
        "full_compute": full_stats,
        "full_over_incremental_p50": round(full_stats["p50_ms"] / inc_stats["p50_ms"], 1),
        "aggregate_only": {
            "incremental": inc_only,
            "full": full_only,
            "full_over_incremental_p50": round(full_only["p50_ms"] / inc_only["p50_ms"], 1),
        },
        "delta_bytes": {
            "p50": statistics.median(delta_bytes),
            "max": max(delta_bytes),
            "mean": round(statistics.fmean(delta_bytes)),
        },
        "full_payload_bytes": {"p50": statistics.median(full_bytes), "max": max(full_bytes)},
        "delta_over_full_p50": round(
            statistics.median(delta_bytes) / statistics.median(full_bytes), 4
        ),
        "partials_bytes": partials_bytes,
        "partials_decode": percentiles(load_ms),
        "ingest_per_sync": percentiles(ingest_ms),
        "change_log_insert": percentiles(log_ms),
        "paths": counted.paths,
    }


async def run_backend(backend: str, batches: int, lengths: tuple[int, ...]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for length_h in lengths:
        async with database(backend) as url:
            result[f"session_{length_h}h"] = await run_length(url, length_h, batches)
            print(backend, length_h, "h done", flush=True)
    if "session_1h" not in result or "session_24h" not in result:
        return result
    one, day = result["session_1h"], result["session_24h"]
    result["targets"] = {
        "day_over_hour_aggregate_only_p50": round(
            day["aggregate_only"]["incremental"]["p50_ms"]
            / one["aggregate_only"]["incremental"]["p50_ms"],
            2,
        ),
        "full_over_incremental_at_24h_aggregate_only_p50": day["aggregate_only"][
            "full_over_incremental_p50"
        ],
        "day_over_hour_incremental_p50": round(
            day["incremental_compute"]["p50_ms"] / one["incremental_compute"]["p50_ms"], 2
        ),
        "full_over_incremental_at_24h_p50": day["full_over_incremental_p50"],
        "delta_over_full_max": max(
            r["delta_over_full_p50"] for k, r in result.items() if k.startswith("session_")
        ),
    }
    return result


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument(
        "--lengths", default=",".join(map(str, LENGTHS_H)), help="session hours, e.g. 1,24"
    )
    parser.add_argument("--no-save", action="store_true", help="print, do not write results")
    args = parser.parse_args()
    lengths = tuple(int(h) for h in args.lengths.split(","))
    configure_logging("warning")
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "batches": args.batches,
        "sync_ms": SYNC_MS,
        "window_minutes": WINDOW_MINUTES,
    }
    for backend in args.backends.split(","):
        result[backend] = await run_backend(backend, args.batches, lengths)
    if args.no_save:
        print(json.dumps(result, indent=2))
    else:
        emit("incremental", result)


if __name__ == "__main__":
    asyncio.run(main())
