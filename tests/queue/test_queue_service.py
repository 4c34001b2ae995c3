"""SessionTelemetryQueueService and TelemetryWorker against real Redis and real BullMQ workers."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
import redis.asyncio
from bullmq import Job

from tests.conftest import TEST_SECRET
from tests.processes import FAST_QUEUE
from tests.queue.helpers import IDLE_PICKUP_BOUND_MS
from tests.waits import eventually
from vitalcast.observability import Metrics
from vitalcast.queue.fetching import FetchingWorker
from vitalcast.queue.jobs import JOB_ATTEMPTS, TelemetryJob, job_id
from vitalcast.queue.service import SessionTelemetryQueueService
from vitalcast.queue.worker import JobDeferred, JobFailed
from vitalcast.redis_connections import blocking_options
from vitalcast.settings import Settings
from vitalcast.telemetry.keys import COMPUTE_VERSION, Resolution, ScheduleReason, TelemetryKey


class RecordingScheduler:
    """The in-process side of the seam, recording what reached it (stands in for the
    coordinator only where a test looks at routing, never at computes)."""

    def __init__(self) -> None:
        self.submitted: list[tuple[TelemetryKey, int, ScheduleReason]] = []

    async def submit(self, key: TelemetryKey, *, watermark: int, reason: ScheduleReason) -> bool:
        self.submitted.append((key, watermark, reason))
        return True


def make_key(session_id: str | None = None) -> TelemetryKey:
    return TelemetryKey(
        session_id=session_id or str(uuid.uuid4()),
        window_minutes=60,
        resolution=Resolution.ONE_MINUTE,
        user_id=str(uuid.uuid4()),
    )


@pytest.fixture
async def service(queue_settings: Settings) -> Any:
    svc = SessionTelemetryQueueService(
        queue_settings, fallback=RecordingScheduler(), metrics=Metrics()
    )
    yield svc
    await svc.close()


async def test_job_carries_portable_id_data_and_retry_options(
    service: Any, queue_settings: Settings
) -> None:
    """A submit stores one job whose id is key + watermark joined by `_`, with the documented
    data, three attempts and exponential backoff from the configured base."""
    key = make_key()
    assert await service.submit(key, watermark=7, reason=ScheduleReason.CACHE_MISS) is True
    job = await Job.fromId(service.queue, job_id(key, 7))
    assert job is not None
    assert job.id == f"{key.session_id}_60_1m_v{COMPUTE_VERSION}_w7"
    assert ":" not in job.id
    assert job.data == {
        "session_id": key.session_id,
        "user_id": key.user_id,
        "window_minutes": 60,
        "resolution": "1m",
        "compute_version": COMPUTE_VERSION,
        "watermark": 7,
        "reason": "cache_miss",
    }
    assert TelemetryJob.from_data(job.data) == TelemetryJob(key, 7, ScheduleReason.CACHE_MISS)
    assert job.opts["attempts"] == JOB_ATTEMPTS
    assert job.opts["backoff"] == {"type": "exponential", "delay": queue_settings.queue_backoff_ms}
    assert await service.counts() == {
        "waiting": 1,
        "active": 0,
        "delayed": 0,
        "failed": 0,
        "completed": 0,
    }


async def test_waiting_job_absorbs_later_submits_of_its_key(service: Any) -> None:
    """While a key's job waits, newer watermarks add no job; other keys still get theirs."""
    key, other = make_key(), make_key()
    for watermark in range(1, 21):
        assert await service.submit(key, watermark=watermark, reason=ScheduleReason.LIVE_UPDATE)
    assert await service.submit(other, watermark=3, reason=ScheduleReason.LIVE_UPDATE)
    assert (await service.counts())["waiting"] == 2
    assert [j.id for j in await service.queue.getWaiting()] == [
        job_id(key, 1),
        job_id(other, 3),
    ]


async def test_active_job_keeps_exactly_one_successor_with_the_newest_watermark(
    service: Any, queue_settings: Settings, start_worker: Any
) -> None:
    """While a key's job runs, any number of submits leave one job to run next, carrying the
    newest watermark; the key never has more than one active and one waiting job."""
    key = make_key()
    ran: list[int] = []
    running = asyncio.Event()
    release = asyncio.Event()

    async def handler(job: TelemetryJob) -> str:
        ran.append(job.watermark)
        running.set()
        await release.wait()
        return "ready"

    await start_worker(queue_settings, handler, concurrency=4)
    await service.submit(key, watermark=1, reason=ScheduleReason.CACHE_MISS)
    await asyncio.wait_for(running.wait(), 10)
    # One after another: 100 at once on one connection can pass the 1 s call bound on a loaded
    # machine, and a submit past it goes to the fallback instead of the queue.
    for w in [*range(2, 102), 150]:
        await service.submit(key, watermark=w, reason=ScheduleReason.LIVE_UPDATE)
    assert not service.degraded
    counts = await service.counts()
    assert counts["active"] == 1
    assert counts["waiting"] + counts["active"] + counts["delayed"] == 1
    release.set()

    async def both_done() -> bool:
        return (await service.counts())["completed"] == 2

    await eventually(both_done, what="both jobs completed")
    assert ran == [1, 150]
    # the successor became an ordinary job: later submits while it is finished add a new one
    assert await service.submit(key, watermark=151, reason=ScheduleReason.LIVE_UPDATE)
    await eventually(lambda: _completed(service, 3), what="the third job completed")
    assert ran == [1, 150, 151]


async def _completed(service: Any, n: int) -> bool:
    return (await service.counts())["completed"] == n


async def test_a_filled_queue_is_drained_in_rounds_up_to_the_concurrency(
    service: Any, queue_settings: Settings, start_worker: Any
) -> None:
    """Jobs waiting when a worker starts are fetched several per round (one fetcher, not one
    per slot) and run at once up to the worker's concurrency, never beyond it; every one
    completes, and a job submitted while the queue is busy runs too."""
    keys = [make_key() for _ in range(9)]
    assert (
        await service.submit_many([(k, 1, ScheduleReason.BACKFILL) for k in keys[:8]]) == [True] * 8
    )
    running = 0
    peak = 0
    full = asyncio.Event()
    ran: list[str] = []

    async def handler(job: TelemetryJob) -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 4:
            full.set()
        await asyncio.wait_for(full.wait(), 30)
        ran.append(job.key.session_id)
        running -= 1
        return "fresh"

    await start_worker(queue_settings, handler, concurrency=4)
    await asyncio.wait_for(full.wait(), 30)
    await service.submit(keys[8], watermark=1, reason=ScheduleReason.CACHE_MISS)
    await eventually(lambda: _completed(service, 9), what="every job completed")
    assert sorted(ran) == sorted(k.session_id for k in keys)
    assert peak == 4


async def test_same_watermark_runs_again_after_its_job_finished(
    service: Any, queue_settings: Settings, start_worker: Any
) -> None:
    """A kept, finished job does not swallow a new submit of the same key and watermark."""
    key = make_key()
    ran: list[int] = []

    async def handler(job: TelemetryJob) -> str:
        ran.append(job.watermark)
        return "fresh"

    await start_worker(queue_settings, handler)
    await service.submit(key, watermark=4, reason=ScheduleReason.CACHE_MISS)
    await eventually(lambda: _completed(service, 1), what="the first job completed")
    await service.submit(key, watermark=4, reason=ScheduleReason.STALE_READ)
    await eventually(lambda: _ran(ran, 2), what="the same watermark ran again")
    assert ran == [4, 4]


async def _ran(ran: list[int], n: int) -> bool:
    return len(ran) >= n


class HeldAdds(SessionTelemetryQueueService):
    """A queue service whose next pipeline of adds (after ``hold``) stops between the
    finished-checks before its adds and the adds, in Redis (a ``BLPOP`` on ``gate`` queued in
    the pipeline), after pushing to ``reached``: a test then finishes a job exactly there, as a
    worker could."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, fallback=None, metrics=Metrics())
        self._held: tuple[str, str] | None = None

    def hold(self, gate: str, reached: str) -> None:
        self._held = (gate, reached)

    async def _queue_adds(self, pipe: Any, jobs: list[TelemetryJob]) -> None:
        if self._held is not None:
            gate, reached = self._held
            self._held = None
            pipe.rpush(reached, 1)
            pipe.blpop([gate], timeout=30)
        await super()._queue_adds(pipe, jobs)


@pytest.mark.parametrize("depth", ["read_first", "fresh"])
async def test_a_submit_racing_its_jobs_completion_runs_it_again(
    service: Any, queue_settings: Settings, start_worker: Any, redis_url: str, depth: str
) -> None:
    """A submit of a key and watermark whose job finishes after the submit checked for a
    finished job and before its add (which the finished job then swallows) runs the job again,
    as one that came after the finish does: the interleaving is forced inside Redis, on both
    paths of an add (the depth read first, or read in the pipeline of the adds)."""
    key = make_key()
    ran: list[int] = []
    release = asyncio.Event()

    async def handler(job: TelemetryJob) -> str:
        if job.key == key:
            ran.append(job.watermark)
            if len(ran) == 1:
                await release.wait()
        return "fresh"

    await start_worker(queue_settings, handler)
    assert await service.submit(key, watermark=7, reason=ScheduleReason.LIVE_UPDATE)
    await eventually(lambda: _ran(ran, 1), what="the job started")

    gate, reached = f"{queue_settings.queue_prefix}:gate", f"{queue_settings.queue_prefix}:reached"
    held = HeldAdds(queue_settings)
    test_client = redis.asyncio.Redis.from_url(redis_url)
    try:
        if depth == "fresh":
            # a depth read just now: the adds ride in the pipeline that reads it again
            assert await held.submit(make_key(), watermark=1, reason=ScheduleReason.BACKFILL)
        held.hold(gate, reached)
        # ``_add``, not ``submit``: the 1 s bound of a call would take the held pipeline for an
        # outage before the test has finished the job
        racing = asyncio.create_task(held._add([TelemetryJob(key, 7, ScheduleReason.STALE_READ)]))
        assert await test_client.blpop([reached], timeout=30) is not None
        # the checks ran and saw the job active; now it finishes, before the add
        release.set()

        async def completed() -> bool:
            return (
                await test_client.zscore(service.queue.keys["completed"], job_id(key, 7))
                is not None
            )

        await eventually(completed, what="the first run completed")
        assert not racing.done()
        await test_client.rpush(gate, 1)
        assert await asyncio.wait_for(racing, 30) == [True]
        await eventually(lambda: _ran(ran, 2), what="the same watermark ran again")
        assert ran == [7, 7]
    finally:
        await held.close()
        await test_client.aclose()


async def test_submit_refuses_beyond_the_queue_depth_bound(queue_settings: Settings) -> None:
    """With max_queue_depth waiting jobs, submit returns False and adds nothing; the fallback is
    not used (the queue is reachable, just full)."""
    fallback = RecordingScheduler()
    settings = queue_settings.model_copy(update={"max_queue_depth": 3})
    svc = SessionTelemetryQueueService(settings, fallback=fallback, metrics=Metrics())
    try:
        results = [
            await svc.submit(make_key(), watermark=1, reason=ScheduleReason.BACKFILL)
            for _ in range(5)
        ]
        assert results == [True, True, True, False, False]
        assert await svc.depth() == 3
        assert fallback.submitted == []
    finally:
        await svc.close()


async def test_many_submits_at_once_add_the_same_jobs_within_the_depth_bound(
    queue_settings: Settings, start_worker: Any
) -> None:
    """``submit_many`` (an ingest touching a user's many views, a live tick) adds what one
    submit each would: a job per key, absorbed by a waiting job of its key, up to the room the
    depth bound left when asked (the rest refused, not sent to the fallback), and a finished
    job's key and watermark runs again."""
    fallback = RecordingScheduler()
    settings = queue_settings.model_copy(update={"max_queue_depth": 4})
    svc = SessionTelemetryQueueService(settings, fallback=fallback, metrics=Metrics())
    try:
        keys = [make_key() for _ in range(3)]
        live = ScheduleReason.LIVE_UPDATE
        assert await svc.submit_many([(k, 1, live) for k in keys]) == [True, True, True]
        # a waiting job of its key absorbs a newer watermark
        assert await svc.submit_many([(keys[0], 2, live)]) == [True]
        # one more fits under the bound (counted when asked), the others are refused
        more = [make_key() for _ in range(3)]
        assert await svc.submit_many([(k, 1, live) for k in more]) == [True, False, False]
        assert [j.id for j in await svc.queue.getWaiting()] == [
            *(job_id(k, 1) for k in keys),
            job_id(more[0], 1),
        ]
        assert fallback.submitted == []
        assert await svc.submit_many([]) == []
        ran: list[tuple[str, int]] = []

        async def handler(job: TelemetryJob) -> str:
            ran.append((job.key.session_id, job.watermark))
            return "fresh"

        await start_worker(settings, handler, concurrency=4)
        await eventually(lambda: _completed(svc, 4), what="the four jobs completed")
        again = [(keys[1], 1, ScheduleReason.STALE_READ), (more[1], 1, live)]
        assert await svc.submit_many(again) == [True, True]
        await eventually(lambda: _ran(ran, 6), what="both ran")
        assert sorted(ran[4:]) == sorted([(keys[1].session_id, 1), (more[1].session_id, 1)])
    finally:
        await svc.close()


async def test_failing_job_is_retried_with_exponential_backoff_then_failed(
    service: Any, queue_settings: Settings, start_worker: Any
) -> None:
    """A job whose compute fails runs three times, waiting the backoff base and then twice that
    between tries (1 s, 2 s by default; shorter here), and ends in the failed set with the error
    code as its reason."""
    key = make_key()
    tries: list[float] = []

    async def handler(job: TelemetryJob) -> str:
        tries.append(time.monotonic())
        raise JobFailed("COMPUTE_FAILED")

    await start_worker(queue_settings, handler)
    await service.submit(key, watermark=2, reason=ScheduleReason.CACHE_MISS)

    async def failed() -> bool:
        return (await service.counts())["failed"] == 1

    await eventually(failed, what="the job failed after its attempts")
    assert len(tries) == JOB_ATTEMPTS
    backoff_s = queue_settings.queue_backoff_ms / 1000
    assert tries[1] - tries[0] >= 0.9 * backoff_s
    assert tries[2] - tries[1] >= 1.9 * backoff_s
    job = await Job.fromId(service.queue, job_id(key, 2))
    assert job is not None
    assert job.failedReason == "COMPUTE_FAILED"
    assert job.attemptsMade == JOB_ATTEMPTS


async def test_deferred_job_waits_without_using_attempts(
    service: Any, queue_settings: Settings, start_worker: Any
) -> None:
    """A job deferred (lease busy elsewhere) more times than it has attempts still completes."""
    key = make_key()
    calls: list[float] = []

    async def handler(job: TelemetryJob) -> str:
        calls.append(time.monotonic())
        if len(calls) <= JOB_ATTEMPTS + 1:
            raise JobDeferred(time.time_ns() // 1_000_000 + 50)
        return "ready"

    await start_worker(queue_settings, handler)
    await service.submit(key, watermark=3, reason=ScheduleReason.CACHE_MISS)
    await eventually(lambda: _completed(service, 1), what="the deferred job completed")
    assert len(calls) == JOB_ATTEMPTS + 2
    job = await Job.fromId(service.queue, job_id(key, 3))
    assert job is not None
    assert job.returnvalue == "ready"


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_stop_releases_a_running_job_to_another_worker(
    service: Any, queue_settings: Settings, start_worker: Any, concurrency: int
) -> None:
    """A worker stopped mid-job puts the job back after its grace period; another worker runs
    it at once and the job completes (nothing is lost, no stalled wait). With free slots
    (concurrency 4), BullMQ's run loop ends on close and forgets its running jobs: a stop that
    relied on BullMQ's abort signals waited for the stuck job forever."""
    key = make_key()
    started = asyncio.Event()
    first_cancelled = asyncio.Event()

    async def stuck(job: TelemetryJob) -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            first_cancelled.set()
            raise
        return "never"

    by_second: list[int] = []

    async def quick(job: TelemetryJob) -> str:
        by_second.append(job.watermark)
        return "ready"

    first = await start_worker(queue_settings, stuck, concurrency=concurrency)
    await service.submit(key, watermark=9, reason=ScheduleReason.LIVE_UPDATE)
    await asyncio.wait_for(started.wait(), 10)
    await first.stop(grace_s=0.2)
    assert first_cancelled.is_set()
    assert await service.queue.getJobState(job_id(key, 9)) in ("delayed", "waiting")
    await start_worker(queue_settings, quick)
    await eventually(lambda: _completed(service, 1), what="the released job completed")
    assert by_second == [9]


class HeldRound(FetchingWorker):
    """A fetching worker whose first round that takes a job holds its answer until ``go``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.took = asyncio.Event()
        self.go = asyncio.Event()

    async def _take_jobs(self, tokens: list[str]) -> list[Any]:
        answers = await super()._take_jobs(tokens)
        if any(answers) and not self.took.is_set():
            self.took.set()
            await self.go.wait()
        return answers


async def test_a_worker_closed_while_a_round_comes_back_runs_it_and_leaves_no_connection(
    service: Any, queue_settings: Settings
) -> None:
    """``close`` while a round of jobs is on its way back: the jobs it took still run to their
    end, and then both of the worker's connections are closed. bullmq's teardown closed them
    while that round was still coming, and the round's jobs opened one again that nothing
    closed (finalised after the test's loop had closed, it failed a later test)."""
    ran: list[str] = []

    async def process(job: Any, _token: str) -> str:
        ran.append(job.id)
        return "ready"

    worker = HeldRound(
        queue_settings.queue_name,
        process,
        {
            "connection": blocking_options(queue_settings.redis_url or ""),
            "prefix": queue_settings.queue_prefix,
            "concurrency": 4,
            "autorun": False,
        },
    )
    running = asyncio.create_task(worker.run())
    key = make_key()
    await service.submit(key, watermark=3, reason=ScheduleReason.LIVE_UPDATE)
    await asyncio.wait_for(worker.took.wait(), 10)
    closing = asyncio.create_task(worker.close())
    await asyncio.sleep(0.2)
    assert not closing.done()
    worker.go.set()
    await asyncio.wait_for(closing, 10)
    await asyncio.wait_for(running, 10)
    assert ran == [job_id(key, 3)]
    assert await service.queue.getJobState(job_id(key, 3)) == "completed"
    assert (worker.client.connection, worker.bclient.connection) == (None, None)


def test_a_killed_workers_lease_lapses_by_the_time_its_job_is_redelivered() -> None:
    """With the production timings and with the tests' short ones, a dead worker's job is
    redelivered within about 10 s (lock + two stalled checks), and its compute lease
    is no longer than lock + one stalled check, so the worker that takes the job over is not
    kept waiting long on the dead one's lease."""
    for settings in (Settings(), Settings(**FAST_QUEUE)):
        redelivered_by_ms = settings.queue_lock_ms + 2 * settings.queue_stalled_interval_ms
        assert redelivered_by_ms <= 10_000
        assert (
            settings.worker_lease_ms <= settings.queue_lock_ms + settings.queue_stalled_interval_ms
        )
        assert settings.queue_stalled_interval_ms < settings.queue_lock_ms


async def test_idle_worker_picks_up_a_new_job_within_a_second(
    service: Any, queue_settings: Settings, start_worker: Any
) -> None:
    """After 10 s without jobs (past redis-py's 5 s socket timeout and BullMQ's idle wait), a
    worker starts a new job promptly (per the job's own timestamps): well before those 5 s
    timeouts, whose expiry left an idle worker deaf for minutes before the fix."""
    done = asyncio.Event()

    async def handler(job: TelemetryJob) -> str:
        done.set()
        return "ready"

    await start_worker(queue_settings, handler)
    await asyncio.sleep(10.5)
    key = make_key()
    await service.submit(key, watermark=1, reason=ScheduleReason.CACHE_MISS)
    await asyncio.wait_for(done.wait(), 30)
    job = await Job.fromId(service.queue, job_id(key, 1))
    assert job is not None
    assert job.processedOn - job.timestamp < IDLE_PICKUP_BOUND_MS


async def test_unreachable_redis_routes_to_fallback_and_recovers(
    private_redis: Any, tmp_path: Any
) -> None:
    """With Redis stopped, submit goes to the in-process scheduler and the service reports
    degraded (ping, metric); once Redis is back, submits reach the queue again by themselves."""
    fallback = RecordingScheduler()
    metrics = Metrics()
    settings = Settings(
        data_dir=tmp_path / "data", redis_url=private_redis.url, queue_prefix="vtdeg"
    )
    svc = SessionTelemetryQueueService(settings, fallback=fallback, metrics=metrics)
    try:
        key = make_key()
        assert await svc.submit(key, watermark=1, reason=ScheduleReason.CACHE_MISS)
        assert await svc.ping() is True
        assert fallback.submitted == []

        private_redis.stop()
        assert await svc.submit(key, watermark=2, reason=ScheduleReason.LIVE_UPDATE)
        assert fallback.submitted == [(key, 2, ScheduleReason.LIVE_UPDATE)]
        assert svc.degraded
        assert await svc.ping() is False
        await svc.refresh_metrics()
        assert metrics.registry.get_sample_value("vitalcast_degraded") == 1
        assert await svc.submit(key, watermark=3, reason=ScheduleReason.LIVE_UPDATE)
        assert len(fallback.submitted) == 2

        private_redis.start()

        async def recovered() -> bool:
            return not svc.degraded

        await eventually(recovered, what="the queue service left degraded mode")
        await svc.refresh_metrics()
        assert metrics.registry.get_sample_value("vitalcast_degraded") == 0
        other = make_key()
        assert await svc.submit(other, watermark=4, reason=ScheduleReason.CACHE_MISS)
        assert len(fallback.submitted) == 2
        assert await svc.queue.getJobState(job_id(other, 4)) == "waiting"
    finally:
        await svc.close()


async def test_jobs_are_added_and_fetched_after_redis_forgot_its_scripts(
    private_redis: Any, tmp_path: Any, start_worker: Any
) -> None:
    """The one-round-trip pipelines of adds and fetches run BullMQ's scripts without asking
    whether Redis knows them: after ``SCRIPT FLUSH`` (as after a Redis restart) a submit and a
    worker's fetch load them again and go on."""
    settings = Settings(
        data_dir=tmp_path / "data",
        redis_url=private_redis.url,
        queue_prefix="vtflush",
        secret=TEST_SECRET,
        **FAST_QUEUE,
    )
    svc = SessionTelemetryQueueService(settings, fallback=None, metrics=Metrics())
    ran: list[int] = []

    async def handler(job: TelemetryJob) -> str:
        ran.append(job.watermark)
        return "fresh"

    try:
        await start_worker(settings, handler)
        key = make_key()
        assert await svc.submit(key, watermark=1, reason=ScheduleReason.LIVE_UPDATE)
        await eventually(lambda: _ran(ran, 1), what="the first job ran")
        client = redis.asyncio.Redis.from_url(private_redis.url)
        try:
            await client.script_flush()
        finally:
            await client.aclose()
        # the depth was just read, so this add rides in the pipeline that reads it
        assert await svc.submit(key, watermark=2, reason=ScheduleReason.LIVE_UPDATE)
        await eventually(lambda: _ran(ran, 2), what="the job added after the flush ran")
        assert ran == [1, 2]
    finally:
        await svc.close()


async def test_a_worker_without_a_free_slot_leaves_the_waiting_jobs_to_another(
    service: Any, queue_settings: Settings, start_worker: Any
) -> None:
    """A worker whose fetch filled its slots took the queue's marker with the jobs (its fetch
    removes it); it puts the marker back when it stops fetching, so a worker that starts then
    takes the job still waiting at once instead of at the end of its idle wait (5 s)."""
    release = asyncio.Event()
    running: list[str] = []

    async def handler(job: TelemetryJob) -> str:
        running.append(job.key.session_id)
        await asyncio.wait_for(release.wait(), 30)
        return "fresh"

    keys = [make_key() for _ in range(3)]
    try:
        await start_worker(queue_settings, handler, concurrency=2)
        assert (
            await service.submit_many([(k, 1, ScheduleReason.BACKFILL) for k in keys]) == [True] * 3
        )
        await eventually(lambda: _ran(running, 2), what="the first worker's slots full")
        await start_worker(queue_settings, handler, concurrency=2)
        await eventually(lambda: _ran(running, 3), what="the second worker took the third job")
    finally:
        release.set()
    await eventually(lambda: _completed(service, 3), what="every job completed")
    for key in keys:
        job = await Job.fromId(service.queue, job_id(key, 1))
        assert job is not None
        assert job.processedOn - job.timestamp < IDLE_PICKUP_BOUND_MS
