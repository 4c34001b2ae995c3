"""GET /api/v1/insights: a metric across the caller's completed sessions, from cached payloads;
what is missing is computed through the coordinator, never beyond its bound, and answers
``computing`` meanwhile."""

from __future__ import annotations

import statistics
from typing import Any

import pytest

from tests.telemetry.conftest import MINUTE, hr, telemetry_client
from vitalcast.settings import Settings
from vitalcast.wiring import Seams

HOUR = 60 * MINUTE


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The default coordinator bound (3 running, 50 waiting); rate limits out of the way."""
    return settings.model_copy(
        update={
            "max_concurrent_computes": 3,
            "max_pending_computes": 50,
            "rate_limit_telemetry": "1000000/minute",
            "rate_limit_ingest": "1000000/minute",
        }
    )


async def completed_sessions(tc, user_id: str, headers: dict[str, str], count: int) -> list[str]:
    """``count`` completed 30-minute sessions, newest first: heart rate 60 for the hour before,
    60 + 2·i during session i (i = 0 is the newest), 60 after; every payload precomputed."""
    now = tc.clock.now_ms()
    ids: list[str] = []
    samples: list[dict[str, Any]] = []
    for index in range(count):
        start = now - (index + 1) * 6 * HOUR
        session, _created = await tc.parts.sessions.create(
            user_id, client_session_id=None, start_ms=start, notes=None
        )
        await tc.parts.sessions.end(user_id, session.id, end_ms=start + 30 * MINUTE)
        ids.append(session.id)
        for minute in range(-60, 90):
            value = 60.0 + 2 * index if 0 <= minute < 30 else 60.0
            samples.append(hr(f"s{index}-{minute}", start + minute * MINUTE + 30_000, value))
    await tc.post_samples(headers, samples)
    await tc.settle()
    return ids


async def insights(tc, headers: dict[str, str], **params: Any) -> Any:
    return await tc.http.get("/api/v1/insights", params=params, headers=headers)


async def test_thirty_cold_sessions_compute_within_the_bound_and_answer_computing(tc, users):
    """30 completed sessions with nothing cached: the first answer lists all 30 as computing
    (Retry-After as in the body); the coordinator never runs more than 3 at once and computes
    each view exactly once; then every session is ready with the insights its telemetry GET
    shows, and the newest one's place is the median and mid-rank percentile of the others."""
    user_id, token = await users.create()
    headers = {"Authorization": f"Bearer {token}"}
    ids = await completed_sessions(tc, user_id, headers, 30)
    await tc.exec("DELETE FROM telemetry_cache")
    before = tc.coordinator.stats

    first = await insights(tc, headers, metric="heart_rate", last=30)
    assert first.status_code == 200
    body = first.json()
    assert [s["session_id"] for s in body["sessions"]] == ids
    assert {s["state"] for s in body["sessions"]} == {"computing"}
    assert all(s["insights"] is None and s["value"] is None for s in body["sessions"])
    assert body["complete"] is False and body["place"] is None
    assert first.headers["retry-after"] == str(body["retry_after_seconds"]) == "1"

    await tc.settle()
    stats = tc.coordinator.stats
    assert stats.peak_inflight == 3
    assert stats.completed - before.completed == 30
    assert stats.shed == before.shed

    ready = await insights(tc, headers, metric="heart_rate", last=30)
    body = ready.json()
    assert body["complete"] is True and body["retry_after_seconds"] is None
    assert "retry-after" not in ready.headers
    assert {s["state"] for s in body["sessions"]} == {"ready"}
    for line, session_id in zip(body["sessions"], ids, strict=True):
        telemetry = (await tc.get(headers, session_id)).json()["telemetry"]
        assert line["insights"] == telemetry["metrics"]["heart_rate"]["insights"]
        assert line["value"] == line["insights"]["delta"]
    deltas = [line["value"] for line in body["sessions"]]
    assert deltas == [2.0 * i for i in range(30)]
    assert body["place"] == {
        "session_id": ids[0],
        "value": 0.0,
        "median": statistics.median(deltas[1:]),
        "percentile": 0.0,
        "compared_with": 29,
    }
    assert tc.coordinator.stats.completed == stats.completed


async def test_a_full_bound_stops_scheduling_and_retries_finish_the_rest(settings, clock, users):
    """With one compute running and two waiting at most, one request schedules until the first
    refusal and answers computing for everything; clients following Retry-After get every
    session ready, each computed once, never more than one at a time."""
    tight = settings.model_copy(update={"max_concurrent_computes": 1, "max_pending_computes": 2})
    async with telemetry_client(tight, clock, Seams(clock=clock)) as tc:
        await _bound_full(tc, users)


async def _bound_full(tc, users) -> None:
    user_id, token = await users.create()
    headers = {"Authorization": f"Bearer {token}"}
    ids = await completed_sessions(tc, user_id, headers, 12)
    await tc.exec("DELETE FROM telemetry_cache")
    coordinator = tc.coordinator
    before = coordinator.stats

    answer = (await insights(tc, headers, last=12)).json()
    assert {s["state"] for s in answer["sessions"]} == {"computing"}
    after_first = coordinator.stats
    # 3 accepted (1 running, 2 waiting), the 4th refused, and nothing asked for after it
    assert after_first.submitted - before.submitted == 4
    assert after_first.shed - before.shed == 1
    assert answer["retry_after_seconds"] == 1

    rounds = 0
    while not answer["complete"]:
        rounds += 1
        assert rounds <= 12, "insights never completed"
        await tc.settle()
        answer = (await insights(tc, headers, last=12)).json()
    assert [s["session_id"] for s in answer["sessions"]] == ids
    assert coordinator.stats.completed - before.completed == 12
    assert coordinator.stats.peak_inflight == 1


async def test_only_the_callers_completed_sessions_are_listed(tc, users):
    """Another user's sessions, cancelled and live ones are never listed; a user without
    sessions gets an empty, complete answer."""
    alice_id, alice_token = await users.create()
    alice = {"Authorization": f"Bearer {alice_token}"}
    mine = await completed_sessions(tc, alice_id, alice, 2)
    await tc.parts.sessions.create(
        alice_id, client_session_id=None, start_ms=tc.clock.now_ms() - HOUR, notes=None
    )
    cancelled, _ = await tc.parts.sessions.create(
        alice_id, client_session_id=None, start_ms=tc.clock.now_ms() - 2 * HOUR, notes=None
    )
    await tc.parts.sessions.cancel(alice_id, cancelled.id)
    listed = (await insights(tc, alice)).json()
    assert [s["session_id"] for s in listed["sessions"]] == mine

    bob = await users.headers()
    empty = (await insights(tc, bob, metric="heart_rate")).json()
    assert empty["sessions"] == [] and empty["place"] is None and empty["complete"] is True


async def test_a_cumulative_metric_compares_during_totals(tc, users):
    """Steps compare by the during total; a session without steps has no value."""
    user_id, token = await users.create()
    headers = {"Authorization": f"Bearer {token}"}
    ids = await completed_sessions(tc, user_id, headers, 3)
    now = tc.clock.now_ms()
    steps = [
        {"source": "polar", "record_id": f"st{i}-{m}", "metric": "steps", "value": 10.0 * (i + 1),
         "start": now - (i + 1) * 6 * HOUR + m * MINUTE}
        for i in (0, 2)
        for m in range(30)
    ]  # fmt: skip
    await tc.post_samples(headers, steps)
    await tc.settle()
    body = (await insights(tc, headers, metric="steps", last=3)).json()
    assert body["compared"] == "during_total" and body["kind"] == "cumulative"
    assert [s["value"] for s in body["sessions"]] == [300.0, None, 900.0]
    assert body["sessions"][1]["state"] == "ready" and body["sessions"][1]["insights"] is None
    assert body["place"] == {
        "session_id": ids[0],
        "value": 300.0,
        "median": 900.0,
        "percentile": 0.0,
        "compared_with": 1,
    }


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"metric": "glucose"}, 422, "UNKNOWN_METRIC"),
        ({"last": 0}, 422, "VALIDATION_ERROR"),
        ({"last": 101}, 422, "VALIDATION_ERROR"),
        ({"window_minutes": 10}, 422, "WINDOW_OUT_OF_RANGE"),
    ],
)
async def test_bad_input_is_a_problem(tc, users, params, status, code):
    """Unknown metrics, counts and windows out of range are problem+json with a stable code."""
    response = await insights(tc, await users.headers(), **params)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code


async def test_without_a_token_it_is_401(tc):
    response = await tc.http.get("/api/v1/insights")
    assert response.status_code == 401 and response.json()["code"] == "UNAUTHENTICATED"
