"""POST /api/v1/samples/delete: rows in [from, to) removed, exactly the overlapping sessions'
watermarks moved through the ingest path (change log included), so their views recompute
incrementally and equal a full recompute; bad input changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from tests.lifecycle.conftest import count
from tests.properties import on_real_services
from tests.telemetry.conftest import MINUTE, TelemetryClient, hr, iso, telemetry_client
from tests.telemetry.incremental_helpers import cached_views, compute_paths, log_seqs, recompute
from tests.telemetry.test_incremental import ManualScheduler
from vitalcast.db.tables import health_samples, sessions
from vitalcast.db.tables import users as users_table
from vitalcast.telemetry.keys import ComputeOutcome, Resolution, ScheduleReason, TelemetryKey
from vitalcast.wiring import Seams

HOUR = 60 * MINUTE


@pytest.fixture
async def mtc(settings, clock) -> AsyncIterator[TelemetryClient]:
    """An app whose computes run only when the test asks the computer."""
    seams = Seams(clock=clock, scheduler_wrapper=ManualScheduler().wrap)
    async with telemetry_client(settings, clock, seams) as client:
        yield client


async def _compute(tc: TelemetryClient, key: TelemetryKey) -> ComputeOutcome:
    return await tc.parts.computer.compute(key, reason=ScheduleReason.LIVE_UPDATE)


async def _watermark(tc: TelemetryClient, session_id: str) -> int:
    async with tc.db.read() as conn:
        return int(
            await conn.scalar(
                sa.select(sessions.c.source_watermark).where(sessions.c.id == session_id)
            )
        )


async def _assert_cached_equals_full(tc: TelemetryClient, session_id: str, user_id: str) -> None:
    views = await cached_views(tc, session_id, user_id)
    assert views
    for view in views:
        full = await recompute(tc, view.key, view.computed_at_ms, None)
        assert view.payload == full.blob, view.key


async def _delete(
    tc: TelemetryClient, headers: dict[str, str], from_ms: int, to_ms: int, **extra: Any
) -> Any:
    body = {"from": iso(from_ms), "to": iso(to_ms)} | extra
    return await tc.http.post("/api/v1/samples/delete", json=body, headers=headers)


async def _two_sessions(
    tc: TelemetryClient, users: Any
) -> tuple[str, dict[str, str], str, str, int, int]:
    """A user with an old ended session (10 h ago) and a live one (started 30 min ago), one
    heart-rate sample a minute in each, both views computed."""
    user_id, token = await users.create()
    headers = {"Authorization": f"Bearer {token}"}
    now = tc.clock.now_ms()
    old_start, live_start = now - 10 * HOUR, now - 30 * MINUTE
    old = await tc.start_session(headers, old_start)
    await tc.post_samples(
        headers, [hr(f"o{i}", old_start + i * MINUTE, 70.0 + i) for i in range(30)]
    )
    await tc.end_session(headers, old, old_start + 30 * MINUTE)
    live = await tc.start_session(headers, live_start)
    await tc.post_samples(
        headers, [hr(f"l{i}", live_start + i * MINUTE + 1_000, 80.0 + i) for i in range(30)]
    )
    for sid in (old, live):
        await _compute(tc, TelemetryKey(sid, 60, Resolution.ONE_MINUTE, user_id=user_id))
    return user_id, headers, old, live, old_start, live_start


async def test_only_the_overlapping_session_moves_and_recomputes_incrementally(
    mtc: TelemetryClient, users: Any
) -> None:
    user_id, headers, old, live, _old_start, live_start = await _two_sessions(mtc, users)
    old_mark, live_mark = await _watermark(mtc, old), await _watermark(mtc, live)
    old_view = (await mtc.get(headers, old)).json()
    assert old_view["state"] == "ready"
    before = await compute_paths(mtc)

    response = await _delete(mtc, headers, live_start + 10 * MINUTE, live_start + 15 * MINUTE)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["deleted"] == 5
    assert body["change_seq"] == live_mark + 1 == await _watermark(mtc, live)
    assert await _watermark(mtc, old) == old_mark
    assert (await mtc.get(headers, old)).json() == old_view
    assert body["change_seq"] in await log_seqs(mtc, live)
    assert await count(mtc.db, health_samples) == 55
    key = TelemetryKey(live, 60, Resolution.ONE_MINUTE, user_id=user_id)
    assert await _compute(mtc, key) is ComputeOutcome.COMPUTED
    after = await compute_paths(mtc)
    assert after.get("incremental", 0) - before.get("incremental", 0) == 1
    await _assert_cached_equals_full(mtc, live, user_id)
    payload = (await mtc.get(headers, live)).json()
    assert payload["state"] == "ready"
    assert payload["telemetry"]["source_watermark"] == body["change_seq"]


async def test_a_metric_filter_removes_only_those_metrics(mtc: TelemetryClient, users: Any) -> None:
    _user_id, token = await users.create()
    headers = {"Authorization": f"Bearer {token}"}
    now = mtc.clock.now_ms()
    steps = {
        "source": "polar",
        "record_id": "s",
        "metric": "steps",
        "value": 12,
        "start": now - MINUTE,
    }
    await mtc.post_samples(headers, [hr("h", now - MINUTE, 70.0), steps])
    response = await _delete(mtc, headers, now - HOUR, now, metrics=["steps"])
    assert response.json()["deleted"] == 1
    async with mtc.db.read() as conn:
        left = (await conn.execute(sa.select(health_samples.c.metric))).scalars().all()
    assert left == ["heart_rate"]


async def test_nothing_in_range_changes_nothing(mtc: TelemetryClient, users: Any) -> None:
    _user_id, headers, old, live, old_start, _live_start = await _two_sessions(mtc, users)
    marks = [await _watermark(mtc, sid) for sid in (old, live)]
    response = await _delete(mtc, headers, old_start - 5 * HOUR, old_start - 4 * HOUR)
    assert response.json() == {"deleted": 0, "change_seq": max(marks)}
    assert [await _watermark(mtc, sid) for sid in (old, live)] == marks


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"from": "2026-03-02T08:00:00Z", "to": "2026-03-02T08:00:00Z"}, "EMPTY_RANGE"),
        ({"from": "2026-03-02T07:30:00Z", "to": "2026-03-02T07:00:00Z"}, "EMPTY_RANGE"),
        ({"from": "2026-03-02T07:00:00Z", "to": "2099-01-01T00:00:00Z"}, "FUTURE_TIMESTAMP"),
        ({"from": "1960-01-01T00:00:00Z", "to": "2026-03-02T08:00:00Z"}, "BEFORE_EPOCH"),
        (
            {"from": "2026-03-02T07:00:00Z", "to": "2026-03-02T08:00:00Z", "metrics": ["pulse"]},
            "UNKNOWN_METRIC",
        ),
        (
            {"from": "2026-03-02T07:00:00Z", "to": "2026-03-02T08:00:00Z", "metrics": []},
            "VALIDATION_ERROR",
        ),
        ({"from": "2026-03-02T07:00:00Z"}, "VALIDATION_ERROR"),
        ({"from": 1, "to": "2026-03-02T08:00:00Z"}, "VALIDATION_ERROR"),
        ({"from": "2026-03-02T07:00:00", "to": "2026-03-02T08:00:00Z"}, "VALIDATION_ERROR"),
        (
            {"from": "2026-03-02T07:00:00Z", "to": "2026-03-02T08:00:00Z", "extra": 1},
            "VALIDATION_ERROR",
        ),
    ],
)
async def test_bad_input_is_a_problem_and_removes_nothing(
    mtc: TelemetryClient, users: Any, body: dict[str, Any], code: str
) -> None:
    _uid, headers, old, live, _o, _l = await _two_sessions(mtc, users)
    marks = [await _watermark(mtc, sid) for sid in (old, live)]
    async with mtc.db.read() as conn:
        seq = await conn.scalar(sa.select(users_table.c.change_seq))
    response = await mtc.http.post("/api/v1/samples/delete", json=body, headers=headers)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code
    assert await count(mtc.db, health_samples) == 60
    assert [await _watermark(mtc, sid) for sid in (old, live)] == marks
    async with mtc.db.read() as conn:
        assert await conn.scalar(sa.select(users_table.c.change_seq)) == seq


async def test_another_users_samples_stay(mtc: TelemetryClient, users: Any) -> None:
    _a, alice = await users.create()
    _b, bob = await users.create()
    now = mtc.clock.now_ms()
    await mtc.post_samples({"Authorization": f"Bearer {alice}"}, [hr("a", now - MINUTE, 70.0)])
    response = await _delete(mtc, {"Authorization": f"Bearer {bob}"}, now - HOUR, now)
    assert response.json()["deleted"] == 0
    assert await count(mtc.db, health_samples) == 1


@on_real_services(12)
@given(
    cuts=st.lists(
        st.tuples(st.integers(-40 * MINUTE, 10 * MINUTE), st.integers(1, 20 * MINUTE)),
        min_size=1,
        max_size=3,
    ),
    end_first=st.booleans(),
)
async def test_after_any_range_deletions_cached_views_equal_full_recomputes(
    mtc: TelemetryClient, users: Any, cuts: list[tuple[int, int]], end_first: bool
) -> None:
    """Deletions at any offset around the session (before it, across its edges, inside the
    live edge), one after another, with the session live or ended: every cached view, computed
    incrementally after each, is byte for byte a full recompute."""
    user_id, token = await users.create()
    headers = {"Authorization": f"Bearer {token}"}
    mtc.clock.advance(HOUR)
    now = mtc.clock.now_ms()
    start = now - 30 * MINUTE
    session_id = await mtc.start_session(headers, start)
    await mtc.post_samples(
        headers, [hr(f"p{i}", start - 20 * MINUTE + i * 37_000, 60.0 + i % 40) for i in range(80)]
    )
    keys = [
        TelemetryKey(session_id, window, Resolution(res), user_id=user_id)
        for window, res in ((60, "1m"), (15, "5m"))
    ]
    if end_first:
        await mtc.end_session(headers, session_id, now - MINUTE)
    for key in keys:
        await _compute(mtc, key)
    for offset, length in cuts:
        response = await _delete(mtc, headers, start + offset, min(start + offset + length, now))
        assert response.status_code in (200, 422), response.text
        for key in keys:
            await _compute(mtc, key)
        await _assert_cached_equals_full(mtc, session_id, user_id)
