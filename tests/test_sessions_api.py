"""Sessions API: idempotent create, ownership as 404, ending twice, cursor pagination."""

from __future__ import annotations

import time


async def test_create_is_idempotent_on_client_session_id(client, users):
    """Creating twice with one client_session_id returns the first session with 200."""
    headers = await users.headers()
    first = await client.post("/api/v1/sessions", json={"client_session_id": "s1"}, headers=headers)
    again = await client.post("/api/v1/sessions", json={"client_session_id": "s1"}, headers=headers)
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert first.json()["status"] == "active" and first.json()["live"] is True


async def test_other_users_session_is_not_found(client, users):
    """User B can neither read, end nor cancel user A's session: 404, never 403."""
    alice = await users.headers("alice")
    bob = await users.headers("bob")
    session = (await client.post("/api/v1/sessions", json={}, headers=alice)).json()
    for method, path in [
        ("GET", f"/api/v1/sessions/{session['id']}"),
        ("POST", f"/api/v1/sessions/{session['id']}/end"),
        ("POST", f"/api/v1/sessions/{session['id']}/cancel"),
    ]:
        response = await client.request(method, path, headers=bob)
        assert response.status_code == 404, path
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "SESSION_NOT_FOUND"
    assert (await client.get(f"/api/v1/sessions/{session['id']}", headers=alice)).json()[
        "status"
    ] == "active"


async def test_end_twice_changes_nothing_and_bumps_watermark_once(client, users):
    """Ending bumps the session watermark; a second end returns the same session unchanged."""
    headers = await users.headers()
    created = (await client.post("/api/v1/sessions", json={}, headers=headers)).json()
    ended = (await client.post(f"/api/v1/sessions/{created['id']}/end", headers=headers)).json()
    again = (await client.post(f"/api/v1/sessions/{created['id']}/end", headers=headers)).json()
    assert ended["status"] == "completed" and ended["live"] is False
    assert ended["source_watermark"] > created["source_watermark"]
    assert again == ended
    cancel = await client.post(f"/api/v1/sessions/{created['id']}/cancel", headers=headers)
    assert cancel.status_code == 409
    assert cancel.headers["content-type"] == "application/problem+json"
    assert cancel.json() == {
        "type": "about:blank",
        "title": "Session not active",
        "status": 409,
        "code": "SESSION_NOT_ACTIVE",
        "detail": "The session is already completed.",
    }


async def test_end_before_start_is_rejected(client, users):
    headers = await users.headers()
    created = (
        await client.post(
            "/api/v1/sessions", json={"started_at": "2026-01-01T10:00:00+00:00"}, headers=headers
        )
    ).json()
    response = await client.post(
        f"/api/v1/sessions/{created['id']}/end",
        json={"ended_at": "2026-01-01T09:00:00+00:00"},
        headers=headers,
    )
    assert response.status_code == 422 and response.json()["code"] == "END_BEFORE_START"
    naive = await client.post(
        "/api/v1/sessions", json={"started_at": "2026-01-01T10:00:00"}, headers=headers
    )
    assert naive.status_code == 422


async def test_list_newest_first_with_cursor_and_status_filter(client, users):
    """Pages are newest first, disjoint, and complete; status filters."""
    headers = await users.headers()
    base = int(time.time()) - 86_400
    ids = []
    for i in range(7):
        started = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(base + i * 600))
        body = (
            await client.post("/api/v1/sessions", json={"started_at": started}, headers=headers)
        ).json()
        ids.append(body["id"])
    await client.post(f"/api/v1/sessions/{ids[0]}/end", headers=headers)
    seen, cursor = [], None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/api/v1/sessions", params=params, headers=headers)).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    completed = (
        await client.get("/api/v1/sessions", params={"status": "completed"}, headers=headers)
    ).json()
    assert [s["id"] for s in completed["items"]] == [ids[0]]
    bad = await client.get("/api/v1/sessions", params={"cursor": "!!"}, headers=headers)
    assert bad.status_code == 422 and bad.json()["code"] == "INVALID_CURSOR"
