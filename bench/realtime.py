"""Realtime: ingest-to-client latency and Socket.IO fan-out, measured on real processes.

Nothing here trusts the server's account of itself. Deliveries are counted against the ingests
the benchmark *sent* (an ingest whose update never came is a miss, whatever the server thinks it
emitted), and latency runs from the moment the ingest was sent, so an event that beats the HTTP
response is measured, not clamped to zero.

1. Ingest → ``session.updated``: one live session, ``--batches`` sequential ingests; latency is
   from the ingest sent to the first event at its watermark (or newer) received; an ingest with
   no such event within 10 s is missed. The baseline in the same run is the ingest HTTP round
   trip itself. Embedded (one ``vitalcast serve`` on SQLite) and scaled out (two servers + one
   worker on PostgreSQL + Redis; ingest through B, client on A).
2. Fan-out: ``--clients`` sockets from a separate load process over ``--sessions`` live sessions
   (one per user) on an embedded server; ``--rounds`` rounds each ingest once into every session.
   Expected deliveries: every ingest sent × the clients meant to subscribe to its session; one is
   delivered when that client received an event at the ingest's watermark or newer. Per delivery:
   ingest sent → received, compute started (``computed_at_ms``) → received, and the spread after
   the first receipt of the same event in its room; server RSS idle (the baseline) and with every
   client connected.
3. Fan-out with a fetch per update (``fan_out_fetch``): the same, over sessions live for an
   hour of 1 Hz heart rate, with every client fetching the telemetry after each update as the
   dashboard does; first the same rounds without fetches, then fetching full payloads (the
   baseline), then only deltas. Per mode: the server process's CPU time per update and per
   fetch, the fetches per update and the bytes of a fetch; and per fetch the CPU above the
   rounds without fetches (the fair comparison: a faster client coalesces fewer updates, so
   the modes answer different numbers of fetches).

    uv run python -m bench.realtime [--batches 300] [--clients 1000] [--sessions 100] [--rounds 10]
        [--parts embedded,scaled_out,fan_out,fan_out_fetch] [--burst]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import socketio

from bench.common import (
    REDIS_URL,
    GcPauses,
    cpu_ms,
    create_user,
    database,
    delete_keys,
    emit,
    percentiles,
    process,
    rss_mb,
    server_env,
    server_with_pid,
    serving,
    settle_gc,
)
from bench.targets import INGEST_TO_CLIENT_P99_MAX_MS
from vitalcast.clock import iso_ms
from vitalcast.testing import hr_sample

LOAD_CONNECT_CONCURRENCY = 50
INGEST_CONCURRENCY = 10
#: the fetching fan-out: how long each session has been live (heart rate at 1 Hz), and the load
#: process's HTTP connections to the server
FETCH_HISTORY_MIN = 60
FETCH_CONNECTIONS = 100


def wall_ms() -> float:
    return time.time() * 1000


def sample(record_id: str, at_ms: int) -> dict[str, Any]:
    return hr_sample(record_id, at_ms, 60.0 + (hash(record_id) % 40))


async def start_session(http: httpx.AsyncClient, token: str, *, minutes_ago: int = 10) -> str:
    response = await http.post(
        "/api/v1/sessions",
        json={"started_at": iso_ms(int(wall_ms()) - minutes_ago * 60_000)},
        headers={"Authorization": f"Bearer {token}"},
    )
    response.raise_for_status()
    return str(response.json()["id"])


async def ingest_one(http: httpx.AsyncClient, token: str, record_id: str) -> int:
    response = await http.post(
        "/api/v1/samples",
        json={"samples": [sample(record_id, int(wall_ms()) - 1_000)]},
        headers={"Authorization": f"Bearer {token}"},
    )
    response.raise_for_status()
    return int(response.json()["change_seq"])


class Listener:
    """A socket client that timestamps every session.updated on arrival."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue()
        self.sio.on("session.updated", self._on_updated)

    async def _on_updated(self, data: dict[str, Any]) -> None:
        self.events.put_nowait((time.perf_counter(), data))

    async def until(self, watermark: int, timeout_s: float) -> float | None:
        """perf_counter time of the first event at ``watermark`` or newer; None on timeout."""
        deadline = time.perf_counter() + timeout_s
        while (left := deadline - time.perf_counter()) > 0:
            try:
                received, data = await asyncio.wait_for(self.events.get(), left)
            except TimeoutError:
                return None
            if data["source_watermark"] >= watermark:
                return received
        return None


async def ingest_to_client(
    ingest_url: str, socket_url: str, token: str, batches: int
) -> dict[str, Any]:
    """Sequential ingests into one live session; each waits for its event before the next."""
    latencies: list[float] = []
    round_trips: list[float] = []
    early = missed = 0
    listener = Listener()
    async with httpx.AsyncClient(base_url=ingest_url, timeout=30) as http:
        session_id = await start_session(http, token)
        await listener.sio.connect(socket_url, auth={"token": token}, transports=["websocket"])
        ack = await listener.sio.call("subscribe", {"session_id": session_id}, timeout=10)
        assert ack["ok"], ack
        warm = await ingest_one(http, token, "warm-up")
        await listener.until(warm, 30)
        for n in range(batches):
            sent = time.perf_counter()
            seq = await ingest_one(http, token, f"b{n}-{uuid.uuid4().hex[:6]}")
            answered = time.perf_counter()
            received = await listener.until(seq, 10)
            round_trips.append((answered - sent) * 1000)
            if received is None:
                missed += 1
                continue
            if received < answered:
                early += 1
            latencies.append((received - sent) * 1000)
    await listener.sio.disconnect()
    return {
        "ingests_sent": batches,
        "ingest_to_client": percentiles(latencies),
        "baseline_ingest_http_round_trip": percentiles(round_trips),
        "events_before_http_response": early,
        "missed": missed,
    }


def judged(result: dict[str, Any], mode: str) -> dict[str, Any]:
    """``result`` with its target and verdict (p99 under the target and no event missed)."""
    target = INGEST_TO_CLIENT_P99_MAX_MS[mode]
    met = result["missed"] == 0 and result["ingest_to_client"]["p99_ms"] < target
    return result | {"target_p99_ms": target, "target_met": met}


async def embedded(batches: int) -> dict[str, Any]:
    async with database("sqlite") as url:
        _user, token = await create_user(url, "rt-embedded")
        async with server_with_pid(url) as (base, _pid):
            result = await ingest_to_client(base, base, token, batches)
    return judged(result, "embedded")


async def scaled_out(batches: int) -> dict[str, Any]:
    prefix = f"vcb{uuid.uuid4().hex[:8]}"
    async with database("postgres") as url:
        _user, token = await create_user(url, "rt-scaled")
        with tempfile.TemporaryDirectory(prefix="vc-bench-data-") as data_dir:
            env = server_env(
                url,
                data_dir,
                VITALCAST_REDIS_URL=REDIS_URL,
                VITALCAST_SOCKETIO_CHANNEL=f"{prefix}-sio",
                VITALCAST_QUEUE_PREFIX=prefix,
            )
            try:
                async with (
                    serving(env) as (node_a, _pid_a),
                    serving(env) as (node_b, _pid_b),
                ):
                    with process(["worker"], env):
                        result = await ingest_to_client(node_b, node_a, token, batches)
            finally:
                await delete_keys(f"{prefix}*")
    return judged(result, "scaled_out")


async def fan_out(
    clients: int, sessions: int, rounds: int, *, profile: Path | None = None
) -> dict[str, Any]:
    async with database("sqlite") as url:
        people = [await create_user(url, f"rt-fan-{i}") for i in range(sessions)]
        async with (
            server_with_pid(url) as (base, pid),
            httpx.AsyncClient(base_url=base, timeout=60) as http,
        ):
            plan = [
                {"token": token, "session_id": await start_session(http, token)}
                for _user, token in people
            ]
            for entry in plan:
                await ingest_one(http, entry["token"], f"warm-{entry['session_id']}")
            await computes_drained(http)
            rss_idle = rss_mb(pid)
            return await _drive_load(
                base, pid, http, plan, clients, rounds, rss_idle, profile=profile
            )


async def seed_history(http: httpx.AsyncClient, token: str, minutes: int) -> None:
    """Heart rate at 1 Hz over the last ``minutes`` (the session has been live that long)."""
    now = int(wall_ms())
    times = range(now - minutes * 60_000, now - 2_000, 1_000)
    batch: list[dict[str, Any]] = []
    for at in times:
        batch.append(hr_sample(f"seed-{at}", at, 60.0 + (at // 1000) % 40))
        if len(batch) == 5_000 or at == times[-1]:
            response = await http.post(
                "/api/v1/samples",
                json={"samples": batch},
                headers={"Authorization": f"Bearer {token}"},
            )
            response.raise_for_status()
            batch = []


async def fan_out_fetch(clients: int, sessions: int, rounds: int) -> dict[str, Any]:
    """Fan-out where every client fetches the telemetry after each update, as the dashboard does:
    on one server, the same rounds first with clients fetching the full payload, then with
    clients fetching only what changed (``since_watermark``). Per mode: the server's CPU time per
    update and per fetch, and the bytes of a fetch."""
    async with database("sqlite") as url:
        people = [await create_user(url, f"rt-fetch-{i}") for i in range(sessions)]
        async with (
            server_with_pid(url) as (base, pid),
            httpx.AsyncClient(base_url=base, timeout=60) as http,
        ):
            plan = []
            for _user, token in people:
                session_id = await start_session(http, token, minutes_ago=FETCH_HISTORY_MIN + 5)
                await seed_history(http, token, FETCH_HISTORY_MIN)
                plan.append({"token": token, "session_id": session_id})
            await computes_drained(http)
            result: dict[str, Any] = {
                "clients": clients,
                "sessions": sessions,
                "rounds": rounds,
                "history_minutes": FETCH_HISTORY_MIN,
            }
            for mode in ("none", "full", "delta"):
                result[mode] = await _drive_load(
                    base,
                    pid,
                    http,
                    plan,
                    clients,
                    rounds,
                    rss_mb(pid),
                    fetch=None if mode == "none" else mode,
                )
    full, delta = result["full"]["server_cpu_ms"], result["delta"]["server_cpu_ms"]
    result["cpu_per_update_delta_over_full"] = round(delta["per_update"] / full["per_update"], 3)
    # How many fetches an update causes depends on how fast the clients fetch (an update that
    # arrives during a fetch is caught by one more), so the CPU per update of the two modes
    # compares different numbers of fetches. What a fetch costs is the CPU above the same rounds
    # without fetches, per fetch.
    updates_only = result["none"]["server_cpu_ms"]["total"]
    per_fetch = {
        mode: round((result[mode]["server_cpu_ms"]["total"] - updates_only) / count, 3)
        for mode in ("full", "delta")
        if (count := result[mode]["fetches"]["count"])
    }
    result["server_cpu_ms_per_fetch_above_updates"] = per_fetch
    if len(per_fetch) == 2 and per_fetch["full"] > 0:
        result["cpu_per_fetch_delta_over_full"] = round(per_fetch["delta"] / per_fetch["full"], 3)
    return result


async def server_metrics(http: httpx.AsyncClient) -> dict[str, float]:
    """The server's Prometheus samples, by series name with labels."""
    text = (await http.get("/metrics")).text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


async def computes_drained(http: httpx.AsyncClient, timeout_s: float = 120) -> None:
    """Wait until the server's coordinator has nothing running or waiting."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        samples = await server_metrics(http)
        if (
            samples.get("vitalcast_coordinator_inflight", 0) == 0
            and samples.get("vitalcast_coordinator_pending", 0) == 0
        ):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("computes did not drain")


async def _drive_load(
    base: str,
    pid: int,
    http: httpx.AsyncClient,
    plan: list[dict[str, str]],
    clients: int,
    rounds: int,
    rss_idle: float,
    *,
    fetch: str | None = None,
    profile: Path | None = None,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="vc-bench-load-") as folder:
        plan_path, out_path = Path(folder) / "plan.json", Path(folder) / "receipts.json"
        await asyncio.to_thread(plan_path.write_text, json.dumps({"entries": plan, "fetch": fetch}))
        load = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.realtime",
            "--load",
            base,
            str(plan_path),
            str(out_path),
            str(clients),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert load.stdout is not None and load.stdin is not None
        ready = (await asyncio.wait_for(load.stdout.readline(), 300)).decode().strip()
        assert ready.startswith("ready"), ready
        await computes_drained(http)
        warm_emitted = (await server_metrics(http)).get(
            'vitalcast_events_emitted_total{type="session.updated"}', 0.0
        )
        await asyncio.sleep(1)
        rss_connected = rss_mb(pid)
        cpu_before = cpu_ms(pid)
        #: (session id, sent at wall ms, change_seq; None when the ingest itself failed)
        sent: list[tuple[str, float, int | None]] = []
        gate = asyncio.Semaphore(INGEST_CONCURRENCY)

        async def one(entry: dict[str, str], r: int) -> None:
            async with gate:
                sent_ms = wall_ms()
                try:
                    seq: int | None = await ingest_one(
                        http, entry["token"], f"r{r}-{entry['session_id']}"
                    )
                except httpx.HTTPError:
                    seq = None
                sent.append((entry["session_id"], sent_ms, seq))

        settle_gc()
        own_pauses = GcPauses()
        with sampled(pid, profile):
            for r in range(rounds):
                await asyncio.gather(*(one(entry, r) for entry in plan))
                await computes_drained(http)
        sender_gc_pause = own_pauses.take()
        gc.enable()
        await asyncio.sleep(2)
        # every fetch the updates caused is answered before the server's CPU is read
        load.stdin.write(b"drain\n")
        await load.stdin.drain()
        drained = (await asyncio.wait_for(load.stdout.readline(), 300)).decode().strip()
        assert drained == "drained", drained
        cpu_used = cpu_ms(pid) - cpu_before
        rss_after = rss_mb(pid)
        server = await server_metrics(http)
        load.stdin.write(b"stop\n")
        await load.stdin.drain()
        await asyncio.wait_for(load.wait(), 120)
        receipts = json.loads(await asyncio.to_thread(out_path.read_text))
    deliveries = count_deliveries(plan, clients, sent, receipts["events"])
    emitted = server.get('vitalcast_events_emitted_total{type="session.updated"}', 0.0)
    fetches = receipts["fetches"]
    extra: dict[str, Any] = {}
    if fetch is not None:
        extra["fetches"] = {
            "count": len(fetches),
            "answers": {
                kind: sum(1 for f in fetches if f[0] == kind)
                for kind in sorted({f[0] for f in fetches})
            },
            "per_update": round(len(fetches) / max(1, len(sent)), 2),
            "bytes": {
                "p50": statistics.median(f[1] for f in fetches),
                "mean": round(statistics.fmean(f[1] for f in fetches)),
                "max": max(f[1] for f in fetches),
            },
        }
    return {
        "clients": clients,
        "sessions": len(plan),
        "rounds": rounds,
        # the instrument: a driver's GC pause delays the sends or receipts behind it
        "drivers_gc_pause": {"sender": sender_gc_pause, "watchers": receipts["gc_pause"]},
        "clients_connected": receipts["connected"],
        "ingests_sent": len(sent),
        "ingests_failed": sum(1 for _s, _t, seq in sent if seq is None),
        "expected_deliveries": deliveries["expected"],
        "delivered": deliveries["delivered"],
        "events_received": len(receipts["events"]),
        "server_reported": {
            "session_updated_emitted": emitted - warm_emitted,
            "coordinator_shed": server.get("vitalcast_coordinator_shed_total", 0.0),
        },
        "delivery_ingest_sent_to_client": percentiles(deliveries["from_send"]),
        "delivery_compute_start_to_client": percentiles(deliveries["from_compute"]),
        "delivery_spread_within_room": percentiles(deliveries["spread"]),
        "server_cpu_ms": {
            "total": round(cpu_used, 1),
            "per_update": round(cpu_used / max(1, len(sent)), 3),
            "per_fetch": round(cpu_used / len(fetches), 3) if fetches else None,
        },
        **extra,
        "server_rss_mb": {
            "baseline_idle": rss_idle,
            "clients_connected": rss_connected,
            "after_rounds": rss_after,
            "per_client_kb": round((rss_connected - rss_idle) * 1024 / max(1, clients), 1),
        },
    }


@contextlib.contextmanager
def sampled(pid: int, out: Path | None) -> Iterator[None]:
    """py-spy sampling the server ``pid`` (collapsed stacks into ``out``, idle frames left out)
    while the block runs; nothing without ``out``. py-spy is not a project dependency: it runs
    through ``uvx`` (``PY_SPY`` overrides the command)."""
    if out is None:
        yield
        return
    command = os.environ.get("PY_SPY", "uvx py-spy").split()
    spy = subprocess.Popen(
        [
            *command,
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--rate",
            "200",
            "--nonblocking",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(60)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()


def count_deliveries(
    plan: list[dict[str, str]],
    clients: int,
    sent: list[tuple[str, float, int | None]],
    events: list[list[Any]],
) -> dict[str, Any]:
    """Match every (ingest sent, client meant to subscribe to its session) pair with the first
    event at the ingest's watermark or newer that this client received.

    ``events`` are the load process's receipts ``[client, session, watermark, computed_at_ms,
    received_ms]``. Client ``n`` subscribes to ``plan[n % len(plan)]``; a client that failed to
    connect or subscribe received nothing, so its pairs count as expected and undelivered."""
    by_client: dict[int, list[tuple[float, int, int]]] = {}
    first_in_room: dict[tuple[str, int], float] = {}
    for client, session_id, watermark, computed_at_ms, received_ms in events:
        by_client.setdefault(client, []).append((received_ms, watermark, computed_at_ms))
        event = (session_id, watermark)
        first_in_room[event] = min(received_ms, first_in_room.get(event, received_ms))
    for receipts in by_client.values():
        receipts.sort()
    expected = delivered = 0
    from_send: list[float] = []
    from_compute: list[float] = []
    spread: list[float] = []
    for client in range(clients):
        session_id = plan[client % len(plan)]["session_id"]
        receipts = by_client.get(client, [])
        for ingest_session, sent_ms, seq in sent:
            if ingest_session != session_id:
                continue
            expected += 1
            if seq is None:
                continue
            hit = next((r for r in receipts if r[1] >= seq), None)
            if hit is None:
                continue
            received_ms, watermark, computed_at_ms = hit
            delivered += 1
            from_send.append(received_ms - sent_ms)
            from_compute.append(received_ms - computed_at_ms)
            spread.append(received_ms - first_in_room[(session_id, watermark)])
    return {
        "expected": expected,
        "delivered": delivered,
        "from_send": from_send,
        "from_compute": from_compute,
        "spread": spread,
    }


async def load_process(
    base: str, plan: list[dict[str, str]], clients: int, fetch: str | None
) -> dict[str, Any]:
    """The separate load process: connect, subscribe, record events until stdin says stop.
    Client ``n`` subscribes to ``plan[n % len(plan)]``; each receipt names its client. With
    ``fetch`` ("full" or "delta") each client first loads the payload, as the dashboard does when
    it opens a session (before "ready": not counted), then fetches the telemetry after every
    update that is newer than what it holds, one fetch at a time (an update during a fetch is
    caught by one more, unless that fetch brought it already), as the dashboard does. So both
    modes answer the same updates, and a delta client is never behind by more than an update.
    "drain" on stdin waits until no fetch is running and answers "drained"."""
    events: list[tuple[int, str, int, int, float]] = []
    #: (answer kind: "delta", "full" or the state, bytes) of every fetch
    fetches: list[tuple[str, int]] = []
    sockets: list[socketio.AsyncClient] = []
    gate = asyncio.Semaphore(LOAD_CONNECT_CONCURRENCY)
    http = httpx.AsyncClient(
        base_url=base, timeout=60, limits=httpx.Limits(max_connections=FETCH_CONNECTIONS)
    )
    running: set[asyncio.Task[None]] = set()

    async def connect(n: int) -> None:
        entry = plan[n % len(plan)]
        sio = socketio.AsyncClient(reconnection=False)
        #: the save this client holds and the newest one an event announced, each as
        #: (watermark, computed_at_ms)
        held: dict[str, Any] = {
            "save": None,
            "announced": (-1, -1),
            "busy": False,
            "again": False,
        }

        def behind() -> bool:
            return held["save"] is None or held["save"] < held["announced"]

        async def fetch_telemetry() -> str:
            """Fetches until the client holds the newest save announced; the last state."""
            query = {"window_minutes": "60", "resolution": "auto", "metrics": "all"}
            while True:
                held["again"] = False
                if fetch == "delta" and held["save"] is not None:
                    query["since_watermark"] = str(held["save"][0])
                response = await http.get(
                    f"/api/v1/sessions/{entry['session_id']}/telemetry",
                    params=query,
                    headers={"Authorization": f"Bearer {entry['token']}"},
                )
                body = response.json()
                answer = body.get("delta") or body.get("telemetry")
                kind = "delta" if "delta" in body else "full" if answer else body["state"]
                fetches.append((kind, len(response.content)))
                if answer and body["state"] == "ready":
                    computed_at = answer.get("computed_at_ms")
                    if computed_at is None and held["save"] is not None:
                        computed_at = held["save"][1]  # a delta leaves out an unchanged head
                    held["save"] = (answer["source_watermark"], computed_at or 0)
                if not (held["again"] and behind()):
                    held["busy"] = False
                    return str(body["state"])

        async def on_updated(data: dict[str, Any]) -> None:
            received_ms = wall_ms()
            watermark, computed_at_ms = data["source_watermark"], data["computed_at_ms"]
            events.append((n, data["session_id"], watermark, computed_at_ms, received_ms))
            if fetch is None:
                return
            held["announced"] = max(held["announced"], (watermark, computed_at_ms))
            if not behind():
                return  # a fetch already brought this save
            if held["busy"]:
                held["again"] = True
                return
            held["busy"] = True
            task = asyncio.create_task(fetch_telemetry())
            running.add(task)
            task.add_done_callback(running.discard)

        sio.on("session.updated", on_updated)
        async with gate:
            await sio.connect(
                base, auth={"token": entry["token"]}, transports=["websocket"], wait_timeout=30
            )
            ack = await sio.call("subscribe", {"session_id": entry["session_id"]}, timeout=30)
        if ack.get("ok"):
            sockets.append(sio)
        if fetch is not None:
            # the page's first load of the session: the payload every later fetch builds on
            for _ in range(100):
                held["busy"] = True
                if await fetch_telemetry() == "ready":
                    break
                await asyncio.sleep(0.2)

    await asyncio.gather(*(connect(n) for n in range(clients)))
    # the first loads are the page opening, not the updates: only what follows is counted
    fetches.clear()
    # the clients held for the run are out of the collector's reach while the rounds run: a
    # full collection over thousands of sockets stamps every receipt behind it late
    settle_gc()
    pauses = GcPauses()
    print(f"ready {len(sockets)}", flush=True)
    loop = asyncio.get_running_loop()
    while (line := (await loop.run_in_executor(None, sys.stdin.readline)).strip()) != "stop":
        if line == "drain":
            while running:
                await asyncio.gather(*running)
            print("drained", flush=True)
    gc_pause = pauses.take()
    gc.enable()
    await asyncio.gather(*(s.disconnect() for s in sockets), return_exceptions=True)
    await http.aclose()
    return {"connected": len(sockets), "events": events, "fetches": fetches, "gc_pause": gc_pause}


#: the burst of issue 12: 200 sessions updated at once, each watched by 20 clients
BURST_CLIENTS, BURST_SESSIONS, BURST_ROUNDS = 4000, 200, 5


async def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--parts", default="embedded,scaled_out,fan_out,fan_out_fetch")
    parser.add_argument(
        "--burst",
        action="store_true",
        help="only the burst of issue 12: fan-out with 4,000 clients over 200 sessions, 5 rounds "
        "(every session's compute at once), kept as bench/results/realtime_burst.json",
    )
    parser.add_argument(
        "--burst-size",
        type=int,
        nargs=3,
        metavar=("CLIENTS", "SESSIONS", "ROUNDS"),
        default=(BURST_CLIENTS, BURST_SESSIONS, BURST_ROUNDS),
        help="a smaller burst on a loaded machine (the result records the size it ran at)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="with --burst: py-spy samples the server during the rounds into this file "
        "(collapsed stacks; bench/profile_summary.py reads them)",
    )
    parser.add_argument("--load", nargs=4, metavar=("URL", "PLAN", "OUT", "CLIENTS"))
    args = parser.parse_args(argv)
    if args.load:
        url, plan_path, out_path, clients = args.load
        plan = json.loads(await asyncio.to_thread(Path(plan_path).read_text))
        receipts = await load_process(url, plan["entries"], int(clients), plan["fetch"])
        await asyncio.to_thread(Path(out_path).write_text, json.dumps(receipts))
        return
    if args.burst:
        burst = await fan_out(*args.burst_size, profile=args.profile)
        emit("realtime_burst", {"benchmark": "realtime_burst", "fan_out": burst})
        return
    parts = args.parts.split(",")
    result: dict[str, Any] = {"benchmark": "realtime", "batches": args.batches}
    if "embedded" in parts:
        result["embedded"] = await embedded(args.batches)
    if "scaled_out" in parts:
        result["scaled_out"] = await scaled_out(args.batches)
    if "fan_out" in parts:
        result["fan_out"] = await fan_out(args.clients, args.sessions, args.rounds)
    if "fan_out_fetch" in parts:
        result["fan_out_fetch"] = await fan_out_fetch(args.clients, args.sessions, args.rounds)
    emit("realtime", result)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
