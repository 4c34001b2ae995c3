"""A scaled-out import has the effects of an HTTP ingest: the sessions it touches (here, the
session of a workout it creates) are recomputed by the workers through the queue."""

from __future__ import annotations

import asyncio
import time

from tests.interop.health_exports import HR, Rec, at, workout, write_export
from vitalcast.interop.importer import import_export
from vitalcast.queue.jobs import TelemetryJob
from vitalcast.settings import Settings
from vitalcast.telemetry.keys import ScheduleReason
from vitalcast.testing import ensure_user
from vitalcast.wiring import build_importer


async def test_scaled_out_import_queues_the_recomputes_of_what_it_touched(
    queue_settings: Settings, database_url: str, start_worker, tmp_path
):
    """Creating and ending the workout's session queues its precomputes; the samples landing
    inside it afterwards queue its late-ingest recompute at the newer watermark."""
    settings = queue_settings.model_copy(update={"database_url": database_url})
    jobs: list[TelemetryJob] = []

    async def handler(job: TelemetryJob) -> str:
        jobs.append(job)
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
    finally:
        await parts.close()

    deadline = time.monotonic() + 20
    while not any(j.reason is ScheduleReason.LATE_INGEST for j in jobs):
        assert time.monotonic() < deadline, jobs
        await asyncio.sleep(0.05)
    reasons = {(j.key.session_id, j.reason) for j in jobs}
    assert (session.id, ScheduleReason.SESSION_COMPLETED) in reasons
    assert (session.id, ScheduleReason.LATE_INGEST) in reasons
    late = max(j.watermark for j in jobs if j.reason is ScheduleReason.LATE_INGEST)
    assert late > session.source_watermark
