"""The cost of a live update, and how many live sessions one process carries (issue 22).

A live session syncs a 5 s batch (5 heart-rate samples at 1 Hz) every 5 s, and 5 watchers
(Socket.IO clients of a separate load process) are subscribed to it. Every figure is counted
against what the benchmark *sent*: an ingest is delivered when each of its session's watchers
received ``session.updated`` at its watermark or newer; latency runs from the ingest's scheduled
send time to the *last* watcher's receipt.

1. ``cpu``: the server's CPU per live update (ingest + compute + push to its 5 watchers), from
   the processes' own CPU counters (embedded: the one server on SQLite; scaled out on
   PostgreSQL: one server and one worker, together), over ``--cpu-sessions`` sessions for
   ``--rounds`` rounds on the open-loop schedule, once per session count (40 and 200: 8 and 40
   updates a second). Baselines in the same run: the CPU of one keep-alive ``GET /healthz``
   (the request stack and nothing else), back to back and sent on the updates' own schedule
   (at a few requests a second a server wakes from sleep for each, which costs this machine
   about twice the back-to-back CPU: ``paced_healthz_cpu``). Scaled out, also the CPU of one
   Redis round trip (a ``PING``) made on that schedule by a process of its own
   (``paced_round_trip_cpu``): an update there is a chain of such exchanges (HTTP, PostgreSQL,
   Redis, pub/sub, WebSocket), and this is what each costs this machine at that rate.
2. ``capacity`` (embedded): open loop, N sessions each syncing every 5 s on a fixed schedule
   (session i at i·5 s/N into each period, whether or not earlier ingests were answered). N
   climbs ``--ladder``; the capacity is the largest N whose ingest sent → last watcher p99 stays
   under 250 ms with every ingest delivered, below the first step that did not. The climb ends
   at a second failed step, a missed ingest or a p99 over four times the limit. Each step also
   reports its instrument (``drivers``): the CPU share of this process (the ingests) and of the
   load process (the watchers) while the step sends, and their longest GC pause; both settle
   their collectors before a step (``settle_gc``), and ``late_by_second`` places the ingests
   over the limit in the step, so a stall and an overload look different.

Every loop is bounded (rounds, ladder steps, timeouts); all traffic goes to 127.0.0.1.

    uv run python -m bench.capacity [--parts cpu,capacity] [--ladder 50,100,200,400,700,1000]
        [--rounds 4] [--cpu-sessions 40,200] [--name capacity]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import redis.asyncio as aioredis
import socketio
import uvloop

from bench.common import (
    REDIS_URL,
    SECRET,
    GcPauses,
    cpu_ms,
    database,
    delete_keys,
    emit,
    free_port,
    percentiles,
    process,
    server_env,
    serving,
    settle_gc,
)
from bench.realtime import computes_drained, sampled, server_metrics
from bench.targets import CAPACITY_P99_MAX_MS, CAPACITY_SESSIONS_MIN, CPU_PER_UPDATE_MAX_MS
from vitalcast.auth import issue_token
from vitalcast.clock import iso_ms
from vitalcast.db.engine import Database, create_engine
from vitalcast.testing import ensure_user, hr_sample

SYNC_MS = 5_000
WATCHERS = 5
BATCH = 5
HEALTHZ_REQUESTS = 2_000
#: how long after a step's last ingest its events may still arrive
SETTLE_S = 10.0
CONNECT_CONCURRENCY = 50
#: seconds the cpu part measures the idle processes' CPU before its load
IDLE_S = 3.0
#: periods of /healthz (and of Redis PINGs) on the updates' schedule (``paced_healthz_cpu``)
PACED_HEALTHZ_ROUNDS = 2
HTTP_CONNECTIONS = 200
#: the command line of ``paced_round_trip_cpu``'s child
PACED_PINGS = "--paced-pings"


def wall_ms() -> float:
    return time.time() * 1000


async def people(url: str, n: int) -> list[tuple[str, str]]:
    """``n`` users with a token valid a day, made through one engine."""
    db = Database(create_engine(url))
    now_s = int(time.time())
    try:
        made = []
        for i in range(n):
            user_id = await ensure_user(db, f"cap-{i}-{uuid.uuid4().hex[:6]}")
            made.append((user_id, issue_token(SECRET, user_id, now_s=now_s, ttl_s=86_400)))
        return made
    finally:
        await db.dispose()


async def start_sessions(
    http: httpx.AsyncClient, users: list[tuple[str, str]]
) -> list[dict[str, str]]:
    plan = []
    for _user, token in users:
        started_ms = int(wall_ms()) - 60_000
        response = await http.post(
            "/api/v1/sessions",
            json={"started_at": iso_ms(started_ms)},
            headers={"Authorization": f"Bearer {token}"},
        )
        response.raise_for_status()
        plan.append(
            {"token": token, "session_id": str(response.json()["id"]), "started_ms": started_ms}
        )
    return plan


def batch(tag: str, at_ms: float) -> dict[str, Any]:
    """A 5 s batch ending a second before ``at_ms``, at 1 Hz."""
    end = int(at_ms) - 1_000
    return {
        "samples": [
            hr_sample(f"{tag}-{j}", end - (BATCH - 1 - j) * 1_000, 60.0 + (j * 7) % 40)
            for j in range(BATCH)
        ]
    }


def gc_path(out: Path) -> Path:
    return out.with_suffix(".gc.json")


class Load:
    """The load process (``--load``): Socket.IO watchers, grown on command, receipts on flush."""

    def __init__(self, base: str, plan_path: Path, out_path: Path, settle: bool = True) -> None:
        self.base, self.plan_path, self.out_path = base, plan_path, out_path
        self.settle = settle
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Load:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.capacity",
            "--load",
            self.base,
            str(self.plan_path),
            str(self.out_path),
            *(["--unsettled-drivers"] if not self.settle else []),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return self

    async def ask(self, line: str, timeout_s: float = 600) -> str:
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(f"{line}\n".encode())
        await self.proc.stdin.drain()
        return (await asyncio.wait_for(self.proc.stdout.readline(), timeout_s)).decode().strip()

    async def receipts(self) -> list[list[Any]]:
        answer = await self.ask("flush")
        assert answer == "flushed", answer
        return list(json.loads(await asyncio.to_thread(self.out_path.read_text)))

    async def gc_pauses(self) -> dict[str, float]:
        """The load process's GC pauses between the last two flushes."""
        return dict(json.loads(await asyncio.to_thread(gc_path(self.out_path).read_text)))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def __aexit__(self, *_exc: object) -> None:
        if self.proc is not None:
            with contextlib.suppress(Exception):
                await self.ask("stop", 60)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


async def load_process(
    base: str, plan: list[dict[str, str]], out: Path, settle: bool = True
) -> None:
    """Connect ``WATCHERS`` clients per session of ``plan[:N]`` on "connect N"; receipts
    ``[session index, client, watermark, received wall ms]`` into ``out`` on "flush", and
    this process's longest and total GC pause since the previous flush into ``out``.gc."""
    receipts: list[tuple[int, int, int, float]] = []
    pauses = GcPauses()
    sockets: list[socketio.AsyncClient] = []
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    failed = 0

    async def connect(index: int, client: int) -> None:
        nonlocal failed
        entry = plan[index]
        sio = socketio.AsyncClient(reconnection=False)

        async def on_updated(data: dict[str, Any]) -> None:
            receipts.append((index, client, data["source_watermark"], wall_ms()))

        sio.on("session.updated", on_updated)
        try:
            async with gate:
                await sio.connect(
                    base, auth={"token": entry["token"]}, transports=["websocket"], wait_timeout=60
                )
                ack = await sio.call("subscribe", {"session_id": entry["session_id"]}, timeout=60)
        except Exception:
            failed += 1
            return
        if ack.get("ok"):
            sockets.append(sio)
        else:
            failed += 1

    connected_sessions = 0
    loop = asyncio.get_running_loop()
    while (line := (await loop.run_in_executor(None, sys.stdin.readline)).strip()) != "stop":
        if not line:
            break
        command, _, arg = line.partition(" ")
        if command == "connect":
            n = min(int(arg), len(plan))
            await asyncio.gather(
                *(connect(i, c) for i in range(connected_sessions, n) for c in range(WATCHERS))
            )
            connected_sessions = max(n, connected_sessions)
            if settle:
                settle_gc()
                pauses.take()
            print(f"connected {len(sockets)} failed {failed}", flush=True)
        elif command == "flush":
            taken = pauses.take()
            await asyncio.to_thread(out.write_text, json.dumps(receipts))
            await asyncio.to_thread(gc_path(out).write_text, json.dumps(taken))
            receipts = []
            if settle:
                settle_gc()
                pauses.take()  # the settling collection is between steps, not in one
            print("flushed", flush=True)
    await asyncio.gather(*(s.disconnect() for s in sockets), return_exceptions=True)


async def warm(http: httpx.AsyncClient, plan: list[dict[str, str]], lo: int, hi: int) -> None:
    """One ingest into each of the sessions ``plan[lo:hi]`` (their views' first, full computes
    are not what a step measures), then until the computes drained."""
    gate = asyncio.Semaphore(20)

    async def one(i: int) -> None:
        async with gate:
            response = await http.post(
                "/api/v1/samples",
                json=batch(f"warm-{i}", wall_ms()),
                headers={"Authorization": f"Bearer {plan[i]['token']}"},
            )
            response.raise_for_status()

    await asyncio.gather(*(one(i) for i in range(lo, hi)))
    await computes_drained(http)
    await asyncio.sleep(1)


async def open_loop(
    sender: aiohttp.ClientSession,
    plan: list[dict[str, str]],
    n: int,
    rounds: int,
    step: str,
    answered: dict[tuple[int, float], float] | None = None,
) -> list[tuple[int, float, float, int | None]]:
    """``rounds`` periods of ``n`` sessions syncing on the fixed schedule; per ingest (session
    index, scheduled wall ms, lag of the actual send behind it, change_seq or None). The sends
    go through aiohttp: with httpx this process fell seconds behind its schedule near 700
    sessions (140 ingests per second) while the server used a fifth of a core."""
    sent: list[tuple[int, float, float, int | None]] = []

    async def one(i: int, scheduled: float, k: int) -> None:
        lag = wall_ms() - scheduled
        entry = plan[i]
        seq: int | None
        try:
            async with sender.post(
                "/api/v1/samples",
                json=batch(f"{step}-{k}-{i}", scheduled),
                headers={"Authorization": f"Bearer {entry['token']}"},
                raise_for_status=True,
            ) as response:
                seq = int((await response.json())["change_seq"])
        except (aiohttp.ClientError, TimeoutError):
            seq = None
        sent.append((i, scheduled, lag, seq))
        if answered is not None:
            answered[(i, scheduled)] = wall_ms() - scheduled

    tasks: list[asyncio.Task[None]] = []
    start = wall_ms() + 500
    for k in range(rounds):
        for i in range(n):
            scheduled = start + k * SYNC_MS + i * SYNC_MS / n
            delay = (scheduled - wall_ms()) / 1000
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, scheduled, k)))
    await asyncio.wait(tasks, timeout=60)
    for task in tasks:
        task.cancel()
    return sent


def judge(
    sent: list[tuple[int, float, float, int | None]],
    receipts: list[list[Any]],
    plan: Sequence[dict[str, Any]] = (),
    answered: dict[tuple[int, float], float] | None = None,
) -> dict[str, Any]:
    """Per ingest: scheduled send → its last watcher's first event at its watermark or newer.
    ``late_by_second``: how many ingests went over the p99 limit, by the second of the step
    they were scheduled in (a stall shows as a run of seconds, load as a spread), and with
    ``answered`` (ms from schedule to the ingest's HTTP answer) how long the late ones and all
    waited for their answer, so a late answer can be told from a late push;
    ``boundaries_by_second``: how many of the step's sessions (of ``plan``) cross a minute of
    their grid in each second of the step, to line the late ones up against."""
    by_watcher: dict[tuple[int, int], list[tuple[float, int]]] = {}
    for index, client, watermark, received in receipts:
        by_watcher.setdefault((index, client), []).append((received, watermark))
    for events in by_watcher.values():
        events.sort()
    latencies: list[float] = []
    late: dict[int, int] = {}
    late_answers: list[float] = []
    start = min((scheduled for _i, scheduled, _lag, _seq in sent), default=0.0)
    missed = failed = 0
    for index, scheduled, _lag, seq in sent:
        if seq is None:
            failed += 1
            continue
        last = None
        for client in range(WATCHERS):
            hit = next((r for r, w in by_watcher.get((index, client), []) if w >= seq), None)
            if hit is None:
                last = None
                break
            last = hit if last is None else max(last, hit)
        if last is None:
            missed += 1
        else:
            latencies.append(last - scheduled)
            if last - scheduled > CAPACITY_P99_MAX_MS:
                if answered is not None and (index, scheduled) in answered:
                    late_answers.append(answered[(index, scheduled)])
                second = int((scheduled - start) // 1000)
                late[second] = late.get(second, 0) + 1
    return {
        "ingests_sent": len(sent),
        "ingests_failed": failed,
        "missed": missed,
        "ingest_sent_to_last_watcher": percentiles(latencies) if latencies else None,
        "send_lag_behind_schedule": percentiles([lag for _i, _s, lag, _q in sent]),
        "late_by_second": {str(k): v for k, v in sorted(late.items())},
        "step_start_wall_ms": round(start),
        **(
            {
                "ingest_answered": percentiles(list(answered.values())) if answered else None,
                "late_ingests_answered": percentiles(late_answers) if late_answers else None,
            }
            if answered is not None
            else {}
        ),
        "boundaries_by_second": boundaries_by_second(plan, sent, start),
    }


def boundaries_by_second(
    plan: Sequence[dict[str, Any]], sent: list[tuple[int, float, float, int | None]], start: float
) -> dict[str, int]:
    """Per second of the step, how many of its sessions cross a minute boundary of their grid
    (sessions start on the minute grid of their ``started_ms``)."""
    end = max((scheduled for _i, scheduled, _lag, _seq in sent), default=start)
    counts: dict[int, int] = {}
    for index in {i for i, _s, _lag, _seq in sent}:
        started = plan[index].get("started_ms") if index < len(plan) else None
        if started is None:
            continue
        boundary = started + -(-(start - started) // 60_000) * 60_000
        while boundary <= end:
            second = int((boundary - start) // 1000)
            counts[second] = counts.get(second, 0) + 1
            boundary += 60_000
    return {str(k): v for k, v in sorted(counts.items())}


GC_PAUSE = "vitalcast_gc_pause_seconds"
LOOP_LAG = "vitalcast_event_loop_lag_seconds"
UNITS = "vitalcast_sqlite_unit_seconds"
ON_LOOP = "vitalcast_sqlite_units_on_loop_total"
STAGES = "vitalcast_compute_stage_seconds"
BATCH_VIEWS = "vitalcast_compute_batch_views"
#: a scaled-out worker's /metrics URL, by its pid (its compute batches' sizes)
WORKER_METRICS: dict[int, str] = {}


async def worker_batches(pid: int) -> tuple[float, float] | None:
    """(batches, views) a scaled-out worker has computed so far; None without its /metrics."""
    url = WORKER_METRICS.get(pid)
    if url is None:
        return None
    async with httpx.AsyncClient() as http:
        text = (await http.get(url)).text
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line[:1] not in ("", "#"))
    return float(samples.get(f"{BATCH_VIEWS}_count", 0)), float(
        samples.get(f"{BATCH_VIEWS}_sum", 0)
    )


def server_pauses(before: dict[str, float], after: dict[str, float]) -> dict[str, Any] | None:
    """What held the server between two /metrics reads: its GC pauses (total, and how many over
    50 and 100 ms), how many of its loop-lag probes ran over 100 ms, 250 ms and 1 s late, how
    many SQLite write units waited (for a thread and the write lock) or ran over 100 ms and 1 s,
    how long the write units held the write lock in all, and the compute batches' time by stage;
    None from a server without these series (a baseline's older code)."""
    if f"{LOOP_LAG}_count" not in after:
        return None

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    def gc_over(le: str, generations: str = "012") -> float:
        return sum(
            delta(f'{GC_PAUSE}_count{{generation="{g}"}}')
            - delta(f'{GC_PAUSE}_bucket{{generation="{g}",le="{le}"}}')
            for g in generations
        )

    def lag_over(le: str) -> float:
        return delta(f"{LOOP_LAG}_count") - delta(f'{LOOP_LAG}_bucket{{le="{le}"}}')

    def writes_over(phase: str, le: str) -> float:
        # prometheus_client writes a sample's labels in sorted order, ``le`` among them
        count = f'{UNITS}_count{{kind="write",phase="{phase}"}}'
        bucket = f'{UNITS}_bucket{{kind="write",le="{le}",phase="{phase}"}}'
        return delta(count) - delta(bucket)

    gc_s = sum(delta(f'{GC_PAUSE}_sum{{generation="{g}"}}') for g in "012")
    # SQLite has one writer: the write units' run times add up to the time it was held
    write_run_s = delta(f'{UNITS}_sum{{kind="write",phase="run"}}')
    return {
        "gc_total_ms": round(gc_s * 1000, 1),
        "gc_pauses_over_50ms": gc_over("0.05"),
        "gc_pauses_over_100ms": gc_over("0.1"),
        "gc_pauses_over_50ms_by_generation": {g: gc_over("0.05", g) for g in "012"},
        "gc_collections_by_generation": {
            g: delta(f'{GC_PAUSE}_count{{generation="{g}"}}') for g in "012"
        },
        "loop_lag_over_100ms": lag_over("0.1"),
        "loop_lag_over_250ms": lag_over("0.25"),
        "loop_lag_over_1s": lag_over("1.0"),
        "sqlite_write_waits_over_100ms": writes_over("wait", "0.1"),
        "sqlite_write_waits_over_1s": writes_over("wait", "1.0"),
        "sqlite_write_runs_over_100ms": writes_over("run", "0.1"),
        "sqlite_write_runs_over_1s": writes_over("run", "1.0"),
        "sqlite_write_lock_held_s": round(write_run_s, 3),
        "sqlite_write_units": delta(f'{UNITS}_count{{kind="write",phase="run"}}'),
        # short write units run on the event loop's thread (a server without the series: 0)
        "sqlite_write_units_on_loop": delta(f'{ON_LOOP}{{kind="write"}}'),
        # where the live updates' compute batches spent their time (seconds, all batches)
        "compute_batches": delta(f'{STAGES}_count{{stage="save"}}'),
        "compute_stage_s": {
            stage: round(delta(f'{STAGES}_sum{{stage="{stage}"}}'), 3)
            for stage in ("read", "aggregate", "assemble", "save", "push")
        },
    }


async def until_boundaries_at(plan: Sequence[dict[str, Any]], at_s: float) -> None:
    """Wait until a step starting now has the first of its sessions' minute boundaries
    ``at_s`` seconds into it (``open_loop`` starts 0.5 s after it is called), so that runs put
    the sessions' boundaries (started together, so crossed together) at the same point."""
    first = min(int(entry["started_ms"]) for entry in plan)
    start = wall_ms() + 500
    boundary = first + -(-(start + at_s * 1000 - first) // 60_000) * 60_000
    await asyncio.sleep(max(0.0, boundary - at_s * 1000 - start) / 1000)


def cpu_of(pids: Sequence[int]) -> float:
    return sum(cpu_ms(pid) for pid in pids)


def threads_cpu(pid: int) -> dict[str, float]:
    """CPU ms used so far by each thread of ``pid``, by thread name (Linux)."""
    used: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rpartition(")")[2].split()
            ms = (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")
            used[name] = used.get(name, 0.0) + ms
    return used


def per_process(
    names: Sequence[str], pids: Sequence[int], before: list[dict[str, float]], updates: int
) -> dict[str, Any]:
    """CPU ms per update of each process, and of each of its threads (by name), since
    ``before`` (``threads_cpu`` of each pid)."""
    out: dict[str, Any] = {}
    for name, pid, then in zip(names, pids, before, strict=True):
        now = threads_cpu(pid)
        threads = {
            thread: round((ms - then.get(thread, 0.0)) / updates, 3) for thread, ms in now.items()
        }
        out[name] = {
            "cpu_ms_per_update": round(sum(threads.values()), 3),
            "threads": {t: ms for t, ms in sorted(threads.items()) if ms > 0},
        }
    return out


def profiling(pids: Sequence[int], on: bool) -> None:
    """Switch the cProfile of ``bench.cprofiled`` processes on or off (and write it)."""
    for pid in pids:
        os.kill(pid, signal.SIGUSR1 if on else signal.SIGUSR2)


async def healthz_cpu(http: httpx.AsyncClient, pids: Sequence[int]) -> float:
    """Server CPU of one keep-alive GET /healthz (ms)."""
    await http.get("/healthz")
    before = cpu_of(pids[:1])
    for _ in range(HEALTHZ_REQUESTS):
        (await http.get("/healthz")).raise_for_status()
    return round((cpu_of(pids[:1]) - before) / HEALTHZ_REQUESTS, 3)


async def paced_healthz_cpu(
    sender: aiohttp.ClientSession, pids: Sequence[int], n: int, rounds: int
) -> float:
    """Server CPU of one keep-alive GET /healthz sent on the updates' open-loop schedule (``n``
    every 5 s, for ``rounds`` periods), idle time included as it is in the updates' figure.
    Between two such requests the server sleeps, and on this kind of machine its first work
    after a sleep costs more (caches gone cold): the same request costs about twice its
    back-to-back CPU at a few per second. This is the request stack's floor *at the rate the
    updates were measured at*, which the back-to-back figure is not."""
    before = cpu_of(pids[:1])
    start = wall_ms() + 200
    sent = 0
    for k in range(rounds):
        for i in range(n):
            delay = (start + k * SYNC_MS + i * SYNC_MS / n - wall_ms()) / 1000
            if delay > 0:
                await asyncio.sleep(delay)
            async with sender.get("/healthz", raise_for_status=True) as response:
                await response.read()
            sent += 1
    return round((cpu_of(pids[:1]) - before) / max(1, sent), 3)


async def paced_round_trip_cpu(n: int, rounds: int) -> float:
    """CPU of one Redis round trip (``PING``) made by a process of its own (uvloop, as the
    servers run) on the updates' open-loop schedule: ``n`` every 5 s for ``rounds`` periods.
    That process does nothing else, so its CPU over the pings is the exchange's own cost,
    wake-up from sleep included, as it is for each exchange of a paced live update."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.capacity",
        PACED_PINGS,
        str(n),
        str(rounds),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"the paced pings failed ({child.returncode})")
    return round(float(out), 3)


async def paced_pings(n: int, rounds: int) -> None:
    """The child of ``paced_round_trip_cpu``: prints its CPU per PING in ms."""
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
        before = time.process_time()
        start = wall_ms() + 200
        for k in range(rounds):
            for i in range(n):
                delay = (start + k * SYNC_MS + i * SYNC_MS / n - wall_ms()) / 1000
                if delay > 0:
                    await asyncio.sleep(delay)
                await client.ping()
        print((time.process_time() - before) * 1000 / max(1, n * rounds))
    finally:
        await client.aclose()


async def cpu_part(
    http: httpx.AsyncClient,
    sender: aiohttp.ClientSession,
    load: Load,
    plan: list[dict[str, str]],
    pids: Sequence[int],
    rounds: int,
    profile: Path | None = None,
    cprofile: bool = False,
) -> dict[str, Any]:
    n = len(plan)
    answer = await load.ask(f"connect {n}")
    await warm(http, plan, 0, n)
    await asyncio.sleep(1)
    healthz = await healthz_cpu(http, pids)
    paced = await paced_healthz_cpu(sender, pids, n, PACED_HEALTHZ_ROUNDS)
    round_trip = await paced_round_trip_cpu(n, PACED_HEALTHZ_ROUNDS) if len(pids) > 1 else None
    await load.receipts()
    names = ["server", "worker"][: len(pids)]
    idle_before = [threads_cpu(pid) for pid in pids]
    await asyncio.sleep(IDLE_S)
    idle = {
        name: round(ms["cpu_ms_per_update"] / IDLE_S, 3)
        for name, ms in per_process(names, pids, idle_before, 1).items()
    }
    batches_before = await worker_batches(pids[-1])
    before = cpu_of(pids)
    threads_before = [threads_cpu(pid) for pid in pids]
    if cprofile:
        profiling(pids, on=True)
    with contextlib.ExitStack() as spies:
        for name, pid in zip(names, pids, strict=True):
            out = profile
            if profile is not None and len(pids) > 1:
                out = profile.with_name(f"{profile.stem}-{name}{profile.suffix}")
            spies.enter_context(sampled(pid, out))
        sent = await open_loop(sender, plan, n, rounds, f"cpu{uuid.uuid4().hex[:4]}")
        await computes_drained(http)
        await asyncio.sleep(2)
    if cprofile:
        profiling(pids, on=False)
    used = cpu_of(pids) - before
    batches_after = await worker_batches(pids[-1])
    batches = None
    if batches_before is not None and batches_after is not None:
        count, views = (a - b for a, b in zip(batches_after, batches_before, strict=True))
        batches = {
            "batches": count,
            "views": views,
            "views_per_batch": round(views / count, 2) if count else None,
        }
    result = judge(sent, await load.receipts())
    per_update = round(used / max(1, len(sent)), 3)
    by_process = per_process(names, pids, threads_before, max(1, len(sent)))
    return {
        "sessions": n,
        "watchers_per_session": WATCHERS,
        "rounds": rounds,
        "watchers": answer,
        **result,
        "cpu_ms_per_update": per_update,
        "by_process": by_process,
        # a scaled-out worker's compute batches during the measurement (its /metrics)
        "worker_batches": batches,
        "idle_cpu_ms_per_s": idle,
        "baseline_cpu_ms_per_healthz": healthz,
        "update_over_healthz": round(per_update / healthz, 1) if healthz else None,
        "updates_per_s": round(n * 1000 / SYNC_MS, 1),
        "paced_cpu_ms_per_healthz": paced,
        "update_over_paced_healthz": round(per_update / paced, 1) if paced else None,
        "paced_cpu_ms_per_redis_round_trip": round_trip,
        "target_cpu_ms_per_update": CPU_PER_UPDATE_MAX_MS,
        "target_met": per_update <= CPU_PER_UPDATE_MAX_MS and result["missed"] == 0,
    }


async def capacity_part(
    http: httpx.AsyncClient,
    sender: aiohttp.ClientSession,
    load: Load,
    plan: list[dict[str, str]],
    pids: Sequence[int],
    ladder: Sequence[int],
    rounds: int,
    settle: bool = True,
    boundaries_at_s: float | None = None,
) -> dict[str, Any]:
    steps = []
    own_pauses = GcPauses()
    held = warmed = failures = 0
    for n in ladder:
        answer = await load.ask(f"connect {n}")
        await warm(http, plan, warmed, n)
        warmed = max(warmed, n)
        await load.receipts()
        await load.gc_pauses()
        if boundaries_at_s is not None:
            await until_boundaries_at(plan[:n], boundaries_at_s)
        if settle:
            settle_gc()
        own_pauses.take()
        drivers = [os.getpid(), load.pid]
        metrics_before = await server_metrics(http)
        before, drivers_before = cpu_of(pids), [cpu_ms(pid) for pid in drivers]
        t0 = time.monotonic()
        answered: dict[tuple[int, float], float] = {}
        sent = await open_loop(sender, plan, n, rounds, f"cap{n}", answered)
        sending_s = time.monotonic() - t0
        pauses = server_pauses(metrics_before, await server_metrics(http))
        drivers_used = [cpu_ms(pid) - b for pid, b in zip(drivers, drivers_before, strict=True)]
        sender_pauses = own_pauses.take()
        await asyncio.sleep(SETTLE_S)
        used = cpu_of(pids) - before
        elapsed = time.monotonic() - t0
        result = judge(sent, await load.receipts(), plan, answered)
        watcher_pauses = await load.gc_pauses()
        p99 = (result["ingest_sent_to_last_watcher"] or {}).get("p99_ms", float("inf"))
        passed = (
            result["missed"] == 0 and result["ingests_failed"] == 0 and p99 < CAPACITY_P99_MAX_MS
        )
        steps.append(
            {
                "sessions": n,
                "watchers": answer,
                "updates_per_s": round(n * 1000 / SYNC_MS, 1),
                **result,
                "server_cpu_share_of_one_core": round(used / (elapsed * 1000), 3),
                # what held the server's loop while the step sent (the server's own /metrics)
                "server_pauses": pauses,
                # the instrument: while the step sends, this process (the ingests) and the load
                # process (the watchers) must not be saturated or pause, or the step measures them
                "drivers": {
                    "sender_cpu_share_of_one_core": round(drivers_used[0] / (sending_s * 1000), 3),
                    "watchers_cpu_share_of_one_core": round(
                        drivers_used[1] / (sending_s * 1000), 3
                    ),
                    "sender_gc_pause": sender_pauses,
                    "watchers_gc_pause": watcher_pauses,
                },
                "passed": passed,
            }
        )
        print(json.dumps(steps[-1]), file=sys.stderr, flush=True)
        if passed and failures == 0:
            held = n
        failures += 0 if passed else 1
        # a loaded machine can fail one step by a fluke; two failures end the climb
        if failures == 2 or result["missed"] or p99 > 4 * CAPACITY_P99_MAX_MS:
            break
        await computes_drained(http)
    return {
        "watchers_per_session": WATCHERS,
        "sync_every_ms": SYNC_MS,
        "rounds_per_step": rounds,
        "p99_limit_ms": CAPACITY_P99_MAX_MS,
        "capacity_sessions": held,
        "ladder_exhausted": held == ladder[-1],
        "steps": steps,
        "target_sessions": CAPACITY_SESSIONS_MIN,
        "target_met": held >= CAPACITY_SESSIONS_MIN,
    }


@contextlib.asynccontextmanager
async def deployment(
    kind: str,
    users: int,
    code: str | None,
    cprofile: Path | None = None,
    settings: dict[str, str] | None = None,
) -> AsyncIterator[tuple[str, list[int], list[tuple[str, str]]]]:
    """(base URL, pids whose CPU counts, users) of an embedded server on SQLite or a scaled-out
    server + worker on PostgreSQL and Redis; with ``code`` (a source tree's ``src``) the
    servers and the migrations run that code instead of this one (the baseline run); with
    ``cprofile`` (a folder) they run under ``bench.cprofiled``, writing ``<kind>-server.prof``
    and ``<kind>-worker.prof`` there."""
    backend = "sqlite" if kind == "embedded" else "postgres"
    extra = ({} if code is None else {"PYTHONPATH": code}) | (settings or {})
    module = "vitalcast" if cprofile is None else "bench.cprofiled"

    def out(name: str) -> dict[str, str]:
        if cprofile is None:
            return {}
        cprofile.mkdir(parents=True, exist_ok=True)
        return {"BENCH_CPROFILE_OUT": str(cprofile / f"{kind}-{name}.prof")}

    base_env = server_env("", "", **extra) if code is not None else None
    async with database(backend, upgrade_env=base_env) as url:
        made = await people(url, users)
        with tempfile.TemporaryDirectory(prefix="vc-bench-data-") as data_dir:
            if kind == "embedded":
                env = server_env(url, data_dir, **extra, **out("server"))
                async with serving(env, module=module) as (base, pid):
                    yield base, [pid], made
                return
            prefix = f"vcb{uuid.uuid4().hex[:8]}"
            env = server_env(
                url,
                data_dir,
                VITALCAST_REDIS_URL=REDIS_URL,
                VITALCAST_SOCKETIO_CHANNEL=f"{prefix}-sio",
                VITALCAST_QUEUE_PREFIX=prefix,
                **extra,
            )
            try:
                async with serving(env | out("server"), module=module) as (base, pid):
                    port = free_port()
                    worker_args = ["worker", "--metrics-port", str(port)]
                    with process(worker_args, env | out("worker"), module=module) as worker:
                        WORKER_METRICS[worker.pid] = f"http://127.0.0.1:{port}/metrics"
                        yield base, [pid, worker.pid], made
            finally:
                await delete_keys(f"{prefix}*")


async def run(
    kind: str, parts: Sequence[str], args: argparse.Namespace, code: str | None = None
) -> dict[str, Any]:
    ladder = [int(n) for n in args.ladder.split(",")]
    cpu_sessions = [int(n) for n in args.cpu_sessions.split(",")]
    users = max([*cpu_sessions, *(ladder if "capacity" in parts else [])])
    cprofile = args.cprofile if code is None else None
    settings = dict(item.split("=", 1) for item in args.server_env)
    async with deployment(kind, users, code, cprofile, settings) as (base, pids, made):
        limits = httpx.Limits(
            max_connections=HTTP_CONNECTIONS, max_keepalive_connections=HTTP_CONNECTIONS
        )
        connector = aiohttp.TCPConnector(limit=HTTP_CONNECTIONS)
        async with (
            httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as http,
            aiohttp.ClientSession(
                base, connector=connector, timeout=aiohttp.ClientTimeout(total=60)
            ) as sender,
        ):
            plan = await start_sessions(http, made)
            with tempfile.TemporaryDirectory(prefix="vc-bench-cap-") as folder:
                plan_path, out_path = Path(folder) / "plan.json", Path(folder) / "receipts.json"
                await asyncio.to_thread(plan_path.write_text, json.dumps(plan))
                async with Load(
                    base, plan_path, out_path, settle=not args.unsettled_drivers
                ) as load:
                    result: dict[str, Any] = {}
                    if "cpu" in parts:
                        result["cpu"] = [
                            await cpu_part(
                                http,
                                sender,
                                load,
                                plan[:n],
                                pids,
                                args.rounds,
                                # profiles cover the first session count only
                                args.profile if code is None and first else None,
                                cprofile=cprofile is not None and first,
                            )
                            for first, n in zip(
                                (True, *[False] * len(cpu_sessions)), cpu_sessions, strict=False
                            )
                        ]
                    if "capacity" in parts and kind == "embedded":
                        result["capacity"] = await capacity_part(
                            http,
                            sender,
                            load,
                            plan,
                            pids,
                            ladder,
                            args.rounds,
                            not args.unsettled_drivers,
                            args.boundaries_at,
                        )
                    return result


async def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parts", default="cpu,capacity")
    parser.add_argument("--deployments", default="embedded,scaled_out")
    parser.add_argument("--ladder", default="50,100,200,400,700,1000,1400")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--cpu-sessions",
        default="40,200",
        help="session counts of the cpu part, one measurement each (8 and 40 updates a second; "
        "200 is the burst's session count, where issue 22 measured 23-29 ms)",
    )
    parser.add_argument("--name", default="capacity", help="bench/results/<name>.json")
    parser.add_argument("--label", default="", help="what code ran (kept in the result)")
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy samples the server (and the worker: FILE-server, FILE-worker) during the "
        "cpu part",
    )
    parser.add_argument(
        "--cprofile",
        type=Path,
        help="a folder: the server (and worker) run under bench.cprofiled, profiled on their CPU "
        "clock during the cpu part, one file per process (collapsed stacks for "
        "bench/profile_summary.py; BENCH_PROFILE=cprofile: pstats for bench/cprofile_summary.py)",
    )
    parser.add_argument(
        "--baseline-src",
        help="a source tree (its src/ is put first on the servers' PYTHONPATH) measured the "
        'same way right after this code, kept under "baseline"',
    )
    parser.add_argument("--baseline-label", default="baseline")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="VITALCAST_NAME=VALUE",
        help="a setting of the measured servers (repeatable; the baseline's too), to compare a "
        "setting's values in the same conditions",
    )
    parser.add_argument(
        "--boundaries-at",
        type=float,
        metavar="SECONDS",
        help="start each capacity step so that its sessions' first minute boundary falls about "
        "this many seconds into it (waits up to a minute; the step's own set-up after the wait "
        "takes a few hundred ms more): runs then meet the boundaries alike",
    )
    parser.add_argument("--load", nargs=3, metavar=("URL", "PLAN", "OUT"))
    parser.add_argument(
        "--unsettled-drivers",
        action="store_true",
        help="leave the drivers' garbage collectors as they are (the instrument before the "
        "watchers were frozen out of full collections), to compare",
    )
    args = parser.parse_args(argv)
    if args.load:
        url, plan_path, out_path = args.load
        plan = json.loads(await asyncio.to_thread(Path(plan_path).read_text))
        await load_process(url, plan, Path(out_path), not args.unsettled_drivers)
        return
    parts = args.parts.split(",")
    result: dict[str, Any] = {
        "benchmark": "capacity",
        "label": args.label,
        "server_env": args.server_env,
    }
    kinds = args.deployments.split(",")
    if args.baseline_src:
        code = await asyncio.to_thread(os.path.abspath, os.path.join(args.baseline_src, "src"))
        result["baseline"] = {"label": args.baseline_label}
        for kind in kinds:
            result["baseline"][kind] = await run_parts(kind, parts, args, code)
    for kind in kinds:
        result[kind] = await run_parts(kind, parts, args)
    emit(args.name, result)


async def run_parts(
    kind: str, parts: Sequence[str], args: argparse.Namespace, code: str | None = None
) -> dict[str, Any]:
    """Each part on a deployment of its own: the cpu part's watchers stay connected (a
    deployment cannot drop them), and the capacity climb must start with no more watchers
    than its first step's."""
    result: dict[str, Any] = {}
    for part in parts:
        if part == "capacity" and kind != "embedded":
            continue  # the capacity target is one embedded process's
        result |= await run(kind, [part], args, code)
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == [PACED_PINGS]:
        uvloop.run(paced_pings(int(sys.argv[2]), int(sys.argv[3])))
    else:
        asyncio.run(main(sys.argv[1:]))
