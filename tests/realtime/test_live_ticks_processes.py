"""Live windows that move with time, on real ``vitalcast serve`` / ``vitalcast worker`` processes
whose clock the test sets across bucket boundaries (``tests.stepped_clock``): no ingest after
the start, yet every subscriber hears of each new bucket, the trailing gap appears and grows,
a sample sent ahead shows up once its time has come, and 50 subscribed clients cost one
``live_tick`` compute per view per bucket, on one embedded server and on two servers with a
worker on Redis."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from bullmq import Queue

from tests.accounts import new_user
from tests.ingest.helpers import MINUTE_MS, hr, iso, now_ms
from tests.processes import serve_subprocesses, vitalcast_env
from tests.queue.helpers import START_TIMEOUT_S, Api, metric_sum, scrape, worker_subprocess
from tests.realtime.conftest import ClientFactory, SocketClient
from tests.redis_keys import keys_deleted_after
from tests.services import service_missing
from tests.stepped_clock import set_time
from vitalcast.redis_connections import blocking_options
from vitalcast.telemetry.run.live_ticks import TICK_GRACE_MS

pytestmark = pytest.mark.slow

CLIENTS = 50
BOUNDARIES = 3
#: how far past a boundary the clock is set: past the ticker's grace (it then wakes within a
#: second)
PAST_BOUNDARY_MS = TICK_GRACE_MS + 300
EVENT_TIMEOUT_S = 60.0
#: heart rate's gap threshold at 1m (docs/design.md, "Metric catalog")
HR_GAP_MS = 2 * MINUTE_MS


def spo2(record_id: str, at_ms: int, value: float) -> dict[str, Any]:
    return {**hr(record_id, at_ms, value), "metric": "blood_oxygen", "unit": "%"}


async def live_session_on_a_boundary(api: Api, edge: int) -> tuple[str, int]:
    """A live session started exactly 20 minutes before ``edge`` (the processes' "now", so a
    boundary of its grid), heart rate every 20 s until 30 s before, SpO2 every 5 minutes and one
    SpO2 sample 2 minutes ahead (91 %). Returns (session id, time of the last heart rate)."""
    start = edge - 20 * MINUTE_MS
    session = await api.create_session(started_at=iso(start))
    last = edge - 30_000
    samples = [hr(f"h{k}", last - k * 20_000, 70.0 + k % 5) for k in range(90)]
    samples += [spo2(f"o{k}", edge - k * 5 * MINUTE_MS, 97.0) for k in range(1, 7)]
    samples.append(spo2("ahead", edge + 2 * MINUTE_MS, 91.0))
    await api.ingest(samples)
    return session["id"], last


async def subscribe_all(
    socket_client: ClientFactory, urls: list[str], token: str, session_id: str
) -> list[SocketClient]:
    """``CLIENTS`` subscribed sockets spread over ``urls``."""

    async def one(n: int) -> SocketClient:
        client = await socket_client(urls[n % len(urls)], token)
        assert (await client.call("subscribe", {"session_id": session_id}))["ok"] is True
        return client

    return list(await asyncio.gather(*(one(n) for n in range(CLIENTS))))


async def heard_edge(client: SocketClient, edge_ms: int) -> dict[str, Any]:
    """The first session.updated computed on or after ``edge_ms``."""
    deadline = time.monotonic() + EVENT_TIMEOUT_S
    while True:
        event = await client.next("session.updated", max(0.01, deadline - time.monotonic()))
        if event["computed_at_ms"] >= edge_ms:
            return dict(event)


async def metric_reaches(url: str, name: str, value: float, **labels: str) -> None:
    """Until /metrics of ``url`` shows ``name`` (summed over the matching series) at ``value``."""
    deadline = time.monotonic() + EVENT_TIMEOUT_S
    while (seen := metric_sum(await scrape(url), name, **labels)) != value:
        assert time.monotonic() < deadline, f"{name} {labels} is {seen}, expected {value}"
        await asyncio.sleep(0.1)


async def cross_boundaries(
    clock_file: Path,
    api: Api,
    clients: list[SocketClient],
    server_urls: list[str],
    session_id: str,
    edge: int,
    last_hr: int,
) -> None:
    """Move the clock over ``BOUNDARIES`` boundaries, one at a time, without ingesting: every
    client hears each new edge, every server has looked at the view before the next one (its
    first look, at the subscription, came before), and the GET shows what time alone changed."""
    trailing_ends = []
    for k in range(1, BOUNDARIES + 1):
        boundary = edge + k * MINUTE_MS
        set_time(clock_file, boundary + PAST_BOUNDARY_MS)
        events = await asyncio.gather(*(heard_edge(client, boundary) for client in clients))
        for url in server_urls:
            await metric_reaches(url, "vitalcast_live_ticks_total", 1 + k)
        assert {e["source_watermark"] for e in events} == {events[0]["source_watermark"]}
        body = (await api.telemetry(session_id, metrics="all")).json()
        assert body["state"] == "ready", body
        payload = body["telemetry"]
        window_end = payload["window"]["end_ms"]
        assert boundary <= window_end == payload["computed_at_ms"] < boundary + MINUTE_MS
        gaps = payload["metrics"]["heart_rate"]["gaps"]
        trailing = [g for g in gaps if g["start_ms"] == last_hr]
        oxygen = payload["metrics"]["blood_oxygen"]["stats"]
        if window_end - last_hr > HR_GAP_MS:
            # within one bucket after the threshold, the trailing gap ends at the live edge
            assert trailing == [{"start_ms": last_hr, "end_ms": window_end}]
            trailing_ends.append(window_end)
        else:
            assert trailing == []
        # the sample sent 2 minutes ahead is in once its time has passed, not before
        assert oxygen["min"] == (91.0 if window_end > edge + 2 * MINUTE_MS else 97.0)
    assert len(trailing_ends) == 2 and trailing_ends[1] > trailing_ends[0]


async def test_embedded_server_recomputes_subscribed_live_views_once_per_bucket(
    database_url: str, tmp_path: Path, socket_client: ClientFactory
) -> None:
    """One embedded server, 50 subscribers, 3 boundaries and no ingest: 3 live_tick computes of
    the one cached view, every client hears all 3, the GET shows the trailing gap growing and
    the early sample arriving."""
    clock_file = tmp_path / "clock"
    edge = now_ms()
    set_time(clock_file, edge)
    env = vitalcast_env(tmp_path / "data", database_url=database_url, log_level="warning")
    _user_id, token = await new_user(database_url)
    with serve_subprocesses(
        env, [tmp_path / "server.log"], start_timeout_s=START_TIMEOUT_S, clock_file=clock_file
    ) as (server,):
        api = Api(server.url, token)
        session_id, last_hr = await live_session_on_a_boundary(api, edge)
        first = await api.wait_state(session_id, "ready", metrics="all")
        assert first["telemetry"]["metrics"]["blood_oxygen"]["stats"]["min"] == 97.0
        clients = await subscribe_all(socket_client, [server.url], token, session_id)
        # the ticker has seen the subscription: the view is on the current edge
        await metric_reaches(server.url, "vitalcast_live_ticks_total", 1, outcome="current")

        await cross_boundaries(clock_file, api, clients, [server.url], session_id, edge, last_hr)
        text = await scrape(server.url)
        assert metric_sum(text, "vitalcast_live_ticks_total", outcome="scheduled") == BOUNDARIES
        assert metric_sum(text, "vitalcast_computes_total", reason="live_tick") == BOUNDARIES


async def test_two_servers_and_a_worker_tick_each_view_once_per_bucket(
    pg_database_url: str | None,
    redis_url: str,
    unique_prefix: str,
    tmp_path: Path,
    socket_client: ClientFactory,
) -> None:
    """Scaled out: 25 subscribers on each of two servers, one worker. Both servers look at the
    view at each of 3 boundaries, the worker runs 3 live_tick computes in all (a second ask of
    one bucket is deduplicated or skipped as fresh), the servers compute nothing."""
    if pg_database_url is None:
        service_missing("PostgreSQL")
    assert pg_database_url is not None
    clock_file = tmp_path / "clock"
    edge = now_ms()
    set_time(clock_file, edge)
    env = vitalcast_env(
        tmp_path / "data",
        database_url=pg_database_url,
        redis_url=redis_url,
        queue_prefix=unique_prefix,
        socketio_channel=f"{unique_prefix}-sio",
    )
    _user_id, token = await new_user(pg_database_url)
    queue = Queue(
        "session-telemetry", {"connection": blocking_options(redis_url), "prefix": unique_prefix}
    )
    async with keys_deleted_after(redis_url, f"{unique_prefix}*"):
        try:
            with (
                worker_subprocess(env, tmp_path / "worker.log", clock_file=clock_file) as worker,
                serve_subprocesses(
                    env,
                    [tmp_path / "a.log", tmp_path / "b.log"],
                    start_timeout_s=START_TIMEOUT_S,
                    clock_file=clock_file,
                ) as servers,
            ):
                urls = [server.url for server in servers]
                api = Api(urls[0], token)
                session_id, last_hr = await live_session_on_a_boundary(api, edge)
                await api.wait_state(session_id, "ready", metrics="all")
                clients = await subscribe_all(socket_client, urls, token, session_id)
                for url in urls:
                    await metric_reaches(url, "vitalcast_live_ticks_total", 1, outcome="current")

                await cross_boundaries(clock_file, api, clients, urls, session_id, edge, last_hr)
                deadline = time.monotonic() + EVENT_TIMEOUT_S
                while any((await queue.getJobCounts("waiting", "active", "delayed")).values()):
                    assert time.monotonic() < deadline, "the queue did not drain"
                    await asyncio.sleep(0.1)
                worker_text = await scrape(worker.metrics_url)
                ticks = metric_sum(worker_text, "vitalcast_computes_total", reason="live_tick")
                assert ticks == BOUNDARIES, worker.log()
                for url in urls:
                    assert metric_sum(await scrape(url), "vitalcast_computes_total") == 0
        finally:
            await queue.close()
