"""Data lifecycle benchmarks, each against a running ``vitalcast serve`` on a fresh database:

- ``export``: ``GET /api/v1/me/export`` of an account with 1,000,000 raw samples and 24 sessions:
  seconds, archive bytes, and the server's resident memory (sampled every 20 ms) before and at
  its peak during the download (the target: peak < 250 MB).

    uv run python -m bench.lifecycle export [--samples 1000000] [--backend postgres]

- ``erasure``: the purge of an erased account with that many raw samples and 24 sessions, run
  in process through ``ErasureService`` (the work a server or worker does after ``DELETE
  /api/v1/me``): rows removed per second, at the default batch size, on each backend.

    uv run python -m bench.lifecycle erasure [--samples 200000] [--backend postgres --backend sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from bench.common import bulk_load, create_user, database, emit, rss_mb, server_with_pid
from vitalcast.clock import now_ms
from vitalcast.db.engine import Database, create_engine
from vitalcast.db.tables import sessions

HOUR_MS = 3_600_000
LOAD_CHUNK = 200_000


def _rows(user_id: str, first_ms: int, offset: int, count: int) -> list[tuple[Any, ...]]:
    """``count`` heart-rate samples at 1 Hz from sample ``offset`` on."""
    return [
        (user_id, "bench", f"r{i}", "heart_rate", 60.0 + i % 50, "bpm", t, t, "Watch7,1", False, 1)
        for i in range(offset, offset + count)
        for t in (first_ms + i * 1000,)
    ]


async def _load_account(url: str, user_id: str, samples: int, first_ms: int) -> None:
    for offset in range(0, samples, LOAD_CHUNK):
        await bulk_load(url, _rows(user_id, first_ms, offset, min(LOAD_CHUNK, samples - offset)))
    db = Database(create_engine(url))
    try:
        async with db.write() as conn:
            span = samples * 1000
            await conn.execute(
                sa.insert(sessions),
                [
                    {
                        "id": str(uuid.uuid4()),
                        "user_id": user_id,
                        "status": "completed",
                        "start_ms": first_ms + k * span // 24,
                        "end_ms": first_ms + k * span // 24 + HOUR_MS,
                        "source_watermark": 1,
                        "created_at_ms": first_ms,
                        "updated_at_ms": first_ms,
                    }
                    for k in range(24)
                ],
            )
    finally:
        await db.dispose()


async def export(backend: str, samples: int) -> dict[str, Any]:
    async with database(backend) as url:
        user_id, token = await create_user(url, "exporter")
        first_ms = now_ms() - samples * 1000 - HOUR_MS
        began = time.perf_counter()
        await _load_account(url, user_id, samples, first_ms)
        load_s = time.perf_counter() - began
        async with server_with_pid(url) as (base, pid):
            before = rss_mb(pid)
            peak = before
            stop = asyncio.Event()

            async def watch() -> None:
                nonlocal peak
                while not stop.is_set():
                    peak = max(peak, rss_mb(pid))
                    await asyncio.sleep(0.02)

            watcher = asyncio.create_task(watch())
            size = 0
            began = time.perf_counter()
            headers = {"Authorization": f"Bearer {token}"}
            path = Path(tempfile.gettempdir()) / f"vc-export-{uuid.uuid4().hex[:8]}.zip"
            out = path.open("wb")
            async with (
                httpx.AsyncClient(base_url=base, timeout=600) as client,
                client.stream("GET", "/api/v1/me/export", headers=headers) as response,
            ):
                response.raise_for_status()
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    out.write(chunk)
            out.close()
            seconds = time.perf_counter() - began
            stop.set()
            await watcher
        with zipfile.ZipFile(path) as archive:
            with archive.open("samples.csv") as csv_file:
                rows = sum(1 for _ in csv_file) - 1
            members = len(archive.namelist())
        path.unlink()
    return {
        "backend": backend,
        "samples": samples,
        "load_s": round(load_s, 1),
        "export_s": round(seconds, 2),
        "samples_per_s": round(samples / seconds),
        "zip_mb": round(size / 2**20, 1),
        "csv_rows": rows,
        "members": members,
        "server_rss_before_mb": before,
        "server_rss_peak_mb": peak,
        "target_peak_mb": 250,
    }


async def erasure(backend: str, samples: int) -> dict[str, Any]:
    from vitalcast.clock import SystemClock
    from vitalcast.lifecycle.erasure import ErasureService

    async with database(backend) as url:
        user_id, _token = await create_user(url, "erased")
        await _load_account(url, user_id, samples, now_ms() - samples * 1000 - HOUR_MS)
        db = Database(create_engine(url))

        async def revoke(_user_id: str) -> None:
            return None

        try:
            service = ErasureService(db, SystemClock(), revoke=revoke, redis=None)
            await service.request(user_id)
            began = time.perf_counter()
            rows = await service.purge(user_id)
            seconds = time.perf_counter() - began
        finally:
            await db.dispose()
    return {
        "backend": backend,
        "samples": samples,
        "rows": rows,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="bench", required=True)
    ex = sub.add_parser("export")
    ex.add_argument("--samples", type=int, default=1_000_000)
    ex.add_argument("--backend", choices=["postgres", "sqlite"], action="append")
    er = sub.add_parser("erasure")
    er.add_argument("--samples", type=int, default=200_000)
    er.add_argument("--backend", choices=["postgres", "sqlite"], action="append")
    args = parser.parse_args()
    if args.bench == "erasure":
        runs = [asyncio.run(erasure(b, args.samples)) for b in args.backend or ["postgres"]]
        emit("lifecycle_erasure", {"runs": runs})
    if args.bench == "export":
        results = [asyncio.run(export(b, args.samples)) for b in args.backend or ["postgres"]]
        emit("lifecycle_export", {"runs": results})


if __name__ == "__main__":
    main()
