"""Ingest throughput: samples/s through POST /api/v1/samples (batches of 1,000, HTTP on loopback
against a running ``vitalcast serve``) next to the raw load rate of the same rows straight into the
same table (PostgreSQL COPY, SQLite executemany), on both backends, in one run.

    uv run python -m bench.ingest [--batches 100] [--clients 1,4]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import httpx
import sqlalchemy as sa

from bench.common import create_user, database, emit, server
from vitalcast.clock import now_ms
from vitalcast.db.engine import Database, create_engine
from vitalcast.db.tables import health_samples
from vitalcast.testing import hr_sample

BATCH = 1_000


def batches(prefix: str, count: int, start_ms: int) -> list[dict[str, Any]]:
    """``count`` request bodies of 1,000 heart-rate samples at 1 Hz with unique record ids."""
    bodies = []
    for b in range(count):
        samples = [
            hr_sample(
                f"{prefix}-{b}-{i}",
                start_ms + (b * BATCH + i) * 1000,
                60.0 + (i % 50),
                device="Watch7,1",
            )
            for i in range(BATCH)
        ]
        bodies.append({"samples": samples})
    return bodies


async def http_rate(base: str, tokens: list[str], count: int) -> dict[str, float]:
    """Samples/s with one sequential client per token (each a different user, as phones are)."""
    start_ms = now_ms() - 30 * 86_400_000
    per_client = [batches(f"c{c}", count // len(tokens), start_ms) for c in range(len(tokens))]

    async def run(token: str, bodies: list[dict[str, Any]]) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
            for body in bodies:
                response = await client.post("/api/v1/samples", json=body)
                response.raise_for_status()

    began = time.perf_counter()
    await asyncio.gather(*[run(t, b) for t, b in zip(tokens, per_client, strict=True)])
    elapsed = time.perf_counter() - began
    total = sum(len(b) for b in per_client) * BATCH
    return {"samples": total, "seconds": round(elapsed, 3), "samples_per_s": round(total / elapsed)}


async def raw_rate(url: str, user_id: str, count: int) -> dict[str, float]:
    """The floor: the same rows loaded straight into health_samples, no HTTP, no checks."""
    start_ms = now_ms() - 60 * 86_400_000
    rows = [
        {
            "user_id": user_id,
            "source": "healthkit",
            "record_id": f"raw-{n}",
            "metric": "heart_rate",
            "value": 60.0 + (n % 50),
            "unit": "bpm",
            "start_ms": start_ms + n * 1000,
            "end_ms": start_ms + n * 1000,
            "device": "Watch7,1",
            "deleted": False,
            "change_seq": 1,
        }
        for n in range(count * BATCH)
    ]
    db = Database(create_engine(url))
    engine = db.engine
    try:
        await db.partitions.ensure(r["start_ms"] for r in rows)
        began = time.perf_counter()
        async with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                raw = await conn.get_raw_connection()
                columns = list(rows[0])
                await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
                    "health_samples",
                    records=[tuple(r[c] for c in columns) for r in rows],
                    columns=columns,
                )
            else:
                await conn.execute(sa.insert(health_samples), rows)
        elapsed = time.perf_counter() - began
    finally:
        await db.dispose()
    return {
        "samples": len(rows),
        "seconds": round(elapsed, 3),
        "samples_per_s": round(len(rows) / elapsed),
    }


async def measure(backend: str, count: int, clients: list[int]) -> dict[str, Any]:
    async with database(backend) as url:
        tokens = [(await create_user(url, f"bench-{i}"))[1] for i in range(max(clients))]
        raw_user, _ = await create_user(url, "bench-raw")
        result: dict[str, Any] = {}
        async with server(url) as base:
            for n in clients:
                result[f"http_{n}_clients"] = await http_rate(base, tokens[:n], count)
        result["raw"] = await raw_rate(url, raw_user, count)
        for n in clients:
            http = result[f"http_{n}_clients"]["samples_per_s"]
            result[f"ratio_http_{n}_clients_to_raw"] = round(
                http / result["raw"]["samples_per_s"], 3
            )
        return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--clients", default="1,4")
    parser.add_argument("--backends", default="sqlite,postgres")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    result: dict[str, Any] = {"benchmark": "ingest", "batch_size": BATCH, "batches": args.batches}
    for backend in args.backends.split(","):
        result[backend] = await measure(backend, args.batches, clients)
    emit("ingest", result)


if __name__ == "__main__":
    asyncio.run(main())
