"""Schema 2 through the real API on a manual clock: live windows move with time (the live edge is
part of freshness), the grid is anchored at the session start, coverage is time."""

from __future__ import annotations

from typing import Any

import pytest

from tests.telemetry.conftest import MINUTE, hr

HOUR = 60 * MINUTE


async def ready_payload(tc, headers, session_id: str, **params: Any) -> dict[str, Any]:
    """GET (scheduling what it needs), let the computes run, GET again: the ready payload."""
    await tc.get(headers, session_id, **params)
    await tc.settle()
    body = (await tc.get(headers, session_id, **params)).json()
    assert body["state"] == "ready", body
    return dict(body["telemetry"])


def to_next_bucket(tc, start_ms: int, bucket_ms: int = MINUTE, past_ms: int = 250) -> None:
    """Move the clock just past the next bucket boundary of the session's grid."""
    now = tc.clock.now_ms()
    tc.clock.advance(bucket_ms - (now - start_ms) % bucket_ms + past_ms)


async def test_live_payload_is_fresh_within_its_bucket_and_stale_after(tc, users):
    """Within the bucket of its compute a live payload is ready (304 on its ETag); once the
    clock crosses the boundary the same GET is stale with the last payload, and the recompute
    ends at the new now under a new ETag, at the same watermark."""
    headers = await users.headers()
    start = tc.clock.now_ms() - 20 * MINUTE
    session_id = await tc.start_session(headers, start)
    await tc.post_samples(headers, [hr(f"h{i}", start + i * 30_000, 70.0) for i in range(40)])
    first = await ready_payload(tc, headers, session_id)
    etag = (await tc.get(headers, session_id)).headers["etag"]
    assert first["window"]["end_ms"] == tc.clock.now_ms()

    tc.clock.advance(MINUTE - 1 - (tc.clock.now_ms() - start) % MINUTE)  # last ms of the bucket
    still = await tc.get(headers, session_id)
    assert still.json()["state"] == "ready" and still.headers["etag"] == etag
    cached = await tc.http.get(
        f"/api/v1/sessions/{session_id}/telemetry", headers={**headers, "If-None-Match": etag}
    )
    assert cached.status_code == 304

    tc.clock.advance(1)  # the next bucket starts
    stale = (await tc.get(headers, session_id)).json()
    assert stale["state"] == "stale" and stale["telemetry"] == first
    await tc.settle()
    moved = await tc.get(headers, session_id)
    body = moved.json()
    assert body["state"] == "ready" and moved.headers["etag"] != etag
    assert body["telemetry"]["window"]["end_ms"] == tc.clock.now_ms()
    assert body["telemetry"]["source_watermark"] == first["source_watermark"]


async def test_trailing_gap_shows_within_one_bucket_after_the_threshold(tc, users):
    """The watch stops: no trailing gap while the silence is within heart rate's 2-minute
    threshold; at the first bucket boundary after it the gap is there and ends at the window's
    end (the live edge); it keeps growing with every bucket."""
    headers = await users.headers()
    start = tc.clock.now_ms() - 10 * MINUTE
    session_id = await tc.start_session(headers, start)
    last = start + 10 * MINUTE - 20_000
    await tc.post_samples(headers, [hr(f"h{i}", last - i * 20_000, 72.0) for i in range(40)])
    seen: list[int | None] = []
    while tc.clock.now_ms() < last + 5 * MINUTE:
        payload = await ready_payload(tc, headers, session_id)
        window_end = payload["window"]["end_ms"]
        trailing = [g for g in payload["metrics"]["heart_rate"]["gaps"] if g["start_ms"] == last]
        if window_end - last > 2 * MINUTE:
            assert trailing == [{"start_ms": last, "end_ms": window_end}], window_end - last
            seen.append(window_end)
        else:
            assert trailing == []
        to_next_bucket(tc, start)
    assert len(seen) == 3 and seen[0] - last <= 2 * MINUTE + MINUTE


async def test_sample_sent_ahead_appears_once_its_time_has_passed(tc, users):
    """Heart rate at now + 2 min (150 bpm) is accepted and moves the watermark, but a live
    window ends at now: it is not in the payload until its time has come, then it is."""
    headers = await users.headers()
    now = tc.clock.now_ms()
    start = now - 15 * MINUTE
    session_id = await tc.start_session(headers, start)
    await tc.post_samples(headers, [hr(f"h{i}", now - i * 30_000, 75.0) for i in range(20)])
    await tc.post_samples(headers, [hr("ahead", now + 2 * MINUTE, 150.0)])
    before = await ready_payload(tc, headers, session_id)
    assert before["metrics"]["heart_rate"]["stats"]["max"] == 75.0

    tc.clock.advance(2 * MINUTE + 1)
    to_next_bucket(tc, start)
    after = await ready_payload(tc, headers, session_id)
    assert after["source_watermark"] == before["source_watermark"]
    assert after["metrics"]["heart_rate"]["stats"]["max"] == 150.0


async def test_ended_session_does_not_move_with_time(tc, users):
    """An ended session's window is fixed: hours later the same payload is still ready."""
    headers = await users.headers()
    start = tc.clock.now_ms() - 3 * HOUR
    session_id = await tc.start_session(headers, start)
    await tc.post_samples(headers, [hr(f"h{i}", start + i * 60_000, 70.0) for i in range(30)])
    await tc.end_session(headers, session_id, start + 30 * MINUTE)
    payload = await ready_payload(tc, headers, session_id)
    computes = await tc.computes()
    tc.clock.advance(5 * HOUR)
    again = (await tc.get(headers, session_id)).json()
    assert again["state"] == "ready" and again["telemetry"] == payload
    assert await tc.computes() == computes


@pytest.mark.parametrize(("window_minutes", "resolution"), [(17, "5m"), (17, "1m"), (61, "5m")])
async def test_session_start_is_a_bucket_edge_of_every_window(
    tc, users, window_minutes, resolution
):
    """The pad is rounded up to whole buckets, so the window starts on the session's grid and
    every bucket lies wholly before or after the session start."""
    headers = await users.headers()
    start = tc.clock.now_ms() - 4 * HOUR + 7_123
    session_id = await tc.start_session(headers, start)
    samples = [hr(f"h{i}", start - 30 * MINUTE + i * 40_000, 60.0 + i % 7) for i in range(90)]
    await tc.post_samples(headers, samples)
    await tc.end_session(headers, session_id, start + 20 * MINUTE)
    params = {"window_minutes": window_minutes, "resolution": resolution}
    payload = await ready_payload(tc, headers, session_id, **params)
    bucket = payload["bucket_ms"]
    pad = start - payload["window"]["start_ms"]
    assert pad % bucket == 0 and window_minutes * MINUTE <= pad < window_minutes * MINUTE + bucket
    assert payload["window"]["end_ms"] == start + 20 * MINUTE + pad
    assert all((t - start) % bucket == 0 for t in payload["metrics"]["heart_rate"]["t"])


def spo2(record_id: str, at_ms: int, value: float = 97.0) -> dict[str, Any]:
    return {**hr(record_id, at_ms, value), "metric": "blood_oxygen", "unit": "%"}


async def test_spo2_coverage_is_time_not_buckets(tc, users):
    """SpO2 every 5 minutes (its catalog cadence, 10-minute threshold) at 1m resolution is fully
    covered although 4 of 5 buckets are empty; a 30-minute dropout inside the 60-minute session
    covers half of it, within one sample interval. Steps carry no coverage."""
    headers = await users.headers()
    start = tc.clock.now_ms() - 4 * HOUR
    full = await tc.start_session(headers, start)
    cadence = [start - 60 * MINUTE + k * 5 * MINUTE for k in range(37)]
    await tc.post_samples(headers, [spo2(f"a{k}", t) for k, t in enumerate(cadence)])
    steps = {**hr("steps-1", start + MINUTE, 40.0), "metric": "steps", "unit": "count"}
    await tc.post_samples(headers, [steps])
    await tc.end_session(headers, full, start + 60 * MINUTE)
    payload = await ready_payload(tc, headers, full, resolution="1m", metrics="all")
    phases = payload["metrics"]["blood_oxygen"]["phases"]
    assert [phases[p]["coverage"] for p in ("before", "during", "after")] == [1.0, 1.0, 1.0]
    assert all("coverage" not in p for p in payload["metrics"]["steps"]["phases"].values())

    _user, token = await users.create()
    other = {"Authorization": f"Bearer {token}"}
    dropped = await tc.start_session(other, start)
    kept = [t for t in cadence if not start + 15 * MINUTE < t < start + 45 * MINUTE]
    await tc.post_samples(other, [spo2(f"b{k}", t) for k, t in enumerate(kept)])
    await tc.end_session(other, dropped, start + 60 * MINUTE)
    payload = await ready_payload(tc, other, dropped, resolution="1m")
    during = payload["metrics"]["blood_oxygen"]["phases"]["during"]["coverage"]
    assert during == pytest.approx(0.5, abs=5 / 60)
