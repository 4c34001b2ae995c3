"""GET /api/v1/sessions/{id}/telemetry: status code, headers and body of every state, ETag and
If-None-Match, metric selection, input errors and ownership."""

from __future__ import annotations

import json
import uuid

import pytest
import sqlalchemy as sa

from tests.telemetry.conftest import MINUTE, hr
from vitalcast.db.tables import telemetry_cache
from vitalcast.telemetry.keys import SCHEMA_VERSION, Resolution, TelemetryKey
from vitalcast.telemetry.store import queries
from vitalcast.telemetry.store.leases import SessionTelemetryCacheRepository

HOUR = 60 * MINUTE


def sample(metric: str, record_id: str, start_ms: int, value: float) -> dict:
    return {
        "source": "polar",
        "record_id": record_id,
        "metric": metric,
        "value": value,
        "start": start_ms,
    }


async def _ended_session(tc, headers, *, with_samples: bool = True) -> tuple[str, int]:
    start = tc.clock.now_ms() - 4 * HOUR
    session_id = await tc.start_session(headers, start)
    if with_samples:
        await tc.post_samples(
            headers,
            [hr(f"hr-{i}", start + i * MINUTE, 70.0 + i % 5) for i in range(60)]
            + [sample("blood_oxygen", f"o2-{i}", start + i * 5 * MINUTE, 97.0) for i in range(12)]
            + [sample("steps", f"st-{i}", start + i * MINUTE, 12.0) for i in range(30)],
        )
    await tc.end_session(headers, session_id, start + HOUR)
    await tc.settle()
    return session_id, start


async def _rename(tc, old: str, new: str) -> None:
    async with tc.db.write() as conn:
        await conn.execute(sa.text(f"ALTER TABLE {old} RENAME TO {new}"))


async def test_computing_is_202_with_retry_after_and_no_payload(tc, users):
    """Nothing cached yet: 202, Retry-After equal to the body's, no payload, no ETag."""
    headers = await users.headers()
    session_id, _start = await _ended_session(tc, headers)
    response = await tc.get(headers, session_id, window_minutes=45)
    assert response.status_code == 202
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"state": "computing", "retry_after_seconds": 1, "telemetry": None}
    assert response.headers["retry-after"] == "1"
    assert "etag" not in response.headers


async def test_ready_has_etag_and_if_none_match_gives_304(tc, users):
    """Ready: 200 with an ETag per metric selection; a matching If-None-Match is a bodiless 304."""
    headers = await users.headers()
    session_id, _start = await _ended_session(tc, headers)
    ready = await tc.get(headers, session_id)
    body = ready.json()
    assert ready.status_code == 200 and body["state"] == "ready"
    assert set(body) == {"state", "telemetry"}
    assert "retry-after" not in ready.headers
    etag = ready.headers["etag"]
    payload = body["telemetry"]
    assert set(payload) == {
        "session_id",
        "schema_version",
        "compute_version",
        "computed_at_ms",
        "source_watermark",
        "live",
        "resolution",
        "bucket_ms",
        "window",
        "metrics",
    }
    assert payload["session_id"] == session_id and payload["schema_version"] == SCHEMA_VERSION

    cached = await tc.http.get(
        f"/api/v1/sessions/{session_id}/telemetry", headers={**headers, "If-None-Match": etag}
    )
    assert cached.status_code == 304 and cached.content == b""
    assert cached.headers["etag"] == etag
    listed = await tc.http.get(
        f"/api/v1/sessions/{session_id}/telemetry",
        headers={**headers, "If-None-Match": f'"other", W/{etag}'},
    )
    assert listed.status_code == 304

    every = await tc.get(headers, session_id, metrics="all")
    assert every.headers["etag"] != etag
    mismatch = await tc.http.get(
        f"/api/v1/sessions/{session_id}/telemetry",
        params={"metrics": "all"},
        headers={**headers, "If-None-Match": etag},
    )
    assert mismatch.status_code == 200 and mismatch.content == every.content


async def test_etag_follows_the_watermark_and_an_old_one_never_gets_304(tc, users):
    """Once a sample moves the watermark, the old ETag gets no 304: not while the answer is stale
    (200 with the previous payload and no ETag), not once it is ready again (200, the new body,
    a new ETag); the new ETag gets the 304."""
    user_id, token = await users.create()
    headers = {"Authorization": f"Bearer {token}"}
    session_id, start = await _ended_session(tc, headers)
    first = await tc.get(headers, session_id)
    old_etag = first.headers["etag"]
    key = TelemetryKey(session_id, 60, Resolution.ONE_MINUTE, user_id=user_id)
    async with tc.db.write() as conn:
        await SessionTelemetryCacheRepository().take_lease(
            conn, key, owner="other-node", now_ms=tc.clock.now_ms(), lease_ms=30_000
        )
    await tc.post_samples(headers, [hr("late", start + 7 * MINUTE, 120.0)])
    await tc.settle()

    def revalidate(etag: str):
        return tc.http.get(
            f"/api/v1/sessions/{session_id}/telemetry", headers={**headers, "If-None-Match": etag}
        )

    stale = await revalidate(old_etag)
    assert stale.status_code == 200 and stale.json()["state"] == "stale"
    assert "etag" not in stale.headers

    tc.clock.advance(30_001)  # the other node's lease lapses; the next GET recomputes
    await tc.get(headers, session_id)
    await tc.settle()
    fresh = await revalidate(old_etag)
    body = fresh.json()
    assert fresh.status_code == 200 and body["state"] == "ready"
    assert body["telemetry"]["source_watermark"] > first.json()["telemetry"]["source_watermark"]
    assert body["telemetry"]["metrics"]["heart_rate"]["stats"]["max"] == 120.0
    new_etag = fresh.headers["etag"]
    assert new_etag != old_etag
    again = await revalidate(new_etag)
    assert again.status_code == 304 and again.headers["etag"] == new_etag


async def test_stale_is_200_with_retry_after_and_the_previous_payload(tc, users):
    """Stale: 200, Retry-After equal to the body's, the previous payload, no ETag."""
    user_id, token = await users.create()
    headers = {"Authorization": f"Bearer {token}"}
    session_id, start = await _ended_session(tc, headers)
    before = (await tc.get(headers, session_id)).json()
    key = TelemetryKey(session_id, 60, Resolution.ONE_MINUTE, user_id=user_id)
    async with tc.db.write() as conn:
        await SessionTelemetryCacheRepository().take_lease(
            conn, key, owner="other-node", now_ms=tc.clock.now_ms(), lease_ms=60_000
        )
    await tc.post_samples(headers, [hr("extra", start + 5 * MINUTE, 99.0)])
    await tc.settle()
    stale = await tc.get(headers, session_id)
    body = stale.json()
    assert stale.status_code == 200
    assert set(body) == {"state", "retry_after_seconds", "telemetry"}
    assert body["state"] == "stale" and body["telemetry"] == before["telemetry"]
    assert stale.headers["retry-after"] == str(body["retry_after_seconds"]) == "1"
    assert "etag" not in stale.headers


async def test_no_data_is_200_with_the_empty_payload_and_its_window(tc, users):
    """A window without samples: 200 no_data, the payload with its window and no metrics."""
    headers = await users.headers()
    session_id, start = await _ended_session(tc, headers, with_samples=False)
    response = await tc.get(headers, session_id)
    body = response.json()
    assert response.status_code == 200
    assert body["state"] == "no_data" and "retry-after" not in response.headers
    assert response.headers["etag"]
    payload = body["telemetry"]
    assert payload["metrics"] == {}
    assert payload["window"] == {
        "start_ms": start - HOUR,
        "end_ms": start + 2 * HOUR,
        "session_start_ms": start,
        "session_end_ms": start + HOUR,
        "window_minutes": 60,
    }


async def test_failed_without_payload_carries_the_error_code(tc, users):
    """A first compute that fails: 200 failed, no payload, error.code and Retry-After."""
    headers = await users.headers()
    session_id, _start = await _ended_session(tc, headers)
    await _rename(tc, "health_samples", "health_samples_gone")
    try:
        assert (await tc.get(headers, session_id, window_minutes=20)).status_code == 202
        await tc.settle()
        response = await tc.get(headers, session_id, window_minutes=20)
    finally:
        await _rename(tc, "health_samples_gone", "health_samples")
    body = response.json()
    assert response.status_code == 200
    assert body["state"] == "failed" and body["telemetry"] is None
    assert body["error"]["code"] == "COMPUTE_FAILED"
    assert response.headers["retry-after"] == str(body["retry_after_seconds"])


async def test_unreadable_cache_is_failed_with_freshness_unknown(tc, users):
    """When the cache cannot be read, the answer is failed DATABASE_UNAVAILABLE, not a 500."""
    headers = await users.headers()
    session_id, _start = await _ended_session(tc, headers)
    await _rename(tc, "telemetry_cache", "telemetry_cache_gone")
    try:
        response = await tc.get(headers, session_id)
    finally:
        await _rename(tc, "telemetry_cache_gone", "telemetry_cache")
    body = response.json()
    assert response.status_code == 200
    assert body["state"] == "failed" and body["telemetry"] is None
    assert body["error"]["code"] == "DATABASE_UNAVAILABLE"
    assert response.headers["retry-after"] == str(body["retry_after_seconds"]) == "5"
    assert (await tc.get(headers, session_id)).json()["state"] == "ready"


async def test_metric_selection_default_all_and_list(tc, users):
    """No filter gives the catalog defaults that have data; all adds the rest; a list gives
    exactly those, in catalog order."""
    headers = await users.headers()
    session_id, _start = await _ended_session(tc, headers)
    default = (await tc.get(headers, session_id)).json()["telemetry"]["metrics"]
    assert list(default) == ["heart_rate", "blood_oxygen"]
    every = (await tc.get(headers, session_id, metrics="all")).json()["telemetry"]["metrics"]
    assert list(every) == ["heart_rate", "blood_oxygen", "steps"]
    assert every["steps"]["kind"] == "cumulative" and "mean" not in every["steps"]
    assert every["steps"]["stats"] == {"sum": 360.0, "count": 30}
    chosen = await tc.get(headers, session_id, metrics="steps, heart_rate")
    assert list(chosen.json()["telemetry"]["metrics"]) == ["heart_rate", "steps"]
    none_with_data = await tc.get(headers, session_id, metrics="skin_temperature")
    assert none_with_data.json()["state"] == "ready"
    assert none_with_data.json()["telemetry"]["metrics"] == {}


async def test_cache_hit_is_the_stored_bytes_joined(tc, users):
    """A filtered cache hit is the stored head and metric fragments joined, byte for byte: each
    piece of the answer stands verbatim in the stored row, and the answer parses to the full
    payload restricted to the chosen metrics (read with json, not with the packing code)."""
    user_id, token = await users.create()
    headers = {"Authorization": f"Bearer {token}"}
    session_id, _start = await _ended_session(tc, headers)
    every = json.loads((await tc.get(headers, session_id, metrics="all")).content)
    response = await tc.get(headers, session_id, metrics="steps,heart_rate")
    async with tc.db.read() as conn:
        row = await queries.row_of(
            conn, TelemetryKey(session_id, 60, Resolution.ONE_MINUTE, user_id=user_id)
        )

    metrics = every["telemetry"]["metrics"]
    assert json.loads(response.content) == {
        "state": "ready",
        "telemetry": every["telemetry"]
        | {"metrics": {"heart_rate": metrics["heart_rate"], "steps": metrics["steps"]}},
    }
    prefix, suffix = b'{"state":"ready","telemetry":', b"}}}"
    assert response.content.startswith(prefix) and response.content.endswith(suffix)
    head, marker, fragments = response.content[len(prefix) : -len(suffix)].partition(b'"metrics":{')
    heart_rate, comma, steps = fragments.partition(b',"steps":')
    for piece in (head + marker, heart_rate, comma[1:] + steps):
        assert piece in row.payload, piece[:80]


async def test_input_errors_are_422_problems(tc, users):
    """Unknown metric, window outside 15…180 and an unknown resolution are 422 with codes."""
    headers = await users.headers()
    session_id, _start = await _ended_session(tc, headers)
    for params, code in [
        ({"metrics": "heart_rate,pulse"}, "UNKNOWN_METRIC"),
        ({"window_minutes": 14}, "WINDOW_OUT_OF_RANGE"),
        ({"window_minutes": 181}, "WINDOW_OUT_OF_RANGE"),
        ({"resolution": "2m"}, "INVALID_RESOLUTION"),
        ({"window_minutes": "sixty"}, "VALIDATION_ERROR"),
    ]:
        response = await tc.get(headers, session_id, **params)
        assert response.status_code == 422, params
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == code, params


async def test_someone_elses_or_unknown_session_is_404(tc, users):
    """Another user's session and an unknown id are both 404 SESSION_NOT_FOUND; no token is 401."""
    owner = await users.headers()
    stranger = await users.headers()
    session_id, _start = await _ended_session(tc, owner)
    for headers, sid in [(stranger, session_id), (owner, str(uuid.uuid4()))]:
        response = await tc.get(headers, sid)
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "SESSION_NOT_FOUND"
    assert (await tc.http.get(f"/api/v1/sessions/{session_id}/telemetry")).status_code == 401


async def _cached_resolutions(tc, session_id: str) -> set[str]:
    async with tc.db.read() as conn:
        rows = await conn.execute(
            sa.select(telemetry_cache.c.resolution).where(
                telemetry_cache.c.session_id == session_id,
                telemetry_cache.c.window_minutes == 60,
                telemetry_cache.c.payload.is_not(None),
            )
        )
        return {row[0] for row in rows}


@pytest.mark.parametrize(
    ("span_ms", "expected", "bucket_ms"),
    [(6 * HOUR, "1m", MINUTE), (6 * HOUR + 1, "5m", 5 * MINUTE)],
    ids=["exactly-6h", "6h-and-1ms"],
)
async def test_auto_resolution_is_1m_up_to_a_six_hour_window(
    tc, users, span_ms, expected, bucket_ms
):
    """resolution=auto answers 1m for a window of exactly 6 h and 5m one millisecond beyond, for
    an ended session (window = duration + 2 × 60 min) and a live one (window = now − start +
    60 min). Both places that apply the rule agree: the live trigger's compute (Python) and the
    cached read (SQL), which must pick the right one of two cached rows."""
    headers = await users.headers()
    now = tc.clock.now_ms()
    ended_start = now - 12 * HOUR
    ended = await tc.start_session(headers, ended_start)
    await tc.post_samples(headers, [hr(f"e{i}", ended_start + i * MINUTE, 70.0) for i in range(30)])
    await tc.end_session(headers, ended, ended_start + span_ms - 2 * HOUR)
    live_start = now - (span_ms - HOUR)
    live = await tc.start_session(headers, live_start)
    await tc.post_samples(headers, [hr(f"l{i}", live_start + i * MINUTE, 80.0) for i in range(30)])
    await tc.settle()
    assert await _cached_resolutions(tc, live) == {expected}

    for session_id in (ended, live):
        for resolution in ("1m", "5m"):
            await tc.get(headers, session_id, resolution=resolution)
        await tc.settle()
        assert await _cached_resolutions(tc, session_id) == {"1m", "5m"}
        answer = await tc.get(headers, session_id, resolution="auto")
        assert answer.status_code == 200 and answer.json()["state"] == "ready"
        payload = answer.json()["telemetry"]
        assert (payload["resolution"], payload["bucket_ms"]) == (expected, bucket_ms)
        assert payload["window"]["end_ms"] - payload["window"]["start_ms"] == span_ms
        assert (await tc.get(headers, session_id)).content == answer.content
