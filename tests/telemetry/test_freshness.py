"""Exact freshness through the real ingest: watermarks, not TTLs, decide what a GET answers."""

from __future__ import annotations

from tests.telemetry.conftest import MINUTE, hr
from vitalcast.telemetry.keys import Resolution, TelemetryKey
from vitalcast.telemetry.store import queries
from vitalcast.telemetry.store.leases import SessionTelemetryCacheRepository

HOUR = 60 * MINUTE


async def _ended_session_with_samples(tc, headers, *, samples: int = 120) -> tuple[str, int]:
    start = tc.clock.now_ms() - 4 * HOUR
    session_id = await tc.start_session(headers, start)
    await tc.post_samples(
        headers, [hr(f"hr-{i}", start + i * 30_000, 60 + i % 30) for i in range(samples)]
    )
    await tc.end_session(headers, session_id, start + 90 * MINUTE)
    await tc.settle()
    return session_id, start


def _metric_line(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} missing from /metrics")


async def test_fresh_cache_answers_ready_without_computing(tc, users):
    """A fresh cache row answers ready, byte for byte the same, and schedules nothing."""
    headers = await users.headers()
    session_id, _start = await _ended_session_with_samples(tc, headers)
    first = await tc.get(headers, session_id)
    assert first.status_code == 200 and first.json()["state"] == "ready"
    submitted = tc.coordinator.stats.submitted
    computes = await tc.computes()
    for _ in range(5):
        again = await tc.get(headers, session_id)
        assert again.status_code == 200
        assert again.content == first.content
        assert again.headers["etag"] == first.headers["etag"]
    assert tc.coordinator.stats.submitted == submitted
    assert await tc.computes() == computes


async def test_new_sample_in_window_is_stale_then_ready(tc, users):
    """One new sample in the window: stale with the previous payload, then ready at the new
    watermark; the freshness lag runs from the ingest to the save."""
    user_id, token = await users.create()
    headers = {"Authorization": f"Bearer {token}"}
    session_id, start = await _ended_session_with_samples(tc, headers)
    before = (await tc.get(headers, session_id)).json()
    assert before["state"] == "ready"
    old_watermark = before["telemetry"]["source_watermark"]

    # Another node holds the lease of the default view, so its recompute cannot finish yet.
    key = TelemetryKey(session_id, 60, Resolution.ONE_MINUTE, user_id=user_id)
    async with tc.db.write() as conn:
        await SessionTelemetryCacheRepository().take_lease(
            conn, key, owner="other-node", now_ms=tc.clock.now_ms(), lease_ms=30_000
        )
    metrics_before = (await tc.http.get("/metrics")).text
    await tc.post_samples(headers, [hr("late-1", start + 45 * MINUTE, 150.0)])
    await tc.settle()

    stale = await tc.get(headers, session_id)
    body = stale.json()
    assert stale.status_code == 200 and body["state"] == "stale"
    assert stale.headers["retry-after"] == str(body["retry_after_seconds"])
    assert "etag" not in stale.headers
    assert body["telemetry"] == before["telemetry"]
    session = (await tc.http.get(f"/api/v1/sessions/{session_id}", headers=headers)).json()
    assert session["source_watermark"] > old_watermark

    tc.clock.advance(30_001)  # the other node's lease expires: our recompute takes it over
    await tc.get(headers, session_id)
    await tc.settle()
    ready = (await tc.get(headers, session_id)).json()
    assert ready["state"] == "ready"
    assert ready["telemetry"]["source_watermark"] == session["source_watermark"]
    hr_after = ready["telemetry"]["metrics"]["heart_rate"]
    assert (
        hr_after["stats"]["count"]
        == before["telemetry"]["metrics"]["heart_rate"]["stats"]["count"] + 1
    )
    assert hr_after["stats"]["max"] == 150.0

    async with tc.db.read() as conn:
        row = await queries.row_of(conn, key)
    assert row is not None and row.stale_since_ms is None and row.lease_owner is None
    text = (await tc.http.get("/metrics")).text

    def lag(name: str) -> float:
        return _metric_line(text, name) - _metric_line(metrics_before, name)

    # the 5m view recomputed at the ingest's instant (lag 0), the 1m view 30.001 s later
    assert lag("vitalcast_freshness_lag_seconds_count") == 2
    assert abs(lag("vitalcast_freshness_lag_seconds_sum") - 30.001) < 1e-6


async def test_sample_outside_widest_window_keeps_ready_and_computes_nothing(tc, users):
    """A sample outside every window of the session changes nothing: ready, no compute."""
    headers = await users.headers()
    session_id, start = await _ended_session_with_samples(tc, headers)
    before = await tc.get(headers, session_id)
    submitted = tc.coordinator.stats.submitted
    computes = await tc.computes()
    result = await tc.post_samples(headers, [hr("far-away", start - 4 * HOUR, 70.0)])
    assert result["inserted"] == 1
    await tc.settle()
    after = await tc.get(headers, session_id)
    assert after.json()["state"] == "ready"
    assert after.content == before.content
    assert tc.coordinator.stats.submitted == submitted
    assert await tc.computes() == computes


async def test_sample_between_narrow_and_widest_window_costs_only_a_recompute(tc, users):
    """A sample outside the 60-minute window but inside the widest one recomputes once and the
    answer, apart from its watermark, is the same."""
    headers = await users.headers()
    session_id, start = await _ended_session_with_samples(tc, headers)
    before = (await tc.get(headers, session_id)).json()
    await tc.post_samples(headers, [hr("padding", start - 120 * MINUTE, 70.0)])
    await tc.settle()
    after = (await tc.get(headers, session_id)).json()
    assert after["state"] == "ready"
    assert after["telemetry"]["source_watermark"] > before["telemetry"]["source_watermark"]
    assert after["telemetry"]["metrics"] == before["telemetry"]["metrics"]


async def test_ending_a_session_turns_the_live_payload_historical(tc, users):
    """A live payload ends at now; after the session ends it reflects the end and its padding."""
    headers = await users.headers()
    now = tc.clock.now_ms()
    start = now - 30 * MINUTE
    session_id = await tc.start_session(headers, start)
    await tc.post_samples(headers, [hr(f"live-{i}", start + i * 60_000, 80.0) for i in range(30)])
    await tc.settle()
    live = (await tc.get(headers, session_id)).json()
    assert live["state"] == "ready"
    assert live["telemetry"]["live"] is True
    assert live["telemetry"]["window"]["session_end_ms"] is None
    assert live["telemetry"]["window"]["end_ms"] == now
    assert live["telemetry"]["metrics"]["heart_rate"]["phases"]["after"]["count"] == 0

    tc.clock.advance(10 * MINUTE)
    end = tc.clock.now_ms()
    await tc.post_samples(headers, [hr("after-end", end + MINUTE, 90.0)])
    await tc.end_session(headers, session_id, end)
    await tc.settle()
    ended = (await tc.get(headers, session_id)).json()
    assert ended["state"] == "ready"
    payload = ended["telemetry"]
    assert payload["live"] is False
    assert payload["window"]["session_end_ms"] == end
    assert payload["window"]["end_ms"] == end + 60 * MINUTE
    assert payload["metrics"]["heart_rate"]["phases"]["after"]["count"] == 1
    assert payload["metrics"]["heart_rate"]["phases"]["during"]["count"] == 30


async def test_ending_a_session_alone_makes_its_cache_stale(tc, users):
    """Ending a session, with no sample sent, moves its watermark: the cached live payload is
    answered stale (the previous payload, no ETag) until the recompute, whose payload is the
    ended session's."""
    user_id, token = await users.create()
    headers = {"Authorization": f"Bearer {token}"}
    start = tc.clock.now_ms() - 30 * MINUTE
    session_id = await tc.start_session(headers, start)
    await tc.post_samples(headers, [hr(f"live-{i}", start + i * MINUTE, 80.0) for i in range(30)])
    await tc.settle()
    live = await tc.get(headers, session_id)
    assert live.json()["state"] == "ready" and live.json()["telemetry"]["live"] is True
    # Another node holds the lease of the default view, so its recompute cannot finish yet.
    key = TelemetryKey(session_id, 60, Resolution.ONE_MINUTE, user_id=user_id)
    async with tc.db.write() as conn:
        await SessionTelemetryCacheRepository().take_lease(
            conn, key, owner="other-node", now_ms=tc.clock.now_ms(), lease_ms=30_000
        )

    end = tc.clock.now_ms()
    await tc.end_session(headers, session_id, end)
    await tc.settle()
    stale = await tc.get(headers, session_id)
    body = stale.json()
    assert stale.status_code == 200 and body["state"] == "stale"
    assert body["telemetry"] == live.json()["telemetry"]
    assert stale.headers["retry-after"] == str(body["retry_after_seconds"])
    assert "etag" not in stale.headers
    session = (await tc.http.get(f"/api/v1/sessions/{session_id}", headers=headers)).json()
    assert session["source_watermark"] > live.json()["telemetry"]["source_watermark"]

    tc.clock.advance(30_001)
    await tc.get(headers, session_id)
    await tc.settle()
    ready = (await tc.get(headers, session_id)).json()
    assert ready["state"] == "ready"
    assert ready["telemetry"]["source_watermark"] == session["source_watermark"]
    assert ready["telemetry"]["live"] is False
    assert ready["telemetry"]["window"]["session_end_ms"] == end
