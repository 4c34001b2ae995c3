"""A scaled-out import has the effects of an HTTP ingest: the sessions it touches (here, the
session of a workout it creates) are recomputed by the workers through the queue."""

from __future__ import annotations

import asyncio
import time

from tests.interop.health_exports import HR, Rec, at, workout, write_export
from vitalcast.clock import now_ms
from vitalcast.db.engine import Database
from vitalcast.interop.importer import import_export
from vitalcast.queue.jobs import TelemetryJob
from vitalcast.sessions import repository as session_repository
from vitalcast.settings import Settings
from vitalcast.telemetry.keys import Resolution, ScheduleReason, TelemetryKey
from vitalcast.testing import ensure_user
from vitalcast.wiring import build_importer


async def test_scaled_out_import_queues_the_recomputes_of_what_it_touched(
    queue_settings: Settings, database_url: str, db: Database, start_worker, tmp_path
):
    """Creating and ending the workout's session queues its precomputes; the samples landing
    inside it afterwards are recomputed by a job of the default view that starts once they are
    in (reads the newer watermark).

    That job is the late-ingest job, or, when the precompute of the same view was still waiting
    (a worker slow to fetch), that precompute: it absorbs the late add (per key one job waits)
    and reads the newer watermark when it starts. Which of the two records did the work is not
    the promise; that a job saw the correction is. The handler reads what a compute reads: the
    session's watermark when the job starts (``db`` is set up before the worker, so it closes
    after the worker stopped)."""
    settings = queue_settings.model_copy(update={"database_url": database_url})
    #: each job run, with the session's watermark when it started
    ran: list[tuple[TelemetryJob, int]] = []

    async def handler(job: TelemetryJob) -> str:
        async with db.read() as conn:
            found = await session_repository.get(conn, job.key.user_id, job.key.session_id)
        assert found is not None
        ran.append((job, found.source_watermark))
        return "ready"

    await start_worker(settings, handler)
    path = write_export(
        tmp_path / "export.xml",
        [Rec(HR, "count/min", str(60 + i), at(i)) for i in range(5)],
        [workout(at(-10), 30)],
    )
    parts = build_importer(settings)
    try:
        user_id = await ensure_user(parts.db, "runner")
        # Workouts come after the records in an export: the session is made after its samples
        # (no late ingest yet); importing again finds it and changes nothing.
        summary = await import_export(parts.ingest, user_id, path, sessions=parts.sessions)
        assert summary.sessions_created == 1
        listed, _ = await parts.sessions.list(user_id, status=None, limit=5, cursor=None)
        (session,) = listed
        corrected = write_export(
            tmp_path / "corrected.xml", [Rec(HR, "count/min", "99", at(2))], [workout(at(-10), 30)]
        )
        again = await import_export(parts.ingest, user_id, corrected, sessions=parts.sessions)
        assert (again.updated, again.sessions_existing) == (1, 1)
        corrected_session = await parts.sessions.get(user_id, session.id)
    finally:
        await parts.close()
    late = corrected_session.source_watermark
    assert late > session.source_watermark

    precomputed = {
        TelemetryKey(session.id, settings.default_window_minutes, r, user_id=user_id)
        for r in Resolution
    }
    default = TelemetryKey.default_for(
        corrected_session, window_minutes=settings.default_window_minutes, now_ms=now_ms()
    )
    deadline = time.monotonic() + 20
    while not (
        precomputed <= {job.key for job, _ in ran}
        and any(job.key == default and seen >= late for job, seen in ran)
    ):
        assert time.monotonic() < deadline, ran
        await asyncio.sleep(0.05)
    reasons = {(job.key, job.reason) for job, _ in ran}
    assert {(key, ScheduleReason.SESSION_COMPLETED) for key in precomputed} <= reasons
    # the job that saw the correction: the late-ingest one, or the precompute that absorbed it
    saw = {(job.reason, job.watermark) for job, seen in ran if job.key == default and seen >= late}
    assert saw <= {
        (ScheduleReason.LATE_INGEST, late),
        (ScheduleReason.SESSION_COMPLETED, session.source_watermark),
    }
