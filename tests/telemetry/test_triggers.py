"""What schedules a compute, and why: ingest into live and ended sessions, session ends, reads;
and the subscription state the realtime layer reports, which schedules nothing."""

from __future__ import annotations

import pytest

from tests.telemetry.conftest import MINUTE, TelemetryClient, hr, telemetry_client
from vitalcast.telemetry.keys import Resolution, ScheduleReason, TelemetryKey
from vitalcast.telemetry.scheduling import Scheduler
from vitalcast.telemetry.store.leases import SessionTelemetryCacheRepository
from vitalcast.wiring import Seams

HOUR = 60 * MINUTE


class RecordingScheduler:
    """Wraps the server's real scheduler and keeps every submission it passes on."""

    def __init__(self) -> None:
        self.submitted: list[tuple[TelemetryKey, int, ScheduleReason]] = []
        self._inner: Scheduler | None = None

    def wrap(self, inner: Scheduler) -> Scheduler:
        self._inner = inner
        return self

    async def submit(self, key: TelemetryKey, *, watermark: int, reason: ScheduleReason) -> bool:
        assert self._inner is not None
        self.submitted.append((key, watermark, reason))
        return await self._inner.submit(key, watermark=watermark, reason=reason)

    def take(self) -> set[tuple[str, int, str, str]]:
        taken = {
            (k.session_id, k.window_minutes, k.resolution.value, reason.value)
            for k, _w, reason in self.submitted
        }
        self.submitted.clear()
        return taken


async def hold_default_lease(tc: TelemetryClient, session_id: str, user_id: str) -> None:
    """Another node takes (and keeps for a minute) the lease of the default view."""
    async with tc.db.write() as conn:
        await SessionTelemetryCacheRepository().take_lease(
            conn,
            TelemetryKey(session_id, 60, Resolution.ONE_MINUTE, user_id=user_id),
            owner="other-node",
            now_ms=tc.clock.now_ms(),
            lease_ms=60_000,
        )


@pytest.fixture
def recorder() -> RecordingScheduler:
    return RecordingScheduler()


@pytest.fixture
async def rtc(settings, clock, recorder):
    """A telemetry client whose server schedules through ``recorder``."""
    async with telemetry_client(
        settings, clock, Seams(clock=clock, scheduler_wrapper=recorder.wrap)
    ) as client:
        yield client


async def test_ingest_schedules_live_update_then_late_ingest_for_every_cached_view(
    rtc: TelemetryClient, users, recorder: RecordingScheduler
):
    """Ingest into an active session schedules live_update for the default view and every cached
    one; ending schedules session_completed at 1m and 5m; once the session ended the same ingest
    schedules late_ingest for every cached view, the precomputed ones included."""
    tc = rtc
    user_id, token = await users.create()
    headers = {"Authorization": f"Bearer {token}"}
    start = tc.clock.now_ms() - HOUR
    session_id = await tc.start_session(headers, start)
    await tc.post_samples(headers, [hr("a", start + MINUTE, 70.0)])
    await tc.get(headers, session_id, window_minutes=30, resolution="5m")
    await tc.settle()

    recorder.submitted.clear()
    await tc.post_samples(headers, [hr("b", start + 2 * MINUTE, 71.0)])
    assert recorder.take() == {
        (session_id, 60, "1m", "live_update"),
        (session_id, 30, "5m", "live_update"),
    }
    await tc.settle()
    end = tc.clock.now_ms()
    await tc.end_session(headers, session_id, end)
    assert recorder.take() == {
        (session_id, 60, "1m", "session_completed"),
        (session_id, 60, "5m", "session_completed"),
        (session_id, 30, "5m", "session_completed"),
    }
    await tc.settle()
    # Another node holds the default view's lease, so that view stays stale after this ingest.
    await hold_default_lease(tc, session_id, user_id)
    await tc.post_samples(headers, [hr("c", start + 3 * MINUTE, 72.0)])
    await tc.settle()
    assert recorder.take() == {
        (session_id, 60, "1m", "late_ingest"),
        (session_id, 60, "5m", "late_ingest"),
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


async def test_subscription_state_reports_without_scheduling(
    rtc: TelemetryClient, users, recorder: RecordingScheduler
):
    """The subscribe acknowledgement's state and watermark follow the default view (computing,
    ready, stale), and asking never schedules a compute."""
    tc = rtc
    user_id, token = await users.create()
    headers = {"Authorization": f"Bearer {token}"}
    start = tc.clock.now_ms() - HOUR
    session_id = await tc.start_session(headers, start)
    service = tc.parts.subscribe

    async def state() -> tuple[str, int | None]:
        session = await tc.parts.sessions.get(user_id, session_id)
        before = len(recorder.submitted)
        answered = await service.subscription_state(session)
        assert len(recorder.submitted) == before, "subscription_state scheduled a compute"
        return answered

    assert await state() == ("computing", None)
    await tc.post_samples(headers, [hr("a", start + MINUTE, 70.0)])
    await tc.settle()
    ready_watermark = (await tc.get(headers, session_id)).json()["telemetry"]["source_watermark"]
    assert await state() == ("ready", ready_watermark)

    await hold_default_lease(tc, session_id, user_id)
    await tc.post_samples(headers, [hr("b", start + 2 * MINUTE, 71.0)])
    await tc.settle()
    assert await state() == ("stale", ready_watermark)
