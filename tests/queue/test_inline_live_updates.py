"""A scaled-out server computes the live updates of its own ingests in process while its bound
has room (``telemetry.run.inline``); what it does not take, or takes and cannot finish, goes to
the queue. A server in a thread of this process on PostgreSQL and a queue of its own on Redis,
with no worker: a job in the queue is a compute the server did not do."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from bullmq import Job, Queue

from tests.accounts import new_user
from tests.conftest import TEST_SECRET
from tests.doubles import FailingFirst, held_while_aggregator
from tests.ingest.helpers import MINUTE_MS, hr, iso, now_ms
from tests.processes import FAST_QUEUE
from tests.queue.helpers import metric_sum
from tests.realtime.conftest import LiveServer, serve_in_thread
from tests.redis_keys import delete_keys
from tests.services import service_missing
from tests.waits import eventually
from vitalcast.queue.jobs import job_id
from vitalcast.redis_connections import blocking_options
from vitalcast.settings import Settings
from vitalcast.telemetry.compute.incremental import Aggregator
from vitalcast.telemetry.keys import Resolution, ScheduleReason, TelemetryKey
from vitalcast.wiring import Seams

pytestmark = pytest.mark.slow


@dataclass
class Live:
    """One user's live session on the server, its default view cached."""

    key: TelemetryKey
    token: str
    start_ms: int


@pytest.fixture
def scaled_settings(
    pg_database_url: str | None, redis_url: str, unique_prefix: str, tmp_path: Path
) -> Iterator[Settings]:
    if pg_database_url is None:
        service_missing("PostgreSQL")
    yield Settings(
        data_dir=tmp_path / "data",
        database_url=pg_database_url,
        redis_url=redis_url,
        queue_prefix=unique_prefix,
        socketio_channel=f"{unique_prefix}-sio",
        secret=TEST_SECRET,
        **FAST_QUEUE,
    )
    asyncio.run(delete_keys(redis_url, f"{unique_prefix}*"))


async def ingest(server: LiveServer, live: Live, sample_id: str, minute: int) -> int:
    async with httpx.AsyncClient(base_url=server.url) as http:
        answer = await http.post(
            "/api/v1/samples",
            json={"samples": [hr(sample_id, live.start_ms + minute * MINUTE_MS, 70.0)]},
            headers={"Authorization": f"Bearer {live.token}"},
        )
    assert answer.status_code == 200, answer.text
    return int(answer.json()["change_seq"])


async def cached_live_session(server: LiveServer, pg_url: str) -> Live:
    """A new user's live session, its default view computed before any sample arrived (by the
    server's coordinator, as a backfill: no worker runs here, and no job waits in the queue)."""
    user_id, token = await new_user(pg_url)
    start = now_ms() - 20 * MINUTE_MS
    async with httpx.AsyncClient(base_url=server.url) as http:
        created = await http.post(
            "/api/v1/sessions",
            json={"started_at": iso(start)},
            headers={"Authorization": f"Bearer {token}"},
        )
    live = Live(
        TelemetryKey(created.json()["id"], 60, Resolution.ONE_MINUTE, user_id=user_id),
        token,
        start,
    )
    seq = int(created.json()["source_watermark"])
    coordinator = server.parts.coordinator
    computed = coordinator.stats.completed
    assert server.run(coordinator.submit(live.key, watermark=seq, reason=ScheduleReason.BACKFILL))
    server.run(coordinator.wait_idle(), timeout_s=30)
    assert coordinator.stats.completed == computed + 1
    return live


async def view_at(server: LiveServer, live: Live, watermark: int) -> None:
    async def ready() -> bool:
        async with httpx.AsyncClient(base_url=server.url) as http:
            body = (
                await http.get(
                    f"/api/v1/sessions/{live.key.session_id}/telemetry",
                    headers={"Authorization": f"Bearer {live.token}"},
                )
            ).json()
        return bool(body["state"] == "ready" and body["telemetry"]["source_watermark"] == watermark)

    await eventually(ready, what=f"the view ready at {watermark}")


async def queued(settings: Settings, key: TelemetryKey, watermark: int) -> Any:
    """The queue's job of ``key`` at ``watermark`` (None: nobody queued that compute)."""
    queue = Queue(
        settings.queue_name,
        {"connection": blocking_options(settings.redis_url or ""), "prefix": settings.queue_prefix},
    )
    try:
        return await Job.fromId(queue, job_id(key, watermark))
    finally:
        await queue.close()


async def routes(server: LiveServer) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=server.url) as http:
        text = (await http.get("/metrics")).text
    return {
        route: metric_sum(text, "vitalcast_live_update_routes_total", route=route)
        for route in ("inline", "queued", "handed_off")
    }


def served(settings: Settings, aggregator: Aggregator | None = None) -> Any:
    return serve_in_thread(settings, Seams(aggregator=aggregator))


async def test_a_live_update_of_a_cached_view_is_computed_by_the_ingesting_server(
    scaled_settings: Settings, pg_database_url: str
) -> None:
    """The next ingest of a live session whose view is cached is computed by the server that
    took it: the view is ready at its watermark and no job of it was ever queued."""
    with served(scaled_settings) as server:
        live = await cached_live_session(server, pg_database_url)
        seq = await ingest(server, live, "second", 2)
        await view_at(server, live, seq)
        assert await queued(scaled_settings, live.key, seq) is None
        assert await routes(server) == {"inline": 1, "queued": 0, "handed_off": 0}


async def test_a_full_local_bound_sends_live_updates_to_the_queue(
    scaled_settings: Settings, pg_database_url: str, tmp_path: Path
) -> None:
    """With the server's live batches held (two in flight) and its one waiting place taken, the
    next live update is not taken: its job is in the queue for the workers, while the three
    taken ones are not queued and save once released."""
    settings = scaled_settings.model_copy(update={"max_pending_computes": 1})
    hold = tmp_path / "hold"
    with served(settings, held_while_aggregator(hold)) as server:
        lives = [await cached_live_session(server, pg_database_url) for _ in range(4)]
        hold.touch()
        seqs = [await ingest(server, live, "second", 2) for live in lives]
        *taken, refused = zip(lives, seqs, strict=True)
        job = await queued(settings, refused[0].key, refused[1])
        assert job is not None and job.data["reason"] == ScheduleReason.LIVE_UPDATE.value
        for live, seq in taken:
            assert await queued(settings, live.key, seq) is None
        assert await routes(server) == {"inline": 3, "queued": 1, "handed_off": 0}
        hold.unlink()
        for live, seq in taken:
            await view_at(server, live, seq)


async def test_a_failed_inline_compute_is_handed_to_the_queue(
    scaled_settings: Settings, pg_database_url: str
) -> None:
    """A live update taken by the server whose compute fails is not retried there: its job is
    queued for the workers."""
    failing = FailingFirst(0)
    with served(scaled_settings, failing) as server:
        live = await cached_live_session(server, pg_database_url)
        failing.failures = failing.calls + 1
        seq = await ingest(server, live, "second", 2)

        async def handed() -> bool:
            return await queued(scaled_settings, live.key, seq) is not None

        await eventually(handed, what="the failed compute's job")
        assert await routes(server) == {"inline": 1, "queued": 0, "handed_off": 1}
        assert server.parts.coordinator.stats.retries == 0
