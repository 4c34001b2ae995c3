"""Issue 4 acceptance: `vitalcast serve` and `vitalcast worker` as real subprocesses on PostgreSQL
and Redis. The module shares one server (own queue prefix and Socket.IO channel); each test starts
its own workers and works on its own user's sessions. The outage test has its own Redis.

The shared server computes nothing inline (``VITALCAST_INLINE_LIVE_UPDATES=false``): these tests
prove the workers' side of every compute, live updates included (a failing worker, a killed one);
``test_inline_live_updates`` proves what a server computes itself."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from bullmq import Job, Queue

from tests.accounts import new_user
from tests.conftest import REDIS_URL, in_thread
from tests.ingest.helpers import MINUTE_MS, hr, iso, now_ms
from tests.processes import (
    FAST_QUEUE,
    RedisServer,
    ServerProcess,
    redis_answers,
    run_cli,
    serve_subprocess,
    vitalcast_env,
)
from tests.queue.conftest import delete_prefix
from tests.queue.helpers import (
    IDLE_PICKUP_BOUND_MS,
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    Api,
    WorkerProcess,
    computes,
    metric_sum,
    scrape,
    worker_subprocess,
)
from tests.services import service_missing
from vitalcast.db.engine import Database, create_engine
from vitalcast.db.tables import telemetry_cache
from vitalcast.queue.jobs import job_id
from vitalcast.redis_connections import blocking_options
from vitalcast.telemetry.keys import Resolution, TelemetryKey

pytestmark = pytest.mark.slow


@dataclass
class Cluster:
    """One `vitalcast serve` shared by this module's tests, on this module's queue prefix."""

    env: dict[str, str]
    server: ServerProcess
    prefix: str
    pg_url: str
    redis_url: str


@pytest.fixture(scope="module")
def cluster(
    pg_database_url: str | None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """A server on the shared PostgreSQL and Redis under a unique queue prefix and Socket.IO
    channel (each test starts its own workers); the prefix's keys are deleted at the end."""
    if pg_database_url is None:
        service_missing("PostgreSQL")
    assert pg_database_url is not None
    if not redis_answers(REDIS_URL):
        service_missing("Redis")
    prefix = f"vt{uuid.uuid4().hex[:10]}"
    folder = tmp_path_factory.mktemp("queue-cluster")
    env = vitalcast_env(
        folder / "data",
        database_url=pg_database_url,
        redis_url=REDIS_URL,
        queue_prefix=prefix,
        socketio_channel=f"{prefix}-sio",
        inline_live_updates="false",
        **FAST_QUEUE,
    )
    try:
        with serve_subprocess(
            env,
            folder / "server.log",
            start_timeout_s=START_TIMEOUT_S,
            stop_timeout_s=STOP_TIMEOUT_S,
        ) as server:
            yield Cluster(env, server, prefix, pg_database_url, REDIS_URL)
    finally:
        in_thread(asyncio.run, delete_prefix(REDIS_URL, prefix))


@pytest.fixture
async def queue(cluster: Cluster) -> AsyncIterator[Queue]:
    """A read-side handle on the cluster's queue, for looking at jobs."""
    handle = Queue(
        "session-telemetry",
        {"connection": blocking_options(cluster.redis_url), "prefix": cluster.prefix},
    )
    yield handle
    await handle.close()


def jobs_done(worker: WorkerProcess, session_id: str, outcome: str | None = None) -> list[str]:
    """Ids of the jobs of ``session_id`` the worker finished (with ``outcome`` when given)."""
    done = []
    for line in worker.log().splitlines():
        if '"job_done"' not in line:
            continue
        event = json.loads(line)
        if event["job_id"].startswith(session_id) and outcome in (None, event["outcome"]):
            done.append(event["job_id"])
    return done


def job_outcomes(worker: WorkerProcess, job_id: str) -> list[str]:
    """The outcome of each run of the job ``job_id`` the worker finished, in order."""
    outcomes = []
    for line in worker.log().splitlines():
        if '"job_done"' in line and (event := json.loads(line))["job_id"] == job_id:
            outcomes.append(event["outcome"])
    return outcomes


async def ended_session_with_samples(api: Api, hours_ago: int = 0) -> tuple[dict[str, Any], int]:
    """A completed hour-long session that ended 30 min (+ ``hours_ago``) ago, with heart-rate
    samples; its final watermark."""
    start = now_ms() - 90 * MINUTE_MS - hours_ago * 60 * MINUTE_MS
    session = await api.create_session(started_at=iso(start))
    await api.ingest(
        [hr(f"e{hours_ago}-{i}", start + i * MINUTE_MS, 60 + i % 20) for i in range(60)]
    )
    ended = await api.end_session(session["id"], ended_at=iso(start + 60 * MINUTE_MS))
    return ended, int(ended["source_watermark"])


async def test_worker_computes_a_get_miss_and_the_server_computes_nothing(
    cluster: Cluster, queue: Queue, tmp_path: Path
) -> None:
    """A worker that has gone quiet starts a GET miss's job promptly (IDLE_PICKUP_BOUND_MS); the
    next GET is ready, the view was computed exactly once, and every compute ran in the worker,
    none in the server. (That a worker idle past redis-py's and BullMQ's 5 s timeouts still hears
    new jobs is proven once, on the same ``TelemetryWorker`` and connection options, by
    ``test_queue_service``'s ``test_idle_worker_picks_up_a_new_job_within_a_second``.)

    A polling GET that read the row before the save and asked after the job finished adds the
    same job again (a finished job of a key and watermark runs again when asked for: a busy lease
    or an expired backoff needs it); that run finds the view fresh. So the job's record may be
    either run's, computed or skipped_fresh: the promise is one compute, promptly, in the
    worker."""
    user_id, token = await new_user(cluster.pg_url)
    api = Api(cluster.server.url, token)
    with worker_subprocess(cluster.env, tmp_path / "worker.log") as worker:
        session, watermark = await ended_session_with_samples(api)
        # ending the session precomputes the default window through the queue
        await api.wait_state(session["id"], "ready", watermark=watermark, resolution="1m")

        params = {"window_minutes": 30, "resolution": "1m"}
        first = await api.telemetry(session["id"], **params)
        assert first.status_code == 202
        assert first.json()["state"] == "computing"
        assert first.headers["Retry-After"] == str(first.json()["retry_after_seconds"])
        body = await api.wait_state(session["id"], "ready", watermark=watermark, **params)
        assert body["telemetry"]["window"]["window_minutes"] == 30

        key = TelemetryKey(session["id"], 30, Resolution.ONE_MINUTE, user_id=user_id)
        # the precomputed 5m view was not waited for, and a save answers GETs before its job is
        # marked done
        await jobs_finished(queue, session["id"], worker)
        miss = job_id(key, watermark)
        job = await Job.fromId(queue, miss)
        assert job is not None
        assert job.processedOn - job.timestamp < IDLE_PICKUP_BOUND_MS
        assert job.returnvalue in ("computed", "skipped_fresh")
        # its first run computed the view; a run of it added again found the view fresh
        first, *again = job_outcomes(worker, miss)
        assert first == "computed", worker.log()
        assert set(again) <= {"skipped_fresh"}, worker.log()

        server_metrics = await scrape(cluster.server.url)
        assert metric_sum(server_metrics, "vitalcast_computes_total") == 0
        worker_metrics = await scrape(worker.metrics_url)
        assert metric_sum(worker_metrics, "vitalcast_computes_total", outcome="ready") >= 3
        assert worker.process.poll() is None, worker.log()
        # the server reports the queue: completed jobs (3 at least: 1m, 5m, the miss), none stuck
        for state in ("waiting", "active", "delayed", "failed", "completed"):
            assert f'vitalcast_queue_jobs{{state="{state}"}}' in server_metrics
        assert metric_sum(server_metrics, "vitalcast_queue_jobs", state="completed") >= 3
        assert metric_sum(server_metrics, "vitalcast_degraded") == 0


async def test_a_burst_of_ingests_into_a_live_session_costs_at_most_two_computes(
    cluster: Cluster, queue: Queue, tmp_path: Path
) -> None:
    """100 concurrent ingest batches into one live session run at most 2 jobs and 2 computes:
    the worker holds its computes until the whole burst has landed, and by then every submit
    has coalesced into the session's one job (waiting, or running with the newest submit parked
    behind it). Once they finish, the cache holds the final watermark and the payload counts
    every sample.

    Why by construction, not by timing: while the held job runs, a submit can only be parked,
    so after the burst at most one more job exists, and it starts after the last submit, so it
    reads the final watermark. Until the jobs are done the test reads the cache row and the
    queue, not the GET: a GET of a view that is still computing asks for a compute of its own
    (a reader's request, not the burst's), and one landing while the second job ran made a
    third job in a loaded CI run."""
    _user, token = await new_user(cluster.pg_url)
    api = Api(cluster.server.url, token)
    burst_landed = tmp_path / "burst-landed"
    with worker_subprocess(cluster.env, tmp_path / "worker.log", hold_until=burst_landed) as worker:
        start = now_ms() - 20 * MINUTE_MS
        session = await api.create_session(started_at=iso(start))
        sid = session["id"]
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(limits=limits, timeout=30) as http:
            seqs = await asyncio.gather(
                *(
                    api.ingest([hr(f"b{i}", start + i * 10_000, 60 + i % 30)], http)
                    for i in range(100)
                )
            )
        final = max(seqs)
        assert sorted(seqs) == list(range(final - 99, final + 1))
        # every submit has been answered: they all coalesced into one job
        assert len(await session_jobs(queue, sid, UNFINISHED)) == 1
        burst_landed.touch()

        deadline = time.monotonic() + 60
        while await session_jobs(queue, sid, UNFINISHED) or (
            await cached_watermark(cluster.pg_url, sid) != final
        ):
            assert time.monotonic() < deadline, worker.log()
            await asyncio.sleep(0.1)
        finished = await session_jobs(queue, sid, ["completed", "failed"])
        assert 1 <= len(finished) <= 2
        assert all(job.returnvalue in ("computed", "skipped_fresh") for job in finished)
        assert sorted(jobs_done(worker, sid)) == sorted(job.id for job in finished)
        assert 1 <= len(jobs_done(worker, sid, "computed")) <= 2

        body = await api.wait_state(sid, "ready", watermark=final)
        assert body["telemetry"]["live"] is True
        assert body["telemetry"]["metrics"]["heart_rate"]["stats"]["count"] == 100
        assert await computes(cluster.server.url) == 0


#: BullMQ states of a job that has not finished
UNFINISHED = ["waiting", "active", "delayed", "prioritized", "paused"]


async def jobs_finished(
    queue: Queue, session_id: str, worker: WorkerProcess, timeout_s: float = 60
) -> None:
    """Until no job of the session waits or runs: a compute's save answers GETs before its
    worker marks the job done, which a loaded machine can delay by seconds."""
    deadline = time.monotonic() + timeout_s
    while await session_jobs(queue, session_id, UNFINISHED):
        assert time.monotonic() < deadline, worker.log()
        await asyncio.sleep(0.1)


async def session_jobs(queue: Queue, session_id: str, states: list[str]) -> list[Job]:
    """The session's jobs in ``states`` (job ids start with the session id)."""
    return [job for job in await queue.getJobs(states) if job.id.startswith(session_id)]


async def cached_watermark(pg_url: str, session_id: str) -> int | None:
    """The newest source watermark among the session's cached views (None: nothing cached)."""
    db = Database(create_engine(pg_url))
    try:
        async with db.read() as conn:
            c = telemetry_cache.c
            query = sa.select(sa.func.max(c.source_watermark)).where(c.session_id == session_id)
            watermark = (await conn.execute(query)).scalar()
            return None if watermark is None else int(watermark)
    finally:
        await db.dispose()


async def live_leases(pg_url: str, session_id: str) -> list[Any]:
    """Cache rows of the session whose lease has not expired."""
    db = Database(create_engine(pg_url))
    try:
        async with db.read() as conn:
            c = telemetry_cache.c
            rows = await conn.execute(
                sa.select(c.resolution, c.lease_owner, c.lease_expires_ms).where(
                    c.session_id == session_id,
                    c.lease_owner.is_not(None),
                    c.lease_expires_ms > now_ms(),
                )
            )
            return list(rows)
    finally:
        await db.dispose()


async def start_held_compute(
    api: Api, pg_url: str, holder: WorkerProcess
) -> tuple[dict[str, Any], int]:
    """A live session whose first compute is running (lease held) in the ``holder`` worker."""
    start = now_ms() - 20 * MINUTE_MS
    session = await api.create_session(started_at=iso(start))
    seq = await api.ingest([hr(f"t{i}", start + i * MINUTE_MS) for i in range(10)])
    deadline = time.monotonic() + 30
    while not await live_leases(pg_url, session["id"]):
        assert time.monotonic() < deadline, holder.log()
        await asyncio.sleep(0.05)
    return session, seq


async def test_a_killed_workers_job_completes_on_another_worker(
    cluster: Cluster, queue: Queue, tmp_path: Path
) -> None:
    """SIGKILL a worker in the middle of a compute (lease held): another worker completes the
    job within 15 s, the cache ends ready and no row keeps a live lease."""
    user_id, token = await new_user(cluster.pg_url)
    api = Api(cluster.server.url, token)
    with worker_subprocess(
        cluster.env, tmp_path / "doomed.log", "--concurrency", "1", hold_ms=120_000
    ) as doomed:
        session, seq = await start_held_compute(api, cluster.pg_url, doomed)
        key = TelemetryKey(session["id"], 60, Resolution.ONE_MINUTE, user_id=user_id)
        assert await queue.getJobState(job_id(key, seq)) == "active"
        with worker_subprocess(cluster.env, tmp_path / "rescuer.log") as rescuer:
            doomed.kill()
            killed_at = time.monotonic()
            await api.wait_state(session["id"], "ready", watermark=seq, timeout_s=30)
            recovered_s = time.monotonic() - killed_at
            assert recovered_s < 15, recovered_s
            assert await live_leases(cluster.pg_url, session["id"]) == []
            await jobs_finished(queue, session["id"], rescuer)
            job = await Job.fromId(queue, job_id(key, seq))
            assert job is not None
            assert await queue.getJobState(job.id) == "completed"
            assert job.returnvalue == "computed"
            assert jobs_done(rescuer, session["id"], "computed") == [job.id]
    assert await computes(cluster.server.url) == 0


async def test_sigterm_lets_a_running_job_finish(
    cluster: Cluster, queue: Queue, tmp_path: Path
) -> None:
    """SIGTERM during a compute shorter than the grace period: the worker finishes it, then
    exits cleanly (code 0). The compute holds its lease until the worker has begun to stop."""
    user_id, token = await new_user(cluster.pg_url)
    api = Api(cluster.server.url, token)
    stopping = tmp_path / "stopping"
    with worker_subprocess(cluster.env, tmp_path / "worker.log", hold_until=stopping) as worker:
        session, seq = await start_held_compute(api, cluster.pg_url, worker)
        worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while '"worker_stopping"' not in worker.log():
            assert time.monotonic() < deadline, worker.log()
            await asyncio.sleep(0.05)
        stopping.touch()
        assert worker.process.wait(15) == 0, worker.log()
    key = TelemetryKey(session["id"], 60, Resolution.ONE_MINUTE, user_id=user_id)
    assert await queue.getJobState(job_id(key, seq)) == "completed"
    assert jobs_done(worker, session["id"], "computed") == [job_id(key, seq)]
    assert "job_released" not in worker.log()
    assert await live_leases(cluster.pg_url, session["id"]) == []
    await api.wait_state(session["id"], "ready", watermark=seq, timeout_s=5)


async def test_sigterm_releases_a_long_job_to_another_worker(
    cluster: Cluster, queue: Queue, tmp_path: Path
) -> None:
    """SIGTERM during a compute longer than the grace period: the worker gives the job and its
    lease back and exits cleanly; another worker computes it at once, with no stall and no
    attempt used."""
    user_id, token = await new_user(cluster.pg_url)
    api = Api(cluster.server.url, token)
    grace = ("--concurrency", "1", "--shutdown-grace", "1")
    with worker_subprocess(
        cluster.env, tmp_path / "stopping.log", *grace, hold_ms=120_000
    ) as stopping:
        session, seq = await start_held_compute(api, cluster.pg_url, stopping)
        with worker_subprocess(cluster.env, tmp_path / "taker.log") as taker:
            stopping.process.send_signal(signal.SIGTERM)
            assert stopping.process.wait(20) == 0, stopping.log()
            assert "job_released" in stopping.log()
            await api.wait_state(session["id"], "ready", watermark=seq, timeout_s=10)
            key = TelemetryKey(session["id"], 60, Resolution.ONE_MINUTE, user_id=user_id)
            assert jobs_done(taker, session["id"], "computed") == [job_id(key, seq)]
            # neither recovered as stalled nor kept waiting for the released lease
            assert "job_stalled" not in taker.log()
            assert "job_deferred" not in taker.log()
    job = await Job.fromId(queue, job_id(key, seq))
    assert job is not None
    assert job.returnvalue == "computed"
    assert job.attemptsMade == 1
    assert await live_leases(cluster.pg_url, session["id"]) == []


@pytest.fixture
async def no_samples_url(cluster: Cluster) -> AsyncIterator[str]:
    """The test database as a role that may do everything except read health samples: its
    computes fail for real (permission denied) while everything else works."""
    role = f"vc_nosamples_{uuid.uuid4().hex[:8]}"
    admin = create_engine(cluster.pg_url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
            await conn.execute(sa.text(f'GRANT USAGE ON SCHEMA public TO "{role}"'))
            await conn.execute(
                sa.text(
                    "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public "
                    f'TO "{role}"'
                )
            )
            await conn.execute(sa.text(f'REVOKE SELECT ON health_samples FROM "{role}"'))
        yield sa.make_url(cluster.pg_url).set(username=role).render_as_string(hide_password=False)
    finally:
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'DROP OWNED BY "{role}"'))
            await conn.execute(sa.text(f'DROP ROLE IF EXISTS "{role}"'))
        await admin.dispose()


async def test_a_compute_that_keeps_failing_ends_failed_while_the_last_payload_is_served(
    cluster: Cluster, no_samples_url: str, queue: Queue, tmp_path: Path
) -> None:
    """A job whose compute keeps failing is tried 3 times with exponential backoff and ends in
    BullMQ's failed set; the GET answers failed with COMPUTE_FAILED and the last good payload."""
    user_id, token = await new_user(cluster.pg_url)
    api = Api(cluster.server.url, token)
    start = now_ms() - 20 * MINUTE_MS
    session = await api.create_session(started_at=iso(start))
    with worker_subprocess(cluster.env, tmp_path / "good.log"):
        good = await api.ingest([hr(f"g{i}", start + i * MINUTE_MS) for i in range(5)])
        await api.wait_state(session["id"], "ready", watermark=good)
    broken = cluster.env | {"VITALCAST_DATABASE_URL": no_samples_url}
    with worker_subprocess(broken, tmp_path / "broken.log") as worker:
        bad = await api.ingest([hr("b", start + 6 * MINUTE_MS)])
        key = TelemetryKey(session["id"], 60, Resolution.ONE_MINUTE, user_id=user_id)
        deadline = time.monotonic() + 30
        while await queue.getJobState(job_id(key, bad)) != "failed":
            assert time.monotonic() < deadline, worker.log()
            await asyncio.sleep(0.1)
        job = await Job.fromId(queue, job_id(key, bad))
        assert job is not None
        assert job.failedReason == "COMPUTE_FAILED"
        assert job.attemptsMade == 3
        # waited the backoff base, then twice that
        assert job.finishedOn - job.timestamp >= 3 * int(FAST_QUEUE["queue_backoff_ms"])
        worker_metrics = await scrape(worker.metrics_url)
        assert metric_sum(worker_metrics, "vitalcast_computes_total", outcome="failed") == 3

        response = await api.telemetry(session["id"])
        assert response.status_code == 200
        body = response.json()
        assert body["state"] == "failed"
        assert body["error"]["code"] == "COMPUTE_FAILED"
        assert body["telemetry"]["source_watermark"] == good
        assert response.headers["Retry-After"] == str(body["retry_after_seconds"])


async def test_redis_outage_degrades_to_in_process_computes_and_recovers(
    pg_database_url: str | None, unique_prefix: str, private_redis: RedisServer, tmp_path: Path
) -> None:
    """With the server's Redis stopped, cached GETs stay 200, a miss is computed in the server,
    ingest works, /readyz and /metrics say degraded, nothing answers 5xx; with Redis back, a
    miss is a queue job computed by the worker again."""
    if pg_database_url is None:
        service_missing("PostgreSQL")
    assert pg_database_url is not None
    pg_url = pg_database_url
    env = vitalcast_env(
        tmp_path / "data",
        database_url=pg_url,
        redis_url=private_redis.url,
        queue_prefix=unique_prefix,
        socketio_channel=f"{unique_prefix}-sio",
        **FAST_QUEUE,
    )
    user_id, token = await new_user(pg_url)
    with (
        serve_subprocess(
            env,
            tmp_path / "server.log",
            start_timeout_s=START_TIMEOUT_S,
            stop_timeout_s=STOP_TIMEOUT_S,
        ) as server,
        worker_subprocess(env, tmp_path / "worker.log") as worker,
    ):
        api = Api(server.url, token)
        session, watermark = await ended_session_with_samples(api)
        await api.wait_state(session["id"], "ready", watermark=watermark, resolution="1m")
        assert await computes(server.url) == 0

        private_redis.stop()
        for _ in range(3):
            cached = await api.telemetry(session["id"], resolution="1m")
            assert cached.status_code == 200
            assert cached.json()["state"] == "ready"
        miss = await api.telemetry(session["id"], window_minutes=30, resolution="1m")
        assert miss.status_code == 202
        await api.wait_state(
            session["id"], "ready", watermark=watermark, window_minutes=30, resolution="1m"
        )
        assert await computes(server.url) >= 1
        async with httpx.AsyncClient(base_url=server.url) as http:
            ready = await http.get("/readyz")
            assert ready.status_code == 200
            assert ready.json()["mode"] == "degraded"
            assert ready.json()["checks"]["redis"] == "unavailable"
            assert metric_sum((await http.get("/metrics")).text, "vitalcast_degraded") == 1
        late = await api.ingest([hr("late", session["start_ms"] + 5 * MINUTE_MS, 99)])
        await api.wait_state(session["id"], "ready", watermark=late, resolution="1m")

        private_redis.start()
        deadline = time.monotonic() + 15
        async with httpx.AsyncClient(base_url=server.url) as http:
            while (await http.get("/readyz")).json()["mode"] != "scaled_out":
                assert time.monotonic() < deadline, server.log()
                await asyncio.sleep(0.2)
            assert metric_sum((await http.get("/metrics")).text, "vitalcast_degraded") == 0
        in_server = await computes(server.url)
        params = {"window_minutes": 45, "resolution": "1m"}
        assert (await api.telemetry(session["id"], **params)).status_code == 202
        await api.wait_state(session["id"], "ready", watermark=late, timeout_s=60, **params)
        assert await computes(server.url) == in_server
        key = TelemetryKey(session["id"], 45, Resolution.ONE_MINUTE, user_id=user_id)
        handle = Queue(
            "session-telemetry",
            {"connection": blocking_options(private_redis.url), "prefix": unique_prefix},
        )
        try:
            await jobs_finished(handle, session["id"], worker)
            job = await Job.fromId(handle, job_id(key, late))
            assert job is not None
            assert job.returnvalue == "computed"
        finally:
            await handle.close()
        assert worker.process.poll() is None, worker.log()


async def test_backfill_cli_queues_missing_caches_for_the_workers(
    cluster: Cluster, tmp_path: Path
) -> None:
    """`vitalcast backfill --user NAME` queues the user's missing default caches (showing
    progress), a worker computes them, and a second run finds every cache up to date."""
    name = f"bf-{uuid.uuid4().hex[:8]}"
    _user, token = await new_user(cluster.pg_url, name)
    api = Api(cluster.server.url, token)
    # 8 h apart, so one session's samples and end leave the other's watermark alone
    ended = [await ended_session_with_samples(api, hours_ago) for hours_ago in (0, 8)]
    command = ["backfill", "--user", name]
    first = await asyncio.to_thread(run_cli, command, cluster.env)
    assert first.returncode == 0, first.stderr
    assert "backfill: 2/2 sessions checked, 4 computes scheduled, 0 up to date" in first.stderr
    with worker_subprocess(cluster.env, tmp_path / "worker.log"):
        for session, watermark in ended:
            for resolution in ("1m", "5m"):
                await api.wait_state(
                    session["id"], "ready", watermark=watermark, resolution=resolution
                )
    second = await asyncio.to_thread(run_cli, command, cluster.env)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "0 computes scheduled for 2 sessions"
    assert "4 up to date" in second.stderr
