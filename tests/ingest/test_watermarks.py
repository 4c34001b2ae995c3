"""Watermarks: exactly the sessions whose widest window holds a changed time move, once per change."""

from __future__ import annotations

from tests.ingest.helpers import MINUTE_MS, hr, iso, now_ms


async def _session(client, headers, start_ms: int, end_ms: int | None = None) -> str:
    body = (
        await client.post("/api/v1/sessions", json={"started_at": iso(start_ms)}, headers=headers)
    ).json()
    if end_ms is not None:
        await client.post(
            f"/api/v1/sessions/{body['id']}/end", json={"ended_at": iso(end_ms)}, headers=headers
        )
    return body["id"]


async def _watermark(client, headers, session_id: str) -> int:
    return (await client.get(f"/api/v1/sessions/{session_id}", headers=headers)).json()[
        "source_watermark"
    ]


async def _post(client, headers, samples=(), deleted=()):
    response = await client.post(
        "/api/v1/samples",
        json={"samples": list(samples), "deleted": list(deleted)},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    return response.json()


async def test_sample_bumps_only_the_session_whose_window_holds_it(client, users):
    """A sample inside A's widest window and outside B's moves A's watermark only."""
    headers = await users.headers()
    t0 = now_ms() - 48 * 60 * MINUTE_MS
    a = await _session(client, headers, t0, t0 + 60 * MINUTE_MS)
    b = await _session(client, headers, t0 + 24 * 60 * MINUTE_MS, t0 + 25 * 60 * MINUTE_MS)
    a0, b0 = await _watermark(client, headers, a), await _watermark(client, headers, b)
    result = await _post(client, headers, [hr("r1", t0 + 10 * MINUTE_MS)])
    assert await _watermark(client, headers, a) == result["change_seq"] > a0
    assert await _watermark(client, headers, b) == b0


async def test_identical_resend_bumps_nothing(client, users):
    """Re-sending the same sample is `unchanged` and moves neither change_seq nor watermarks."""
    headers = await users.headers()
    t0 = now_ms() - 5 * 60 * MINUTE_MS
    a = await _session(client, headers, t0, t0 + 60 * MINUTE_MS)
    first = await _post(client, headers, [hr("r1", t0 + MINUTE_MS)])
    wm = await _watermark(client, headers, a)
    again = await _post(client, headers, [hr("r1", t0 + MINUTE_MS)])
    assert again["unchanged"] == 1 and again["inserted"] == again["updated"] == 0
    assert again["change_seq"] == first["change_seq"]
    assert await _watermark(client, headers, a) == wm


async def test_moved_sample_bumps_sessions_at_old_and_new_time(client, users):
    """Moving a sample in time stales the session around its old time and the one around its new."""
    headers = await users.headers()
    t0 = now_ms() - 72 * 60 * MINUTE_MS
    a = await _session(client, headers, t0, t0 + 60 * MINUTE_MS)
    b = await _session(client, headers, t0 + 24 * 60 * MINUTE_MS, t0 + 25 * 60 * MINUTE_MS)
    c = await _session(client, headers, t0 + 48 * 60 * MINUTE_MS, t0 + 49 * 60 * MINUTE_MS)
    await _post(client, headers, [hr("r1", t0 + 5 * MINUTE_MS)])
    c0 = await _watermark(client, headers, c)
    moved = await _post(client, headers, [hr("r1", t0 + 24 * 60 * MINUTE_MS + 5 * MINUTE_MS)])
    assert moved["updated"] == 1
    assert await _watermark(client, headers, a) == moved["change_seq"]
    assert await _watermark(client, headers, b) == moved["change_seq"]
    assert await _watermark(client, headers, c) == c0


async def test_deletion_bumps_the_session_around_the_old_time(client, users):
    """Deleting a sample stales the session that showed it; deleting it again changes nothing."""
    headers = await users.headers()
    t0 = now_ms() - 5 * 60 * MINUTE_MS
    a = await _session(client, headers, t0, t0 + 60 * MINUTE_MS)
    await _post(client, headers, [hr("r1", t0 + MINUTE_MS)])
    gone = await _post(client, headers, deleted=[{"source": "healthkit", "record_id": "r1"}])
    assert gone["deleted"] == 1
    assert await _watermark(client, headers, a) == gone["change_seq"]
    again = await _post(client, headers, deleted=[{"source": "healthkit", "record_id": "r1"}])
    assert again["deleted"] == 0 and again["change_seq"] == gone["change_seq"]
    revived = await _post(client, headers, [hr("r1", t0 + MINUTE_MS)])
    assert revived["updated"] == 1 and revived["change_seq"] == gone["change_seq"] + 1


async def test_a_mixed_batch_counts_each_outcome_and_moves_the_sessions_at_every_changed_time(
    client, users
):
    """One batch with a new sample, a changed one, an unchanged one and a deletion counts each
    once, moves change_seq once, and moves exactly the sessions whose windows hold the new
    sample's time, the changed sample's old and new times or the deleted one's time (on
    PostgreSQL the new samples go in first and the rest is looked up after)."""
    headers = await users.headers()
    t0 = now_ms() - 5 * 24 * 60 * MINUTE_MS
    day = 24 * 60 * MINUTE_MS
    sessions = [
        await _session(client, headers, t0 + i * day, t0 + i * day + 60 * MINUTE_MS)
        for i in range(5)
    ]
    at = [t0 + i * day + 5 * MINUTE_MS for i in range(5)]
    await _post(client, headers, [hr("kept", at[0]), hr("moved", at[1]), hr("gone", at[2])])
    before = [await _watermark(client, headers, s) for s in sessions]
    mixed = await _post(
        client,
        headers,
        [hr("kept", at[0]), hr("moved", at[3]), hr("new", at[4])],
        deleted=[{"source": "healthkit", "record_id": "gone"}],
    )
    assert (mixed["inserted"], mixed["updated"], mixed["unchanged"], mixed["deleted"]) == (
        1,
        1,
        1,
        1,
    )
    assert mixed["change_seq"] == max(before) + 1
    after = [await _watermark(client, headers, s) for s in sessions]
    assert after[0] == before[0]
    assert after[1:] == [mixed["change_seq"]] * 4


async def test_widest_window_edge_170_vs_190_minutes(client, users):
    """A sample 170 min before a session's start bumps it; one 190 min before does not."""
    headers = await users.headers()
    start = now_ms() - 10 * 60 * MINUTE_MS
    a = await _session(client, headers, start, start + 30 * MINUTE_MS)
    before = await _watermark(client, headers, a)
    far = await _post(client, headers, [hr("far", start - 190 * MINUTE_MS)])
    assert far["inserted"] == 1
    assert await _watermark(client, headers, a) == before
    near = await _post(client, headers, [hr("near", start - 170 * MINUTE_MS)])
    assert await _watermark(client, headers, a) == near["change_seq"]
    after = await _post(client, headers, [hr("after", start + 30 * MINUTE_MS + 170 * MINUTE_MS)])
    assert await _watermark(client, headers, a) == after["change_seq"]


async def test_live_session_window_reaches_now(client, users):
    """An active session's window ends at now (+180 min), so fresh samples always stale it."""
    headers = await users.headers()
    live = await _session(client, headers, now_ms() - 30 * MINUTE_MS)
    result = await _post(client, headers, [hr("x", now_ms() - 1000)])
    assert await _watermark(client, headers, live) == result["change_seq"]


async def test_ending_a_session_bumps_it(client, users):
    """Ending moves the session's watermark to a new change_seq of its user."""
    headers = await users.headers()
    session = await _session(client, headers, now_ms() - 30 * MINUTE_MS)
    before = await _watermark(client, headers, session)
    ended = (await client.post(f"/api/v1/sessions/{session}/end", headers=headers)).json()
    assert ended["source_watermark"] > before
    sample = await _post(client, headers, [hr("y", now_ms() - 1000)])
    assert sample["change_seq"] == ended["source_watermark"] + 1
