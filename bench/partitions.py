"""Ingest into the monthly-partitioned samples table against the same schema unpartitioned, on
PostgreSQL, in one run (issue 23: the partitioned rate must be at least 0.9× the other).

Two fresh databases at the head revision; in the baseline ``health_samples`` is recreated as
one plain table (what SQLite has: the same logical schema, ``sample_identities`` included), so
the two differ by the partitioning alone. Both first get the same history (``--history`` rows
spread over the last 12 months, bulk-loaded), then the same ingests of today's samples go
through ``IngestService`` (validation, the user's lock, the identity lookup, COPY, watermarks:
everything below HTTP), in alternating rounds so that a burst of load on the shared machine
hits both sides alike. Another round sends every batch again with new values (updates found
through the identity table).

    uv run python -m bench.partitions [--history 600000] [--batches 60] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

import sqlalchemy as sa

from bench.common import bulk_load, create_user, database, emit
from vitalcast.clock import SystemClock, now_ms
from vitalcast.db.engine import Database, create_engine
from vitalcast.db.partitions import is_partitioned
from vitalcast.db.tables import health_samples
from vitalcast.ingest.service import IngestService
from vitalcast.observability import Metrics, configure_logging
from vitalcast.sessions.changes import NO_LISTENER
from vitalcast.testing import hr_sample

BATCH = 1_000
DAY_MS = 86_400_000
USERS = 4


async def _unpartition(url: str) -> None:
    """The baseline: ``health_samples`` as one plain table of the same logical schema."""
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text("DROP TABLE health_samples"))
            await conn.run_sync(lambda sync: health_samples.create(sync))
    finally:
        await engine.dispose()


async def _history(url: str, user_ids: list[str], rows: int) -> None:
    """``rows`` samples over the last 12 months, shared among the users."""
    first = now_ms() - 365 * DAY_MS
    step = 365 * DAY_MS // max(rows, 1)
    chunk = 200_000
    for offset in range(0, rows, chunk):
        await bulk_load(
            url,
            [
                (
                    user_ids[i % len(user_ids)],
                    "history",
                    f"h{i}",
                    "heart_rate",
                    70.0,
                    "bpm",
                    first + i * step,
                    first + i * step,
                    None,
                    False,
                    1,
                )
                for i in range(offset, min(rows, offset + chunk))
            ],
        )


def _bodies(tag: str, batches: int, start_ms: int, value: float) -> list[dict[str, Any]]:
    return [
        {
            "samples": [
                hr_sample(f"{tag}-{b}-{i}", start_ms + (b * BATCH + i) * 100, value + i % 40)
                for i in range(BATCH)
            ]
        }
        for b in range(batches)
    ]


def _changed(body: dict[str, Any]) -> dict[str, Any]:
    """The same samples with new values: each one an update."""
    return {"samples": [s | {"value": s["value"] + 1} for s in body["samples"]]}


class Side:
    """One database, its users and its ingest service."""

    def __init__(self, url: str, user_ids: list[str]) -> None:
        self.db = Database(create_engine(url))
        self.users = user_ids
        self.service = IngestService(self.db, SystemClock(), Metrics(), NO_LISTENER)
        self.seconds = {"insert": 0.0, "update": 0.0}
        self.samples = {"insert": 0, "update": 0}

    async def run(self, kind: str, bodies: list[dict[str, Any]]) -> None:
        began = time.perf_counter()
        for n, body in enumerate(bodies):
            outcome = await self.service.ingest(self.users[n % len(self.users)], body)
            assert outcome.status_code == 200, outcome.body[:200]
        if kind == "warm-up":
            return
        self.seconds[kind] += time.perf_counter() - began
        self.samples[kind] += len(bodies) * BATCH

    def figures(self) -> dict[str, Any]:
        return {
            kind: {
                "samples": self.samples[kind],
                "seconds": round(self.seconds[kind], 3),
                "samples_per_s": round(self.samples[kind] / self.seconds[kind]),
            }
            for kind in ("insert", "update")
        }


async def measure(history: int, batches: int, rounds: int) -> dict[str, Any]:
    async with database("postgres") as part_url, database("postgres") as flat_url:
        await _unpartition(flat_url)
        sides: dict[str, Side] = {}
        for name, url in (("partitioned", part_url), ("unpartitioned", flat_url)):
            ids = [(await create_user(url, f"bench-{k}"))[0] for k in range(USERS)]
            await _history(url, ids, history)
            sides[name] = Side(url, ids)
        async with sides["partitioned"].db.read() as conn:
            assert await is_partitioned(conn)
            months = await conn.scalar(
                sa.text(
                    "SELECT count(*) FROM pg_inherits WHERE inhparent = 'health_samples'::regclass"
                )
            )
        async with sides["unpartitioned"].db.read() as conn:
            assert not await is_partitioned(conn)
        try:
            # Not measured: each side's connections, prepared statements and catalog caches.
            warm = _bodies("warm", 2 * USERS, now_ms() - 20 * 3_600_000, 50.0)
            for side in sides.values():
                await side.run("warm-up", warm)
                await side.run("warm-up", [_changed(body) for body in warm])
            start = now_ms() - 12 * 3_600_000
            per_round = [
                _bodies(f"r{r}", batches, start + r * batches * BATCH * 100, 60.0)
                for r in range(rounds)
            ]
            for r in range(rounds):
                # Alternate which side goes first, so neither always meets a warmer cache.
                order = ["partitioned", "unpartitioned"][:: 1 if r % 2 == 0 else -1]
                for name in order:
                    await sides[name].run("insert", per_round[r])
            for r in range(rounds):
                resent = [_changed(body) for body in per_round[r]]
                for name in ["unpartitioned", "partitioned"][:: 1 if r % 2 == 0 else -1]:
                    await sides[name].run("update", resent)
            result = {name: side.figures() for name, side in sides.items()}
        finally:
            for side in sides.values():
                await side.db.dispose()
    part, flat = result["partitioned"], result["unpartitioned"]
    return {
        **result,
        "months_attached": int(months or 0),
        "ratio_insert": round(part["insert"]["samples_per_s"] / flat["insert"]["samples_per_s"], 3),
        "ratio_update": round(part["update"]["samples_per_s"] / flat["update"]["samples_per_s"], 3),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--history", type=int, default=600_000)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    configure_logging("warning")
    result: dict[str, Any] = {
        "benchmark": "partitions",
        "backend": "postgres",
        "batch_size": BATCH,
        "history_rows": args.history,
        "users": USERS,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    result.update(await measure(args.history, args.batches, args.rounds))
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    emit("partitions", result)


if __name__ == "__main__":
    asyncio.run(main())
