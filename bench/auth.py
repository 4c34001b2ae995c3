"""What identity costs a request: the cached telemetry GET with an OpenID Connect token next to the
same GET with a local token, in one run, on the real app (in-process, httpx ASGITransport) with
the test issuer of ``tests/identity/issuer.py`` serving discovery and JWKS on loopback.

- cached GET, local HS256 token vs OIDC token (RS256, ES256, EdDSA), interleaved request by
  request so that drift and load hit all alike; p50 / p99, the ratio of the p50s, and the median
  of the paired ratios (each OIDC GET over the local GET of its round: load drift cancels), which
  the target judges (no more than local);
- SQL statements through the app's engine per cached GET with each token: authentication's
  share (a remembered token costs none; the telemetry row is read by the telemetry reader);
- the first use of a token (signature check + user lookup), per algorithm, next to a repeated
  one (remembered): what the verified-token cache saves.

    uv run python -m bench.auth [--backends sqlite,postgres] [--gets 1500]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from tests.identity.issuer import ALGORITHMS, AUDIENCE, LocalIssuer, serve_issuer

from bench import targets
from bench.common import SECRET, create_user, database, emit, percentiles
from vitalcast.app import create_app
from vitalcast.clock import iso_ms, now_ms
from vitalcast.observability import configure_logging
from vitalcast.settings import Settings
from vitalcast.testing import hr_sample


@contextmanager
def statements(app: Any) -> Iterator[list[str]]:
    """SQL statements the app's engine sends in the block (SQLite's own BEGIN left out)."""
    seen: list[str] = []
    engine = app.state.parts.db.engine.sync_engine

    def record(_c: Any, _cur: Any, statement: str, *_a: Any) -> None:
        if not statement.startswith("BEGIN"):
            seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


async def _session(client: httpx.AsyncClient, headers: dict[str, str]) -> str:
    """The telemetry path of a new 30-minute session of heart rate every 5 s, once cached."""
    start = now_ms() - 30 * 60_000
    created = await client.post(
        "/api/v1/sessions", json={"started_at": iso_ms(start)}, headers=headers
    )
    samples = [hr_sample(f"b{i}", start + i * 5_000, 60.0 + i % 30) for i in range(360)]
    await client.post("/api/v1/samples", json={"samples": samples}, headers=headers)
    path = f"/api/v1/sessions/{created.json()['id']}/telemetry"
    await _ready(client, path, headers)
    return path


async def _ready(client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> None:
    for _ in range(600):
        if (await client.get(path, headers=headers)).json()["state"] == "ready":
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("the view did not become ready")


async def _timed(client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> float:
    started = time.perf_counter()
    response = await client.get(path, headers=headers)
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"GET answered {response.status_code}")
    return elapsed


def _kid(issuer: LocalIssuer, alg: str) -> str:
    return next(kid for kid, (a, _) in issuer.keys.items() if a == alg)


async def run_backend(backend: str, gets: int, issuer: LocalIssuer) -> dict[str, Any]:
    async with database(backend) as url:
        _user_id, local = await create_user(url, "bench-auth")
        settings = Settings(
            data_dir=Path(f"/tmp/vitalcast-bench-auth-{uuid.uuid4().hex[:8]}"),
            database_url=url,
            secret=SECRET,
            oidc_issuer=issuer.url,
            oidc_audience=AUDIENCE,
            rate_limit_telemetry="1000000/minute",
            revocation_poll_ms=0,
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                tokens = {"local": local} | {
                    alg: issuer.token(_kid(issuer, alg), sub="bench-oidc") for alg in ALGORITHMS
                }
                headers = {name: {"Authorization": f"Bearer {t}"} for name, t in tokens.items()}
                # The OIDC user is another user: each reads a session of the same shape.
                path = await _session(client, headers["local"])
                oidc_path = await _session(client, headers["RS256"])
                paths = {"local": path} | {alg: oidc_path for alg in ALGORITHMS}

                for name in tokens:  # warm-up: every token remembered, every view cached
                    for _ in range(50):
                        await _timed(client, paths[name], headers[name])
                samples_ms: dict[str, list[float]] = {name: [] for name in tokens}
                for _round in range(gets):
                    for name in tokens:
                        elapsed = await _timed(client, paths[name], headers[name])
                        samples_ms[name].append(elapsed)

                counted: dict[str, float] = {}
                for name in tokens:
                    with statements(app) as seen:
                        for _ in range(50):
                            await _timed(client, paths[name], headers[name])
                    counted[name] = len(seen) / 50

                first_use: dict[str, Any] = {}
                auth = app.state.parts.authenticator
                for alg in ALGORITHMS:
                    kid = _kid(issuer, alg)
                    fresh = [issuer.token(kid, sub="bench-oidc", jti=str(i)) for i in range(200)]
                    first = []
                    for token in fresh:
                        t0 = time.perf_counter()
                        await auth.authenticate(token)
                        first.append((time.perf_counter() - t0) * 1000)
                    again = []
                    for token in fresh:
                        t0 = time.perf_counter()
                        await auth.authenticate(token)
                        again.append((time.perf_counter() - t0) * 1000)
                    first_use[alg] = {
                        "first_use_p50_ms": round(statistics.median(first), 4),
                        "remembered_p50_ms": round(statistics.median(again), 4),
                    }
        local_stats = percentiles(samples_ms["local"])
        result: dict[str, Any] = {
            "local": {"cached_get": local_stats, "engine_statements_per_get": counted["local"]}
        }
        for alg in ALGORITHMS:
            stats = percentiles(samples_ms[alg])
            result[alg] = {
                "cached_get": stats,
                "engine_statements_per_get": counted[alg],
                "ratio_p50_to_local": round(stats["p50_ms"] / local_stats["p50_ms"], 3),
                "ratio_paired_median": round(
                    statistics.median(
                        a / b for a, b in zip(samples_ms[alg], samples_ms["local"], strict=True)
                    ),
                    3,
                ),
            } | first_use[alg]
        return result


async def main_async(backends: list[str], gets: int) -> dict[str, Any]:
    with serve_issuer() as issuer:
        result: dict[str, Any] = {
            "benchmark": "auth",
            "gets_per_token": gets,
            "target_ratio_p50_max": targets.OIDC_OVER_LOCAL_P50_MAX,
        }
        for backend in backends:
            result[backend] = await run_backend(backend, gets, issuer)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--gets", type=int, default=1500)
    args = parser.parse_args()
    configure_logging("warning")
    emit("auth", asyncio.run(main_async(args.backends.split(","), args.gets)))


if __name__ == "__main__":
    main()
