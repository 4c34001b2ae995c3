"""Shares over HTTP against the real app on each database: create, list (never the token),
revoke, what a share token reads (its session, ETags and deltas included) and refuses, its own
rate budget, expiry, and the owner's access log."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.conftest import Users
from tests.ingest.helpers import MINUTE_MS, hr, iso, now_ms
from tests.lifecycle.traces import all_rows, rows_holding
from vitalcast.app import create_app
from vitalcast.clock import ManualClock
from vitalcast.db.engine import Database
from vitalcast.settings import Settings
from vitalcast.wiring import NO_SEAMS, Seams


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def owner_session(client: httpx.AsyncClient, token: str) -> str:
    """A session of the token's user started an hour ago, with samples in it."""
    start = now_ms() - 60 * MINUTE_MS
    created = await client.post(
        "/api/v1/sessions", json={"started_at": iso(start)}, headers=bearer(token)
    )
    assert created.status_code == 201
    samples = [hr(f"s{i}", start + i * MINUTE_MS) for i in range(1, 6)]
    assert (
        await client.post("/api/v1/samples", json={"samples": samples}, headers=bearer(token))
    ).is_success
    return str(created.json()["id"])


async def share(
    client: httpx.AsyncClient, token: str, session_id: str, minutes: int = 60, **body: Any
) -> dict[str, Any]:
    created = await client.post(
        f"/api/v1/sessions/{session_id}/shares",
        json={"expires_in_minutes": minutes} | body,
        headers=bearer(token),
    )
    assert created.status_code == 201, created.text
    return dict(created.json())


async def _app_client(
    settings: Settings, seams: Seams = NO_SEAMS
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, seams)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


async def test_create_list_and_revoke(client: httpx.AsyncClient, users: Users) -> None:
    _owner, token = await users.create()
    _other, other = await users.create()
    session_id = await owner_session(client, token)
    before = now_ms()
    created = await share(client, token, session_id, minutes=90, label="Sam drives me home")
    assert created["token"].startswith("vcs_")
    assert created["url"] == f"http://test/#share={created['token']}"
    assert before + 90 * MINUTE_MS <= created["expires_at_ms"] <= now_ms() + 90 * MINUTE_MS
    assert (created["label"], created["state"], created["session_id"]) == (
        "Sam drives me home",
        "active",
        session_id,
    )

    listed = await client.get(f"/api/v1/sessions/{session_id}/shares", headers=bearer(token))
    assert listed.status_code == 200
    (item,) = listed.json()["items"]
    assert "token" not in item and created["token"] not in listed.text
    assert item["id"] == created["id"]

    for bad in (0, 7 * 24 * 60 + 1):
        refused = await client.post(
            f"/api/v1/sessions/{session_id}/shares",
            json={"expires_in_minutes": bad},
            headers=bearer(token),
        )
        assert refused.status_code == 422
    assert (await share(client, token, session_id, minutes=7 * 24 * 60))["state"] == "active"
    theirs = await client.post(
        f"/api/v1/sessions/{session_id}/shares",
        json={"expires_in_minutes": 5},
        headers=bearer(other),
    )
    assert (theirs.status_code, theirs.json()["code"]) == (404, "SESSION_NOT_FOUND")

    shared = bearer(created["token"])
    assert (await client.get(f"/api/v1/sessions/{session_id}", headers=shared)).is_success
    not_theirs = await client.delete(f"/api/v1/shares/{created['id']}", headers=bearer(other))
    assert (not_theirs.status_code, not_theirs.json()["code"]) == (404, "SHARE_NOT_FOUND")
    assert (
        await client.delete(f"/api/v1/shares/{created['id']}", headers=bearer(token))
    ).status_code == 204
    refused = await client.get(f"/api/v1/sessions/{session_id}", headers=shared)
    assert (refused.status_code, refused.json()["code"]) == (401, "SHARE_REVOKED")
    assert (
        await client.delete(f"/api/v1/shares/{created['id']}", headers=bearer(token))
    ).status_code == 204, "revoking twice changes nothing"
    states = {
        i["id"]: i["state"]
        for i in (
            await client.get(f"/api/v1/sessions/{session_id}/shares", headers=bearer(token))
        ).json()["items"]
    }
    assert states[created["id"]] == "revoked"


async def test_no_table_holds_a_share_token(
    app: Any, client: httpx.AsyncClient, db: Database, users: Users
) -> None:
    """Stored hashed: after shares were created, used (reads logged) and revoked, no row of any
    table (reflected from the database) holds a raw ``vcs_…`` token or its secret part, while
    each token's SHA-256 is there."""
    _owner, token = await users.create()
    session_id = await owner_session(client, token)
    created = [await share(client, token, session_id, label=f"share {n}") for n in range(3)]
    for item in created:
        read = await client.get(f"/api/v1/sessions/{session_id}", headers=bearer(item["token"]))
        assert read.status_code == 200
    await app.state.parts.share_access.flush()
    revoked = await client.delete(f"/api/v1/shares/{created[0]['id']}", headers=bearer(token))
    assert revoked.status_code == 204

    rows = await all_rows(db)
    assert len(rows["share_access"]) == 3
    raw = [item["token"] for item in created]
    assert rows_holding(rows, raw) == {}
    assert rows_holding(rows, [t.removeprefix("vcs_") for t in raw]) == {}
    digests = [hashlib.sha256(t.encode()).hexdigest() for t in raw]
    assert set(rows_holding(rows, digests)) == {"shares"}


async def test_a_share_reads_its_session_and_nothing_else(
    client: httpx.AsyncClient, users: Users
) -> None:
    """Telemetry with ETag (304) and deltas, status, CSV and FHIR exports of its session;
    another session of the same owner is 404; writes and listings are 403 SHARE_SCOPE."""
    _owner, token = await users.create()
    session_id = await owner_session(client, token)
    elsewhere = await owner_session(client, token)
    shared = bearer((await share(client, token, session_id))["token"])
    base = f"/api/v1/sessions/{session_id}"

    ready: dict[str, Any] = {}
    for _ in range(600):
        answer = await client.get(f"{base}/telemetry", headers=shared)
        assert answer.status_code in (200, 202)
        if answer.json()["state"] == "ready":
            ready = {"etag": answer.headers["etag"], "body": answer.json()}
            break
        await asyncio.sleep(0.1)
    assert ready, "the view became ready"
    unchanged = await client.get(
        f"{base}/telemetry", headers=shared | {"If-None-Match": ready["etag"]}
    )
    assert unchanged.status_code == 304
    watermark = ready["body"]["telemetry"]["source_watermark"]
    delta = await client.get(
        f"{base}/telemetry", params={"since_watermark": watermark}, headers=shared
    )
    assert delta.status_code == 200
    assert (await client.get(base, headers=shared)).json()["id"] == session_id
    csv = await client.get(f"{base}/export.csv", headers=shared)
    assert csv.status_code == 200 and csv.text.count("\n") == 6
    assert (await client.get(f"{base}/fhir", headers=shared)).json()["resourceType"] == "Bundle"
    assert (await client.get("/api/v1/catalog", headers=shared)).status_code == 200

    other = await client.get(f"/api/v1/sessions/{elsewhere}/telemetry", headers=shared)
    assert (other.status_code, other.json()["code"]) == (404, "SESSION_NOT_FOUND")
    for method, path, body in (
        ("GET", "/api/v1/sessions", None),
        ("POST", "/api/v1/sessions", {}),
        ("POST", f"{base}/end", {}),
        ("POST", "/api/v1/samples", {"samples": [hr("x", now_ms() - MINUTE_MS)]}),
        ("GET", f"{base}/shares", None),
        ("POST", f"{base}/shares", {"expires_in_minutes": 5}),
        ("GET", "/api/v1/insights", None),
    ):
        refused = await client.request(method, path, json=body, headers=shared)
        assert (refused.status_code, refused.json()["code"]) == (403, "SHARE_SCOPE"), path
    status = (await client.get(base, headers=bearer(token))).json()["status"]
    assert status == "active", "nothing the share tried changed the session"


async def test_the_owner_sees_every_read_but_no_value(
    client: httpx.AsyncClient, users: Users
) -> None:
    _owner, token = await users.create()
    session_id = await owner_session(client, token)
    created = await share(client, token, session_id)
    shared = bearer(created["token"])
    base = f"/api/v1/sessions/{session_id}"
    await client.get(base, headers=shared)
    await client.get(f"{base}/telemetry", headers=shared)
    await client.get(f"{base}/export.csv", headers=shared)
    await client.get(f"{base}/fhir", headers=shared)
    await client.post("/api/v1/sessions", json={}, headers=shared)  # refused: not a read

    log = await client.get(f"/api/v1/shares/{created['id']}/access", headers=bearer(token))
    assert log.status_code == 200
    items = log.json()["items"]
    assert [i["kind"] for i in items] == ["fhir", "export_csv", "telemetry", "session"]
    assert all(set(i) == {"at", "at_ms", "kind"} for i in items)
    page = await client.get(
        f"/api/v1/shares/{created['id']}/access", params={"limit": 3}, headers=bearer(token)
    )
    rest = await client.get(
        f"/api/v1/shares/{created['id']}/access",
        params={"limit": 3, "cursor": page.json()["next_cursor"]},
        headers=bearer(token),
    )
    assert [i["kind"] for i in page.json()["items"] + rest.json()["items"]] == [
        i["kind"] for i in items
    ]
    assert rest.json()["next_cursor"] is None
    own = await client.get(f"/api/v1/shares/{created['id']}/access", headers=shared)
    assert (own.status_code, own.json()["code"]) == (403, "SHARE_SCOPE")


async def test_a_share_has_its_own_rate_budget(settings: Settings, users: Users) -> None:
    """The share's reads spend its budget, not its owner's, and the other way round."""
    limited = settings.model_copy(
        update={"rate_limit_share": "3/minute", "rate_limit_telemetry": "5/minute"}
    )
    async for client in _app_client(limited):
        _owner, token = await users.create()
        session_id = await owner_session(client, token)
        shared = bearer((await share(client, token, session_id))["token"])
        url = f"/api/v1/sessions/{session_id}/telemetry"
        codes = [(await client.get(url, headers=shared)).status_code for _ in range(4)]
        assert codes[:3] != [429] * 3 and 429 not in codes[:3] and codes[3] == 429
        owner_codes = [(await client.get(url, headers=bearer(token))).status_code for _ in range(5)]
        assert 429 not in owner_codes
        assert (await client.get(url, headers=bearer(token))).status_code == 429
        assert (await client.get(url, headers=shared)).status_code == 429


@pytest.mark.parametrize("minutes", [1])
async def test_an_expired_share_is_refused_at_once(
    settings: Settings, users: Users, minutes: int
) -> None:
    """Past ``expires_at_ms`` the token is 401 SHARE_EXPIRED, remembered or not."""
    clock = ManualClock(now_ms())
    async for client in _app_client(settings, Seams(clock=clock)):
        _owner, token = await users.create()
        session_id = await owner_session(client, token)
        created = await share(client, token, session_id, minutes=minutes)
        shared = bearer(created["token"])
        assert (await client.get(f"/api/v1/sessions/{session_id}", headers=shared)).is_success
        clock.advance(minutes * MINUTE_MS)
        refused = await client.get(f"/api/v1/sessions/{session_id}", headers=shared)
        assert (refused.status_code, refused.json()["code"]) == (401, "SHARE_EXPIRED")
        listed = await client.get(f"/api/v1/sessions/{session_id}/shares", headers=bearer(token))
        assert listed.json()["items"][0]["state"] == "expired"
