"""What schedules a compute, and why: ingest into live and ended sessions, session ends, reads;
and the subscription state the realtime layer reports, which schedules nothing."""

from __future__ import annotations

from tests.telemetry.conftest import MINUTE, hr
from vitalcast.telemetry.models import Resolution, ScheduleReason, TelemetryKey

HOUR = 60 * MINUTE


class RecordingScheduler:
    """A Scheduler that keeps every submission and accepts it without running anything."""

    def __init__(self) -> None:
        self.submitted: list[tuple[TelemetryKey, int, ScheduleReason]] = []

    async def submit(self, key: TelemetryKey, *, watermark: int, reason: ScheduleReason) -> bool:
        self.submitted.append((key, watermark, reason))
        return True

    def take(self) -> set[tuple[str, int, str, str]]:
        taken = {
            (k.session_id, k.window_minutes, k.resolution.value, reason.value)
            for k, _w, reason in self.submitted
        }
        self.submitted.clear()
        return taken


async def test_ingest_schedules_live_update_then_late_ingest_for_every_cached_view(tc, users):
    """Ingest into an active session schedules live_update for the default view and every cached
    one; once the session ended the same ingest schedules late_ingest; ending schedules
    session_completed at 1m and 5m."""
    headers = await users.headers()
    start = tc.clock.now_ms() - HOUR
    session_id = await tc.start_session(headers, start)
    await tc.post_samples(headers, [hr("a", start + MINUTE, 70.0)])
    await tc.get(headers, session_id, window_minutes=30, resolution="5m")
    await tc.settle()

    recorder = RecordingScheduler()
    tc.container.telemetry.scheduler = recorder
    await tc.post_samples(headers, [hr("b", start + 2 * MINUTE, 71.0)])
    assert recorder.take() == {
        (session_id, 60, "1m", "live_update"),
        (session_id, 30, "5m", "live_update"),
    }
    end = tc.clock.now_ms()
    await tc.end_session(headers, session_id, end)
    assert recorder.take() == {
        (session_id, 60, "1m", "session_completed"),
        (session_id, 60, "5m", "session_completed"),
        (session_id, 30, "5m", "session_completed"),
    }
    await tc.post_samples(headers, [hr("c", start + 3 * MINUTE, 72.0)])
    assert recorder.take() == {
        (session_id, 60, "1m", "late_ingest"),
        (session_id, 30, "5m", "late_ingest"),
    }
    watermark = (await tc.http.get(f"/api/v1/sessions/{session_id}", headers=headers)).json()[
        "source_watermark"
    ]
    assert (await tc.get(headers, session_id)).json()["state"] == "stale"
    [(key, submitted_watermark, reason)] = recorder.submitted
    assert (key.session_id, key.window_minutes, key.resolution) == (
        session_id,
        60,
        Resolution.ONE_MINUTE,
    )
    assert (submitted_watermark, reason) == (watermark, ScheduleReason.STALE_READ)


async def test_subscription_state_reports_without_scheduling(tc, users):
    """The subscribe acknowledgement's state and watermark follow the default view (computing,
    ready, stale), and asking never schedules a compute."""
    user_id, token = await users.create()
    headers = {"Authorization": f"Bearer {token}"}
    start = tc.clock.now_ms() - HOUR
    session_id = await tc.start_session(headers, start)
    service = tc.container.telemetry
    coordinator = service.scheduler
    recorder = RecordingScheduler()

    async def state() -> tuple[str, int | None]:
        session = await tc.container.sessions.get(user_id, session_id)
        service.scheduler = recorder
        try:
            return await service.subscription_state(session)
        finally:
            service.scheduler = coordinator

    assert await state() == ("computing", None)
    await tc.post_samples(headers, [hr("a", start + MINUTE, 70.0)])
    await tc.settle()
    ready_watermark = (await tc.get(headers, session_id)).json()["telemetry"]["source_watermark"]
    assert await state() == ("ready", ready_watermark)

    async with tc.db.write() as conn:
        await service.cache.take_lease(
            conn,
            TelemetryKey(session_id, 60, Resolution.ONE_MINUTE, user_id=user_id),
            owner="other-node",
            now_ms=tc.clock.now_ms(),
            lease_ms=60_000,
        )
    await tc.post_samples(headers, [hr("b", start + 2 * MINUTE, 71.0)])
    await tc.settle()
    assert await state() == ("stale", ready_watermark)
    assert recorder.submitted == []
