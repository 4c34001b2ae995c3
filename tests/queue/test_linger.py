"""The worker's linger (``VITALCAST_COMPUTE_LINGER_MS``): jobs added while a woken worker lingers
are fetched in one round and run as one batch of computes; with the linger off every job that
finds the worker idle is a batch of its own, as before. Real Redis, real database, real computer;
the linger is held open by the test (an event), never timed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import pytest

from tests.ingest.helpers import MINUTE_MS, now_ms
from tests.queue.conftest import delete_prefix
from tests.waits import eventually
from vitalcast.clock import SystemClock
from vitalcast.db.engine import Database
from vitalcast.observability import Metrics
from vitalcast.queue.backfill import default_keys
from vitalcast.queue.fetching import FetchingWorker
from vitalcast.queue.handler import ComputeJobHandler
from vitalcast.queue.jobs import TelemetryJob
from vitalcast.queue.service import SessionTelemetryQueueService
from vitalcast.redis_connections import blocking_options
from vitalcast.sessions import repository as session_repository
from vitalcast.settings import Settings
from vitalcast.telemetry.keys import ComputeOutcome, ScheduleReason, TelemetryKey
from vitalcast.testing import ensure_user
from vitalcast.wiring import build_local_computes

UPDATE = ScheduleReason.LIVE_UPDATE


class HeldLinger(FetchingWorker):
    """A fetching worker whose lingers wait for ``go`` first (the test adds jobs meanwhile)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lingers = 0
        self.lingering = asyncio.Event()
        self.go = asyncio.Event()

    async def _linger(self) -> bool:
        self.lingers += 1
        self.lingering.set()
        await self.go.wait()
        return await super()._linger()


class Rig:
    """Live sessions' keys, the queue, a worker over the real computer, and its batch sizes."""

    def __init__(self, settings: Settings, keys: list[TelemetryKey], local: Any) -> None:
        self.settings = settings
        self.keys = keys
        self.queue = SessionTelemetryQueueService(settings, fallback=None, metrics=Metrics())
        self.batches: list[int] = []
        computer = local.computer
        run = computer.compute_batch

        async def recording(
            items: Sequence[tuple[TelemetryKey, ScheduleReason]],
        ) -> Mapping[TelemetryKey, ComputeOutcome]:
            self.batches.append(len(items))
            return await run(items)

        computer.compute_batch = recording
        self.handler = ComputeJobHandler(computer, SystemClock(), max_batch=32)
        self.worker: HeldLinger | None = None
        self.running: asyncio.Task[None] | None = None

    def start(self, linger_ms: int) -> HeldLinger:
        async def process(job: Any, _token: str) -> str:  # Any: a bullmq Job
            return await self.handler(TelemetryJob.from_data(job.data))

        self.worker = HeldLinger(
            self.settings.queue_name,
            process,
            {
                "connection": blocking_options(self.settings.redis_url or ""),
                "prefix": self.settings.queue_prefix,
                "concurrency": 4,
                "autorun": False,
            },
            linger_ms=linger_ms,
            linger_max_jobs=32,
        )
        self.running = asyncio.create_task(self.worker.run())
        return self.worker

    async def submit(self, key: TelemetryKey, watermark: int) -> None:
        assert await self.queue.enqueue(key, watermark=watermark, reason=UPDATE)

    async def completed(self, count: int) -> None:
        async def done() -> bool:
            return (await self.queue.counts())["completed"] >= count

        await eventually(done, what=f"{count} jobs completed")

    async def primed(self) -> None:
        """Three jobs added together before the worker runs: it has seen arrivals close
        together, so its next wake lingers (when a linger is set)."""
        for key in self.keys:
            await self.submit(key, 1)
        assert self.worker is not None
        await self.completed(len(self.keys))


@pytest.fixture
async def rig(
    settings: Settings, db: Database, redis_url: str, unique_prefix: str
) -> AsyncIterator[Rig]:
    configured = settings.model_copy(update={"redis_url": redis_url, "queue_prefix": unique_prefix})
    user = await ensure_user(db, "lingering")
    keys = []
    async with db.write() as conn:
        for _ in range(3):
            session = await session_repository.insert(
                conn,
                user_id=user,
                client_session_id=None,
                start_ms=now_ms() - 10 * MINUTE_MS,
                notes=None,
                now_ms=now_ms(),
            )
            keys.append(
                default_keys(
                    session, window_minutes=configured.default_window_minutes, now_ms=now_ms()
                )[0]
            )
    local = build_local_computes(configured)
    made = Rig(configured, keys, local)
    yield made
    if made.worker is not None:
        made.worker.go.set()
        await made.worker.close()
    await made.queue.close()
    await local.close()
    await delete_prefix(redis_url, unique_prefix)


async def test_jobs_added_while_the_worker_lingers_run_as_one_batch(rig: Rig) -> None:
    """Woken by a job after arrivals close together, the worker lingers; the two jobs added
    meanwhile come in the same fetch, and the three run as ONE batch (one claim, one GROUP BY,
    one save). The first wake, with no arrivals seen yet, does not linger."""
    worker = rig.start(linger_ms=1_000)
    await rig.primed()
    assert worker.lingers == 0
    before = len(rig.batches)
    await rig.submit(rig.keys[0], 2)
    await asyncio.wait_for(worker.lingering.wait(), 30)
    for key in rig.keys[1:]:
        await rig.submit(key, 2)
    worker.go.set()
    await rig.completed(2 * len(rig.keys))
    assert rig.batches[before:] == [3]
    assert worker.lingers == 1


async def test_without_a_linger_each_job_that_finds_the_worker_idle_is_a_batch_of_one(
    rig: Rig,
) -> None:
    """Linger 0 (off): the same arrivals after the same priming, each job fetched as soon as
    the marker wakes the worker, run alone, as before the linger existed."""
    worker = rig.start(linger_ms=0)
    await rig.primed()
    before = len(rig.batches)
    for done, key in enumerate(rig.keys, start=len(rig.keys) + 1):
        await rig.submit(key, 2)
        await rig.completed(done)
    assert rig.batches[before:] == [1, 1, 1]
    assert worker.lingers == 0
