"""Soak: many live sessions and subscribed clients for minutes on one real server (outside CI).

``--sessions`` live sessions (one user each) receive one heart-rate sample per second each;
``--clients`` Socket.IO clients spread over them are subscribed the whole time. Measured per
ingest and per subscribed client: ingest HTTP response received → first ``session.updated`` at
that watermark received. Everything that is not a clean success is an error: a non-2xx ingest, a
transport failure, a refused or dropped socket, an ingest some subscriber never heard about.

The baseline is the run itself: the first minute after warm-up against the last minute (latency
p99, server RSS), so that slow leaks and creeping latency show up as a ratio, not a guess.

Computes are read from the computing processes' /metrics (the server, and the worker when scaled
out) at the end of warm-up and at the end, by reason: the ``live_tick`` recomputes of the live
ticker (once per subscribed view per bucket, also while samples flow) next to the ingest-driven
``live_update`` ones, per minute and by their mean cost.

    uv run python -m bench.soak [--minutes 10] [--sessions 50] [--clients 200]
                                [--backend sqlite|postgres] [--scaled]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import socketio
from prometheus_client.parser import text_string_to_metric_families

from bench.common import (
    REDIS_URL,
    START_TIMEOUT_S,
    create_user,
    database,
    delete_keys,
    emit,
    free_port,
    percentiles,
    process,
    rss_mb,
    server_env,
    server_with_pid,
)
from vitalcast.clock import iso_ms, now_ms
from vitalcast.testing import hr_sample

WARM_UP_S = 30.0
RSS_EVERY_S = 10.0
#: an ingest not heard of by a subscriber this long after its response counts as missed
DELIVERY_GRACE_S = 10.0
CONNECT_CONCURRENCY = 25


@dataclass
class Stats:
    started: float = field(default_factory=time.perf_counter)
    #: (seconds since start, latency ms) of every delivery
    latencies: list[tuple[float, float]] = field(default_factory=list)
    ingests: int = 0
    errors: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    rss: list[tuple[float, float]] = field(default_factory=list)

    def since(self) -> float:
        return time.perf_counter() - self.started


@dataclass
class Live:
    """One live session: its owner's token and the ingests not yet heard by every subscriber."""

    session_id: str
    token: str
    subscribers: list[Subscriber] = field(default_factory=list)
    #: watermark → perf_counter time the ingest's response arrived
    answered: dict[int, float] = field(default_factory=dict)


class Subscriber:
    def __init__(self, live: Live, stats: Stats) -> None:
        self.live = live
        self.stats = stats
        self.heard = 0
        self.sio = socketio.AsyncClient(reconnection=False)
        self.sio.on("session.updated", self._on_updated)
        self.sio.on("disconnect", self._on_disconnect)
        self.closing = False

    async def _on_updated(self, data: dict[str, Any]) -> None:
        now = time.perf_counter()
        watermark = int(data["source_watermark"])
        for seq, answered in list(self.live.answered.items()):
            if self.heard < seq <= watermark:
                self.stats.latencies.append((self.stats.since(), max(0.0, now - answered) * 1000))
        self.heard = max(self.heard, watermark)

    async def _on_disconnect(self, *_reason: Any) -> None:
        if not self.closing:
            self.stats.errors["socket_dropped"] += 1

    async def start(self, base: str) -> None:
        await self.sio.connect(base, auth={"token": self.live.token}, transports=["websocket"])
        ack = await self.sio.call("subscribe", {"session_id": self.live.session_id}, timeout=30)
        if not ack.get("ok"):
            raise RuntimeError(f"subscribe refused: {ack}")

    async def stop(self) -> None:
        self.closing = True
        await self.sio.disconnect()


async def ingest_loop(
    http: httpx.AsyncClient, live: Live, stats: Stats, until: float, offset_s: float
) -> None:
    """One sample a second into ``live`` until ``until`` (perf_counter)."""
    await asyncio.sleep(offset_s)
    headers = {"Authorization": f"Bearer {live.token}"}
    n = 0
    next_at = time.perf_counter()
    while next_at < until:
        n += 1
        body = {
            "samples": [
                hr_sample(f"{live.session_id[:8]}-{n}", now_ms() - 500, 60 + n % 40, source="soak")
            ]
        }
        try:
            response = await http.post("/api/v1/samples", json=body, headers=headers)
        except httpx.HTTPError as exc:
            stats.errors[f"ingest_{type(exc).__name__}"] += 1
        else:
            if response.status_code == 200:
                stats.ingests += 1
                live.answered[int(response.json()["change_seq"])] = time.perf_counter()
            else:
                stats.errors[f"ingest_http_{response.status_code}"] += 1
        forget_before = time.perf_counter() - DELIVERY_GRACE_S
        for seq, answered in list(live.answered.items()):
            if answered < forget_before:
                missed = sum(1 for s in live.subscribers if s.heard < seq)
                if missed:
                    stats.errors["update_missed"] += missed
                del live.answered[seq]
        next_at += 1.0
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))


async def watch_rss(pids: dict[str, int], stats: Stats, until: float) -> None:
    while time.perf_counter() < until:
        stats.rss.append((stats.since(), sum(rss_mb(pid) for pid in pids.values())))
        await asyncio.sleep(RSS_EVERY_S)


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``url``/metrics, keyed by (sample name, sorted labels)."""
    async with httpx.AsyncClient(timeout=30) as http:
        text = (await http.get(f"{url}/metrics")).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def by_label(
    scraped: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, label: str
) -> dict[str, float]:
    """``name`` summed per value of ``label``."""
    sums: dict[str, float] = defaultdict(float)
    for (sample, labels), value in scraped.items():
        if sample == name:
            sums[dict(labels).get(label, "")] += value
    return dict(sums)


def summed(
    *scraped: dict[tuple[str, tuple[tuple[str, str], ...]], float],
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Each series summed over several processes' scrapes."""
    sums: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
    for one in scraped:
        for series, value in one.items():
            sums[series] += value
    return dict(sums)


def compute_figures(
    before: dict[tuple[str, tuple[tuple[str, str], ...]], float],
    after: dict[tuple[str, tuple[tuple[str, str], ...]], float],
    minutes: float,
) -> dict[str, dict[str, float]]:
    """Per reason: computes per minute, their mean cost and compute-seconds per minute."""
    figures: dict[str, dict[str, float]] = {}
    counts = [by_label(x, "vitalcast_computes_total", "reason") for x in (before, after)]
    costs = [by_label(x, "vitalcast_compute_seconds_sum", "reason") for x in (before, after)]
    for reason in sorted(counts[1]):
        n = counts[1][reason] - counts[0].get(reason, 0.0)
        seconds = costs[1].get(reason, 0.0) - costs[0].get(reason, 0.0)
        if n <= 0:
            continue
        figures[reason] = {
            "per_minute": round(n / minutes, 1),
            "mean_ms": round(1000 * seconds / n, 2),
            "compute_seconds_per_minute": round(seconds / minutes, 3),
        }
    return figures


def window(stats: Stats, start_s: float, end_s: float) -> dict[str, float]:
    chosen = [ms for at, ms in stats.latencies if start_s <= at < end_s]
    return percentiles(chosen) if chosen else {"n": 0}


async def answering(url: str, proc: subprocess.Popen[bytes]) -> None:
    """Until ``url`` answers 200: the measured period scrapes the worker's /metrics, which it
    serves only once started (seconds of imports; a short warm-up came before it)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    async with httpx.AsyncClient() as client:
        while True:
            if proc.poll() is not None:
                raise RuntimeError("the worker exited during start-up")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(url)).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer")
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def stack(backend: str, scaled: bool) -> AsyncIterator[tuple[str, str, str, dict[str, int]]]:
    """(database URL, server base URL, URL of the computing process's /metrics, pids to
    watch) for the chosen deployment."""
    prefix = f"vcsoak{uuid.uuid4().hex[:8]}"
    extra: dict[str, str] = {}
    if scaled:
        extra = {
            "VITALCAST_REDIS_URL": REDIS_URL,
            "VITALCAST_QUEUE_PREFIX": prefix,
            "VITALCAST_SOCKETIO_CHANNEL": f"{prefix}-sio",
        }
    async with database(backend) as url:
        try:
            async with server_with_pid(url, **extra) as (base, pid):
                pids = {"server": pid}
                if not scaled:
                    yield url, base, base, pids
                    return
                port = free_port()
                with (
                    tempfile.TemporaryDirectory(prefix="vc-soak-") as data_dir,
                    process(
                        ["worker", "--metrics-port", str(port)],
                        server_env(url, data_dir, **extra),
                    ) as worker,
                ):
                    pids["worker"] = worker.pid
                    metrics_url = f"http://127.0.0.1:{port}"
                    await answering(f"{metrics_url}/metrics", worker)
                    yield url, base, metrics_url, pids
        finally:
            if scaled:
                await delete_keys(f"{prefix}*")


async def soak(
    minutes: float,
    sessions: int,
    clients: int,
    backend: str,
    scaled: bool,
    warm_up_s: float = WARM_UP_S,
) -> dict:
    stats = Stats()
    async with (
        stack(backend, scaled) as (url, base, metrics_url, pids),
        httpx.AsyncClient(
            base_url=base, timeout=30, limits=httpx.Limits(max_connections=100)
        ) as http,
    ):
        lives: list[Live] = []
        for n in range(sessions):
            _user, token = await create_user(url, f"soak-{n}")
            created = await http.post(
                "/api/v1/sessions",
                json={"started_at": iso_ms(now_ms() - 5 * 60_000)},
                headers={"Authorization": f"Bearer {token}"},
            )
            created.raise_for_status()
            lives.append(Live(created.json()["id"], token))
        subscribers = [Subscriber(lives[n % sessions], stats) for n in range(clients)]
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def start(subscriber: Subscriber) -> None:
            async with gate:
                try:
                    await subscriber.start(base)
                except Exception as exc:
                    stats.errors[f"socket_connect_{type(exc).__name__}"] += 1
                    return
                subscriber.live.subscribers.append(subscriber)

        await asyncio.gather(*(start(s) for s in subscribers))
        stats.started = time.perf_counter()
        until = stats.started + warm_up_s + minutes * 60
        scraped: dict[str, Any] = {}

        async def scrape_measured_period() -> None:
            await asyncio.sleep(warm_up_s)
            scraped["before"], scraped["server_before"] = (
                await scrape(metrics_url),
                await scrape(base),
            )
            await asyncio.sleep(max(0.0, until - time.perf_counter()))
            scraped["after"], scraped["server_after"] = (
                await scrape(metrics_url),
                await scrape(base),
            )

        await asyncio.gather(
            scrape_measured_period(),
            watch_rss(pids, stats, until),
            *(
                ingest_loop(http, live, stats, until, offset_s=n / sessions)
                for n, live in enumerate(lives)
            ),
        )
        await asyncio.sleep(2.0)
        rss_end = sum(rss_mb(pid) for pid in pids.values())
        for subscriber in subscribers:
            await subscriber.stop()

    measured_from = warm_up_s
    end_s = warm_up_s + minutes * 60
    rss_after_warm_up = next((mb for at, mb in stats.rss if at >= measured_from), rss_end)
    first = window(stats, measured_from, measured_from + 60)
    last = window(stats, end_s - 60, end_s)
    # scaled out, the servers compute their own ingests' live updates and the worker the rest
    computes = compute_figures(
        summed(scraped["before"], *([scraped["server_before"]] if scaled else [])),
        summed(scraped["after"], *([scraped["server_after"]] if scaled else [])),
        minutes,
    )
    looks = [
        by_label(scraped[k], "vitalcast_live_ticks_total", "outcome")
        for k in ("server_before", "server_after")
    ]
    return {
        "benchmark": "soak",
        "deployment": f"{'scaled_out' if scaled else 'embedded'} on {backend}",
        "minutes": minutes,
        "live_sessions": sessions,
        "ingest_rate_hz_per_session": 1,
        "subscribed_clients": len([s for s in subscribers if s in s.live.subscribers]),
        "ingests_acknowledged": stats.ingests,
        "deliveries": len(stats.latencies),
        "errors": dict(stats.errors),
        "error_count": sum(stats.errors.values()),
        "ingest_to_client": window(stats, measured_from, end_s),
        "baseline_first_minute": first,
        "last_minute": last,
        "p99_last_vs_first": round(last.get("p99_ms", 0) / first["p99_ms"], 2)
        if first.get("p99_ms")
        else None,
        "computes_by_reason": computes,
        "live_tick_looks_per_minute": {
            outcome: round((looks[1][outcome] - looks[0].get(outcome, 0.0)) / minutes, 1)
            for outcome in sorted(looks[1])
        },
        "rss_mb": {
            "after_warm_up": rss_after_warm_up,
            "end": rss_end,
            "growth": round(rss_end - rss_after_warm_up, 1),
            "growth_pct": round(100 * (rss_end - rss_after_warm_up) / rss_after_warm_up, 1),
            "samples": [mb for _at, mb in stats.rss],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--scaled", action="store_true", help="PostgreSQL + Redis + one worker")
    parser.add_argument(
        "--warm-up-s",
        type=float,
        default=WARM_UP_S,
        help="seconds before the measured period (shorter only for bench/smoke.py: a soak's "
        "figures need the default)",
    )
    args = parser.parse_args()
    backend = "postgres" if args.scaled else args.backend
    result = asyncio.run(
        soak(args.minutes, args.sessions, args.clients, backend, args.scaled, args.warm_up_s)
    )
    emit("soak-scaled-out" if args.scaled else "soak", result)


if __name__ == "__main__":
    main()
