"""Telemetry read and compute cost on SQLite and PostgreSQL, each against its baseline, one run.

- A 4-hour ended session (heart rate at 1 Hz, the other metrics at their catalog cadences, worn
  for 16 hours around it: ≈ 61k samples stored): the cached GET next to compute-on-request (the
  same auth and the same aggregate run on every GET, as an uncached service would), in-process
  (each GET sent straight into the app: every middleware, the authentication and the rate limit,
  no HTTP client) and over HTTP on loopback (a server subprocess run as ``vitalcast serve`` runs,
  one keep-alive connection of ``http_client.KeepAliveClient``: httpx's own CPU per 48 KB answer
  was several times the server's), p50 / p99 and ratios, and over HTTP the server process's CPU
  per request.
- The same pair without HTTP (the service's answer vs the compute), to show the framework's share.
- The compute (session read, GROUP BY, assembly, packing) next to the bare GROUP BY of the same
  rows, the floor; and the full leased compute (lease, compute, conditional save) beside it.
- A 24-hour session with five streams at 1 Hz (≈ 470k samples in its window): the compute next
  to fetching the rows and aggregating them with pandas.
- ``insights``: what insights cost, on its own (bench/results/telemetry_insights.json): the
  compute with insights next to the same compute without them on both sessions (target ≤ 1.1×),
  and the pure assembly of the same rows with and without them.

Rows are bulk-loaded straight into the table (asyncpg COPY, sqlite3 executemany); the database
is created for the run and dropped after it.

    uv run python -m bench.telemetry [--backends sqlite,postgres] [--gets 2000]
    uv run python -m bench.telemetry [--backends …] [--runs 15] insights
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import sqlalchemy as sa
from fastapi import FastAPI, Response

from bench import targets
from bench.common import (
    SECRET,
    bulk_load,
    cpu_ms,
    database,
    emit,
    percentiles,
    server_env,
    serving,
)
from bench.http_client import KeepAliveClient
from vitalcast import catalog
from vitalcast.api.deps import CurrentUser, Parts
from vitalcast.app import create_app
from vitalcast.auth import issue_token
from vitalcast.clock import SystemClock, iso_ms
from vitalcast.db.engine import Database, create_engine
from vitalcast.errors import NotFound
from vitalcast.observability import configure_logging
from vitalcast.ratelimit import Scope as RateScope
from vitalcast.settings import Settings
from vitalcast.telemetry.compute import payload as packing
from vitalcast.telemetry.compute.aggregate import aggregate_rows, assemble
from vitalcast.telemetry.compute.incremental import compute_view
from vitalcast.telemetry.compute.payload import answer_json, unpack
from vitalcast.telemetry.grid import TelemetryWindow
from vitalcast.telemetry.keys import ComputeOutcome, Resolution, ScheduleReason, TelemetryKey
from vitalcast.telemetry.run.computer import TelemetryComputer
from vitalcast.testing import build_metrics, load_session, series_of
from vitalcast.wiring import build_local_computes

MINUTE = 60_000
HOUR = 60 * MINUTE
# every-n-minutes cadences within typical wearable ranges
CADENCE_MS = {
    "heart_rate": 1_000,
    "heart_rate_variability": 5 * MINUTE,
    "blood_oxygen": 5 * MINUTE,
    "respiratory_rate": MINUTE,
    "skin_temperature": 5 * MINUTE,
    "steps": MINUTE,
    "active_energy_burned": MINUTE,
}
DAY_STREAMS = ("heart_rate", "blood_oxygen", "respiratory_rate", "skin_temperature", "steps")
NO_LIMIT = "100000000/minute"


def _value(metric: str, i: int) -> float:
    low = catalog.BY_CODE[metric].min_value
    return low + 10 + (i * 7919 % 400) / 10


def rows_for(user_id: str, metric: str, lo_ms: int, hi_ms: int, step_ms: int) -> list[tuple]:
    unit = catalog.BY_CODE[metric].unit
    return [
        (user_id, "bench", f"{metric}-{t}", metric, _value(metric, i), unit, t, t, None, False, 1)
        for i, t in enumerate(range(lo_ms, hi_ms, step_ms))
    ]


async def make_session(db: Database, name: str, start_ms: int, end_ms: int) -> tuple[str, str]:
    """A user (change_seq 1) with one completed session at watermark 1: (user_id, session_id)."""
    user_id, session_id = str(uuid.uuid4()), str(uuid.uuid4())
    now = SystemClock().now_ms()
    async with db.write() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO users (id, name, change_seq, created_at_ms) VALUES (:id, :n, 1, :now)"
            ),
            {"id": user_id, "n": name, "now": now},
        )
        await conn.execute(
            sa.text(
                "INSERT INTO sessions (id, user_id, status, start_ms, end_ms, source_watermark,"
                " created_at_ms, updated_at_ms)"
                " VALUES (:id, :u, 'completed', :s, :e, 1, :now, :now)"
            ),
            {"id": session_id, "u": user_id, "s": start_ms, "e": end_ms, "now": now},
        )
    return user_id, session_id


#: under /api/, so that the request guard authenticates it as it does the cached GET
COMPUTE_ON_REQUEST = "/api/bench/compute-on-request"


def add_compute_on_request_route(app: FastAPI) -> None:
    """The baseline: the same auth and rate limit, then the whole compute on every GET."""

    @app.get(COMPUTE_ON_REQUEST + "/{session_id}")
    async def compute_on_request(session_id: str, user: CurrentUser, parts: Parts) -> Response:
        await parts.limiter.hit(RateScope.TELEMETRY, user.rate_key)
        key = TelemetryKey(session_id, 60, Resolution.ONE_MINUTE, user_id=user.user_id)
        async with parts.db.read() as conn:
            session = await load_session(conn, key)
            if session is None:
                raise NotFound("Session not found.", code="SESSION_NOT_FOUND")
            computed = await compute_view(conn, session, key, parts.clock.now_ms(), None)
        body = unpack(computed.blob).json(catalog.DEFAULT_CODES)
        return Response(answer_json("ready", telemetry=body), media_type="application/json")


def bench_app(settings: Settings) -> FastAPI:
    app = create_app(settings)
    add_compute_on_request_route(app)
    return app


async def timed(call: Callable[[], Awaitable[Any]], n: int, *, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        await call()
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def compare(cached: list[float], baseline: list[float]) -> dict[str, Any]:
    c, b = percentiles(cached), percentiles(baseline)
    return {
        "cached_get": c,
        "compute_on_request": b,
        "ratio_p50": round(b["p50_ms"] / c["p50_ms"], 1),
        "ratio_p99": round(b["p99_ms"] / c["p99_ms"], 1),
    }


#: one GET of a path (with its query) through some client: (status, body)
Fetch = Callable[[str], Awaitable[tuple[int, bytes]]]


async def get_pair(
    fetch: Fetch, session_id: str, gets: int, computes: int, *, server_pid: int | None = None
) -> dict[str, Any]:
    """The cached GET next to compute-on-request through ``fetch``; with ``server_pid`` (a
    server subprocess) also the server's CPU per request of each side (all its threads)."""
    cached_url = f"/api/v1/sessions/{session_id}/telemetry?resolution=1m"
    status, body = await fetch(cached_url)
    for _ in range(200):
        if status == 200 and orjson.loads(body)["state"] == "ready":
            break
        await asyncio.sleep(0.05)
        status, body = await fetch(cached_url)
    else:
        raise RuntimeError(f"never ready: {status} {body[:200]!r}")
    baseline_url = f"{COMPUTE_ON_REQUEST}/{session_id}"
    same_status, same = await fetch(baseline_url)
    assert same_status == 200, same_status
    assert orjson.loads(same)["telemetry"]["metrics"] == orjson.loads(body)["telemetry"]["metrics"]

    async def cached() -> None:
        got, _ = await fetch(cached_url)
        assert got == 200, got

    async def baseline() -> None:
        got, _ = await fetch(baseline_url)
        assert got == 200, got

    cpu: dict[str, float] = {}

    async def measured(
        side: str, call: Callable[[], Awaitable[None]], n: int, warmup: int
    ) -> list[float]:
        for _ in range(warmup):
            await call()
        before = None if server_pid is None else cpu_ms(server_pid)
        samples = await timed(call, n, warmup=0)
        if server_pid is not None and before is not None:
            cpu[side] = (cpu_ms(server_pid) - before) / n
        return samples

    result = compare(
        await measured("cached_get", cached, gets, 100),
        await measured("compute_on_request", baseline, computes, 5),
    )
    result["payload_bytes"] = len(body)
    if cpu:
        # the server process only: on PostgreSQL the GROUP BY runs in the database's process
        result["server_cpu_ms_per_request"] = {side: round(ms, 3) for side, ms in cpu.items()}
    return result


def asgi_fetch(app: FastAPI, headers: dict[str, str]) -> Fetch:
    """GETs sent straight into the app (every middleware, the authentication and the rate
    limit, no HTTP client): what the server alone does for them."""

    async def fetch(url: str) -> tuple[int, bytes]:
        path, _, query = url.partition("?")
        return await asgi_request(app, path, query, headers)

    return fetch


async def answer_pair(
    app: FastAPI, user_id: str, session_id: str, gets: int, computes: int
) -> dict[str, Any]:
    """The same pair below HTTP: ``SessionTelemetryService.get`` and its body from the cache,
    next to the compute and its body, so the framework's share of the figures above shows."""
    parts = app.state.parts
    service = parts.telemetry
    key = TelemetryKey(session_id, 60, Resolution.ONE_MINUTE, user_id=user_id)

    async def cached() -> None:
        answer = await service.get(
            user_id, session_id, window_minutes=60, resolution="1m", metrics=None
        )
        assert answer.state.value == "ready"
        answer.body()

    async def computed() -> None:
        async with parts.db.read() as conn:
            session = await load_session(conn, key)
            assert session is not None
            result = await compute_view(conn, session, key, parts.clock.now_ms(), None)
        answer_json("ready", telemetry=unpack(result.blob).json(catalog.DEFAULT_CODES))

    return compare(await timed(cached, gets, warmup=100), await timed(computed, computes))


async def asgi_request(
    app: FastAPI, path: str, query: str, headers: dict[str, str]
) -> tuple[int, bytes]:
    """One GET straight into the app (no HTTP client): (status, body)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("bench", 80),
    }
    body: list[bytes] = []
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        else:
            body.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(body)


async def asgi_get(app: FastAPI, path: str, query: str, headers: dict[str, str]) -> bytes:
    """One GET straight into the app that must answer 200: its body."""
    status, body = await asgi_request(app, path, query, headers)
    assert status == 200, status
    return body


async def fetch_cpu(
    app: FastAPI, client: httpx.AsyncClient, headers: dict[str, str], rounds: int, watchers: int
) -> dict[str, Any]:
    """Server CPU of a delta fetch (``since_watermark``) against a full fetch of the same live
    view, in one run: a session live for an hour of 1 Hz heart rate; each round ingests a 5 s
    batch, waits for its compute, then ``watchers`` clients fetch the full payload and as many
    fetch the delta from the previous watermark (one of each in turn; which goes first
    alternates), as the dashboard's clients do after an update (the first delta of an update
    builds it, the others find it built). The CPU time of the event loop's thread is taken around each fetch, the
    request sent straight into the app (no HTTP client in it); per side, the median over the
    updates of the mean CPU of its fetches."""
    parts = app.state.parts
    now = SystemClock().now_ms()
    created = await client.post(
        "/api/v1/sessions", json={"started_at": iso_ms(now - 62 * MINUTE)}, headers=headers
    )
    session_id = created.json()["id"]
    times = list(range(now - 60 * MINUTE, now - 5_000, 1_000))
    for start in range(0, len(times), 1_000):
        batch = [_heart_rate(f"seed-{t}", t) for t in times[start : start + 1_000]]
        (
            await client.post("/api/v1/samples", json={"samples": batch}, headers=headers)
        ).raise_for_status()
    path = f"/api/v1/sessions/{session_id}/telemetry"
    query = "window_minutes=60&resolution=auto&metrics=all"
    cpu: dict[str, list[float]] = {"full": [], "delta": []}
    size: dict[str, list[int]] = {"full": [], "delta": []}
    held = None
    deltas = 0
    for round_ in range(rounds + 1):
        at = SystemClock().now_ms() - 5_000
        batch = [_heart_rate(f"r{round_}-{i}", at + i * 1_000) for i in range(5)]
        (
            await client.post("/api/v1/samples", json={"samples": batch}, headers=headers)
        ).raise_for_status()
        full = {"state": "computing"}
        while full["state"] != "ready":  # a live view goes stale at each bucket boundary
            await parts.coordinator.wait_idle()
            full = orjson.loads(await asgi_get(app, path, query, headers))
        watermark = full["telemetry"]["source_watermark"]
        if held is not None:
            wanted = {"full": query, "delta": f"{query}&since_watermark={held}"}
            spent = {"full": 0.0, "delta": 0.0}
            # the two kinds in turns, so that both meet the same moment of a shared machine
            order = ("full", "delta") if round_ % 2 else ("delta", "full")
            for _ in range(watchers):
                for kind in order:
                    started = time.thread_time()
                    body = await asgi_get(app, path, wanted[kind], headers)
                    spent[kind] += time.thread_time() - started
                    size[kind].append(len(body))
                    deltas += kind == "delta" and body.startswith(b'{"state":"ready","delta":')
            for kind, seconds in spent.items():
                cpu[kind].append(seconds * 1000 / watchers)
        held = watermark
    # per fetch, the median over updates of each update's mean: one fetch that met a garbage
    # collection or a burst of another process does not decide the figure
    full_ms, delta_ms = statistics.median(cpu["full"]), statistics.median(cpu["delta"])
    return {
        "session": "live, 60 min of 1 Hz heart rate, window 60, auto, all metrics",
        "rounds": rounds,
        "watchers": watchers,
        "full_fetch_cpu_ms": round(full_ms, 4),
        "delta_fetch_cpu_ms": round(delta_ms, 4),
        "full_bytes_p50": statistics.median(size["full"]),
        "delta_bytes_p50": statistics.median(size["delta"]),
        "delta_answers": f"{deltas} of {len(size['delta'])}",
        "delta_over_full_cpu": round(delta_ms / full_ms, 3),
    }


def _heart_rate(record_id: str, at_ms: int) -> dict[str, Any]:
    return {
        "source": "bench",
        "record_id": record_id,
        "metric": "heart_rate",
        "value": 60.0 + at_ms // 1_000 % 40,
        "start": iso_ms(at_ms),
    }


@contextlib.asynccontextmanager
async def bench_server(url: str) -> AsyncIterator[tuple[str, int]]:
    """The real app plus the baseline route as a loopback subprocess: (base URL, pid)."""
    with tempfile.TemporaryDirectory(prefix="vc-bench-data-") as data_dir:
        env = server_env(
            url, data_dir, VITALCAST_RATE_LIMIT_TELEMETRY=NO_LIMIT, PYTHONPATH=os.getcwd()
        )
        async with serving(env, module="bench.telemetry") as (base, pid):
            yield base, pid


async def compute_floor(
    url: str, user_id: str, session_id: str, start_ms: int, end_ms: int, runs: int
) -> dict[str, Any]:
    """The compute next to the bare GROUP BY of the same rows, and the full leased compute."""
    db = Database(create_engine(url))
    key = TelemetryKey(session_id, 60, Resolution.ONE_MINUTE, user_id=user_id)
    window = TelemetryWindow.of(
        start_ms=start_ms, end_ms=end_ms, live=False, window_minutes=60, bucket_ms=MINUTE, now_ms=0
    )
    local = build_local_computes(Settings(database_url=url, secret="bench"))
    computer: TelemetryComputer = local.computer
    try:

        async def bare() -> None:
            async with db.read() as conn:
                await aggregate_rows(conn, user_id, window, MINUTE)

        async def compute() -> None:
            async with db.read() as conn:
                session = await load_session(conn, key)
                assert session is not None
                await compute_view(conn, session, key, SystemClock().now_ms(), None)

        async def leased() -> None:
            async with db.write() as conn:
                await conn.execute(
                    sa.text(
                        "UPDATE sessions SET source_watermark = source_watermark + 1 WHERE id = :id"
                    ),
                    {"id": session_id},
                )
            started = time.perf_counter()
            outcome = await computer.compute(key, reason=ScheduleReason.BACKFILL)
            leased_ms.append((time.perf_counter() - started) * 1000)
            assert outcome is ComputeOutcome.COMPUTED, outcome

        # Interleaved, so that all three see the same load on a shared machine.
        bare_ms: list[float] = []
        compute_ms: list[float] = []
        leased_ms: list[float] = []
        await bare()
        await compute()
        for _ in range(runs):
            bare_ms += await timed(bare, 1, warmup=0)
            compute_ms += await timed(compute, 1, warmup=0)
            await leased()
    finally:
        await local.close()
        await db.dispose()
    bare_p50 = statistics.median(bare_ms)
    return {
        "bare_group_by_ms": round(bare_p50, 2),
        "compute_ms": round(statistics.median(compute_ms), 2),
        "compute_over_bare": round(statistics.median(compute_ms) / bare_p50, 2),
        "leased_compute_ms": round(statistics.median(leased_ms), 2),
        "leased_compute_over_bare": round(statistics.median(leased_ms) / bare_p50, 2),
        "runs": runs,
    }


def pandas_aggregate(rows: list[Any], window: TelemetryWindow, bucket_ms: int) -> Any:
    """What one would write without the GROUP BY: fetched rows → buckets, phases and gaps."""
    import numpy as np
    import pandas as pd

    frame = pd.DataFrame(rows, columns=["metric", "start_ms", "value"])
    frame["bucket"] = (frame["start_ms"] - window.start_ms) // bucket_ms
    end = window.session_end_ms if window.session_end_ms is not None else window.end_ms
    frame["phase"] = np.select(
        [frame["start_ms"] < window.session_start_ms, frame["start_ms"] < end], [0, 1], 2
    )
    buckets = frame.groupby(["metric", "bucket"]).agg(
        count=("value", "size"),
        mean=("value", "mean"),
        total=("value", "sum"),
        low=("value", "min"),
        high=("value", "max"),
    )
    phases = frame.groupby(["metric", "phase"])["value"].agg(["size", "mean", "min", "max"])
    ordered = frame.sort_values(["metric", "start_ms"])
    step = ordered.groupby("metric")["start_ms"].diff()
    gaps = ordered[step > 2 * bucket_ms]
    return buckets, phases, gaps


async def day_session(url: str, user_id: str, session_id: str, start_ms: int, runs: int) -> dict:
    """24 h session: the compute next to fetch-and-pandas over the same window."""
    db = Database(create_engine(url))
    key = TelemetryKey(session_id, 60, Resolution.FIVE_MINUTES, user_id=user_id)
    end_ms = start_ms + 24 * HOUR
    window = TelemetryWindow.of(
        start_ms=start_ms,
        end_ms=end_ms,
        live=False,
        window_minutes=60,
        bucket_ms=key.resolution.bucket_ms,
        now_ms=0,
    )
    fetch = sa.text(
        "SELECT metric, start_ms, value FROM health_samples WHERE user_id = :u"
        " AND metric IN :metrics AND start_ms >= :lo AND start_ms < :hi AND NOT deleted"
    ).bindparams(sa.bindparam("metrics", expanding=True))
    fetch_params = {
        "u": user_id,
        "metrics": list(catalog.ALL_CODES),
        "lo": window.start_ms,
        "hi": window.end_ms,
    }
    try:
        async with db.read() as conn:
            in_window = (await conn.execute(sa.text(
                "SELECT COUNT(*) FROM health_samples WHERE user_id = :u"
                " AND start_ms >= :lo AND start_ms < :hi"),
                {"u": user_id, "lo": window.start_ms, "hi": window.end_ms},
            )).scalar_one()  # fmt: skip

        async def compute() -> None:
            async with db.read() as conn:
                session = await load_session(conn, key)
                assert session is not None
                await compute_view(conn, session, key, SystemClock().now_ms(), None)

        fetched: list[Any] = []

        async def fetch_rows() -> None:
            async with db.read() as conn:
                fetched[:] = (await conn.execute(fetch, fetch_params)).all()

        async def fetch_and_pandas() -> None:
            await fetch_rows()
            pandas_aggregate(fetched, window, key.resolution.bucket_ms)

        await compute()
        await fetch_rows()
        compute_ms: list[float] = []
        fetch_ms: list[float] = []
        pandas_ms: list[float] = []
        for _ in range(runs):  # interleaved, as above
            compute_ms += await timed(compute, 1, warmup=0)
            fetch_ms += await timed(fetch_rows, 1, warmup=0)
            pandas_ms += await timed(fetch_and_pandas, 1, warmup=0)
    finally:
        await db.dispose()
    return {
        "samples_in_window": in_window,
        "streams_at_1hz": list(DAY_STREAMS),
        "resolution": key.resolution.value,
        "compute_ms": round(statistics.median(compute_ms), 1),
        "fetch_rows_ms": round(statistics.median(fetch_ms), 1),
        "fetch_and_pandas_ms": round(statistics.median(pandas_ms), 1),
        "pandas_over_compute": round(
            statistics.median(pandas_ms) / statistics.median(compute_ms), 1
        ),
        "runs": runs,
    }


async def insights_cost(
    url: str, user_id: str, session_id: str, resolution: Resolution, pairs: int, *, tries: int
) -> dict[str, Any]:
    """The compute with insights next to the same compute without them on the same rows.

    Each of ``pairs`` pairs runs both ``tries`` times, alternating, and keeps each one's fastest
    run (a shared machine only ever adds time); the ratio is the median of the pairs' ratios, so
    a load that drifts during the run moves both sides of a pair alike. Beside the wall time, the
    CPU time of the event loop's thread (where insights run) is kept, which other processes'
    load hardly moves; and the pure assembly of one fetch of those rows is timed both ways, at
    its fastest of many interleaved runs."""
    db = Database(create_engine(url))
    key = TelemetryKey(session_id, 60, resolution, user_id=user_id)
    try:
        async with db.read() as conn:
            session = await load_session(conn, key)
            assert session is not None
            window = TelemetryWindow.of(
                start_ms=session.start_ms,
                end_ms=session.end_ms,
                live=False,
                window_minutes=60,
                bucket_ms=resolution.bucket_ms,
                now_ms=0,
            )
            rows = await aggregate_rows(conn, user_id, window, resolution.bucket_ms)

        async def compute(with_insights: bool) -> tuple[float, float]:
            """Wall time, and CPU time of this (the event loop's) thread, in ms."""
            started, cpu_started = time.perf_counter(), time.thread_time()
            async with db.read() as conn:
                # a full compute: the GROUP BY, the assembly and the packing (no partials kept)
                fresh = await aggregate_rows(conn, user_id, window, resolution.bucket_ms)
                assembled = assemble(
                    session,
                    key,
                    window,
                    series_of(
                        fresh,
                        window.start_ms,
                        resolution.bucket_ms,
                        with_insights=with_insights,
                    ),
                    SystemClock().now_ms(),
                    with_insights=with_insights,
                )
                packing.pack(assembled.document, assembled.metrics)
            return (
                (time.perf_counter() - started) * 1000,
                (time.thread_time() - cpu_started) * 1000,
            )

        with_ms: list[float] = []
        without_ms: list[float] = []
        loop_cpu: dict[bool, list[float]] = {True: [], False: []}
        await compute(True)
        await compute(False)
        for _ in range(pairs):
            runs: dict[bool, list[float]] = {True: [], False: []}
            for attempt in range(tries):
                for flag in (True, False) if attempt % 2 == 0 else (False, True):
                    wall, cpu = await compute(flag)
                    runs[flag].append(wall)
                    loop_cpu[flag].append(cpu)
            with_ms.append(min(runs[True]))
            without_ms.append(min(runs[False]))
    finally:
        await db.dispose()

    def assembly(with_insights: bool) -> float:
        started = time.perf_counter()
        build_metrics(rows, window, resolution.bucket_ms, with_insights=with_insights)
        return (time.perf_counter() - started) * 1000

    assembly_with: list[float] = []
    assembly_without: list[float] = []
    for _ in range(200):  # interleaved too
        assembly_with.append(assembly(True))
        assembly_without.append(assembly(False))
    ratios = [w / wo for w, wo in zip(with_ms, without_ms, strict=True)]
    return {
        "resolution": resolution.value,
        "bucket_rows": len(rows),
        "compute_with_insights_ms": round(statistics.median(with_ms), 2),
        "compute_without_insights_ms": round(statistics.median(without_ms), 2),
        "ratio": round(statistics.median(ratios), 3),
        # the event loop's share: assembly, packing and the driver's work in this process
        "loop_cpu_with_insights_ms": round(statistics.median(loop_cpu[True]), 2),
        "loop_cpu_without_insights_ms": round(statistics.median(loop_cpu[False]), 2),
        "assembly_with_insights_ms": round(min(assembly_with), 3),
        "assembly_without_insights_ms": round(min(assembly_without), 3),
        "pairs": pairs,
        "tries_per_pair": tries,
    }


@dataclass(frozen=True)
class Loaded:
    """The two benchmark sessions, bulk-loaded into a fresh database."""

    user_id: str
    session_id: str
    start_ms: int
    end_ms: int
    day_user: str
    day_session_id: str
    day_start_ms: int
    stored_4h: int
    in_window_4h: int
    load_s: float


#: how much sparser than their cadences ``--smoke`` stores the samples (a 1 Hz stream becomes
#: one sample a minute): the same sessions, windows and code paths at toy sizes
SMOKE_SPARSER = 60


async def load_sessions(url: str, sparser: int = 1) -> Loaded:
    """The 4-hour session (every metric at its cadence, worn 16 hours around it) and the 24-hour
    one (five streams at 1 Hz), each its own user's, rows copied straight into the table; with
    ``sparser`` > 1 every stream is stored that many times less often (``--smoke``)."""
    setup = Database(create_engine(url))
    start = (SystemClock().now_ms() // HOUR - 72) * HOUR
    end = start + 4 * HOUR
    user_id, session_id = await make_session(setup, "bench-4h", start, end)
    rows: list[tuple] = []
    for metric, step in CADENCE_MS.items():
        rows += rows_for(user_id, metric, start - 6 * HOUR, end + 6 * HOUR, step * sparser)
    day_start = start - 40 * HOUR
    day_user, day_session_id = await make_session(
        setup, "bench-24h", day_start, day_start + 24 * HOUR
    )
    for metric in DAY_STREAMS:
        rows += rows_for(day_user, metric, day_start - HOUR, day_start + 25 * HOUR, 1_000 * sparser)
    await setup.dispose()
    load_started = time.perf_counter()
    await bulk_load(url, rows)
    return Loaded(
        user_id=user_id,
        session_id=session_id,
        start_ms=start,
        end_ms=end,
        day_user=day_user,
        day_session_id=day_session_id,
        day_start_ms=day_start,
        stored_4h=sum(1 for r in rows if r[0] == user_id),
        in_window_4h=sum(1 for r in rows if r[0] == user_id and start - HOUR <= r[6] < end + HOUR),
        load_s=time.perf_counter() - load_started,
    )


async def run_backend(
    backend: str, gets: int, computes: int, runs: int, sparser: int = 1
) -> dict[str, Any]:
    async with database(backend) as url:
        loaded = await load_sessions(url, sparser)
        user_id, session_id = loaded.user_id, loaded.session_id
        token = issue_token(SECRET, user_id, now_s=int(time.time()), ttl_s=86_400)
        headers = {"Authorization": f"Bearer {token}"}

        settings = Settings(
            database_url=url,
            secret=SECRET,
            data_dir=tempfile.mkdtemp(prefix="vc-bench-data-"),
            rate_limit_telemetry=NO_LIMIT,
        )
        app = bench_app(settings)
        async with app.router.lifespan_context(app):
            in_process = await get_pair(asgi_fetch(app, headers), session_id, gets, computes)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                fetches = await fetch_cpu(app, client, headers, rounds=runs * 2, watchers=5)
            service_level = await answer_pair(app, user_id, session_id, gets, computes)
        async with bench_server(url) as (base, pid):
            loopback = await KeepAliveClient.connect(base, headers)
            try:
                over_http = await get_pair(
                    loopback.get, session_id, gets // 2, computes, server_pid=pid
                )
            finally:
                loopback.close()
        floor = await compute_floor(url, user_id, session_id, loaded.start_ms, loaded.end_ms, runs)
        day = await day_session(
            url, loaded.day_user, loaded.day_session_id, loaded.day_start_ms, max(3, runs // 4)
        )
    return {
        "session_4h": {
            "samples_stored": loaded.stored_4h,
            "samples_in_window": loaded.in_window_4h,
            "window": "60 min padding, 1m buckets, default metrics",
            "in_process": in_process,
            "service_answer_without_http": service_level,
            "http_loopback": over_http,
            "compute_vs_bare_group_by": floor,
        },
        "delta_vs_full_fetch": fetches,
        "session_24h": day,
        "bulk_load_s": round(loaded.load_s, 1),
    }


async def insights_backend(backend: str, runs: int, sparser: int = 1) -> dict[str, Any]:
    """The cost of insights on both sessions of one backend."""
    async with database(backend) as url:
        loaded = await load_sessions(url, sparser)
        return {
            "session_4h": {
                "samples_in_window": loaded.in_window_4h,
                **await insights_cost(
                    url,
                    loaded.user_id,
                    loaded.session_id,
                    Resolution.ONE_MINUTE,
                    max(20, runs),
                    tries=5,
                ),
            },
            "session_24h": await insights_cost(
                url,
                loaded.day_user,
                loaded.day_session_id,
                Resolution.FIVE_MINUTES,
                max(7, runs // 2),
                tries=2,
            ),
        }


def _machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version()}


async def main(
    backends: list[str], gets: int, computes: int, runs: int, sparser: int = 1
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "benchmark": "telemetry",
        "machine": _machine(),
        "targets": {
            "cached_in_process_p50_ms": f"< {targets.CACHED_GET_IN_PROCESS_P50_MAX_MS:g}",
            "cached_vs_compute_on_request": f">= {targets.CACHED_OVER_COMPUTE_MIN:g}x",
            "compute_over_bare_group_by": f"<= {targets.COMPUTE_OVER_BARE_GROUP_BY_MAX:g}",
        },
    }
    result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    for backend in backends:
        result[backend] = await run_backend(backend, gets, computes, runs, sparser)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return result


async def main_insights(backends: list[str], runs: int, sparser: int = 1) -> dict[str, Any]:
    result: dict[str, Any] = {
        "benchmark": "telemetry_insights",
        "machine": _machine(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "targets": {
            "compute_with_over_without_insights": (
                f"<= {targets.COMPUTE_WITH_OVER_WITHOUT_INSIGHTS_MAX:g}"
            )
        },
    }
    for backend in backends:
        result[backend] = await insights_backend(backend, runs, sparser)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return result


def serve(host: str, port: int) -> None:
    """Subprocess mode: the real app plus the baseline route (``bench_server`` binds loopback),
    served as ``vitalcast serve`` serves it."""
    from vitalcast.cli import serve_application

    settings = Settings()
    configure_logging(settings.log_level)
    serve_application(bench_app(settings), host=host, port=port)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode")
    serve_parser = sub.add_parser("serve")
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, required=True)
    sub.add_parser("insights", help="only the compute with insights against without them")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--gets", type=int, default=2000)
    parser.add_argument("--computes", type=int, default=40)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"toy data ({SMOKE_SPARSER}x sparser samples) for bench/smoke.py: checks that the "
        "script runs; its figures measure nothing",
    )
    args = parser.parse_args()
    sparser = SMOKE_SPARSER if args.smoke else 1
    if args.mode == "serve":
        serve(args.host, args.port)
    elif args.mode == "insights":
        configure_logging("warning")
        figures = asyncio.run(main_insights(args.backends.split(","), args.runs, sparser))
        emit("telemetry_insights", figures)
    else:
        configure_logging("warning")
        figures = asyncio.run(
            main(args.backends.split(","), args.gets, args.computes, args.runs, sparser)
        )
        emit("telemetry", figures)
