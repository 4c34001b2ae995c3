"""DELETE /api/v1/sessions/{id}: the session and everything derived from it (views, change log,
shares and their access log, alerts) go, samples stay."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tests.alerts.helpers import bearer, heart_rate, ingest, live_session
from tests.lifecycle.conftest import count
from tests.realtime.conftest import ClientFactory, LiveServer
from tests.realtime.test_socket_server import broadcast_updated, create_session
from tests.telemetry.conftest import MINUTE, T0_MS, TelemetryClient, hr
from vitalcast.db.engine import Database, create_engine
from vitalcast.db.tables import (
    health_samples,
    session_alerts,
    session_changes,
    sessions,
    share_access,
    shares,
    telemetry_cache,
)
from vitalcast.lifecycle import purge
from vitalcast.telemetry.compute.memo import ViewMemo


async def test_delete_removes_session_views_and_change_log_but_keeps_samples(
    tc: TelemetryClient, users: Any, view_memo: ViewMemo
) -> None:
    """… and the process forgets what it kept of the session in memory (the hot read's kept
    payloads and built deltas, the compute's memo) at once, keeping the other session's."""
    _uid, token = await users.create()
    auth = {"Authorization": f"Bearer {token}"}
    session_id = await tc.start_session(auth, T0_MS - 30 * MINUTE)
    kept_id = await tc.start_session(auth, T0_MS - 20 * MINUTE)
    await tc.post_samples(auth, [hr(f"r{i}", T0_MS - (25 - i) * MINUTE, 60 + i) for i in range(20)])
    assert (await tc.get(auth, session_id)).status_code in (200, 202)
    assert (await tc.get(auth, kept_id)).status_code in (200, 202)
    await tc.settle()
    await tc.end_session(auth, session_id, T0_MS - 5 * MINUTE)
    await tc.settle()
    base = (await tc.get(auth, session_id)).json()["telemetry"]["source_watermark"]
    # A late sample after the full compute of the end: an incremental compute keeps its entry.
    await tc.post_samples(auth, [hr("late", T0_MS - 10 * MINUTE, 99)])
    await tc.settle()
    assert await count(tc.db, telemetry_cache, telemetry_cache.c.session_id == session_id) >= 1
    assert await count(tc.db, session_changes, session_changes.c.session_id == session_id) >= 1
    kept_views = await count(tc.db, telemetry_cache, telemetry_cache.c.session_id == kept_id)
    assert (await tc.get(auth, session_id)).status_code == 200
    # a client that held the save before the late sample asks for a delta: built, then kept
    assert "delta" in (await tc.get(auth, session_id, since_watermark=base)).json()
    assert (await tc.get(auth, kept_id)).status_code == 200
    telemetry = tc.parts.telemetry
    assert telemetry.entries_of(session_id=session_id) >= 1
    assert view_memo.entries_of(session_id=session_id) >= 1
    kept_entries = telemetry.entries_of(session_id=kept_id)
    assert kept_entries >= 1 and view_memo.entries_of(session_id=kept_id) >= 1

    deleted = await tc.http.delete(f"/api/v1/sessions/{session_id}", headers=auth)

    assert deleted.status_code == 204 and deleted.content == b""
    assert await count(tc.db, sessions, sessions.c.id == session_id) == 0
    assert telemetry.entries_of(session_id=session_id) == 0
    assert view_memo.entries_of(session_id=session_id) == 0
    assert telemetry.entries_of(session_id=kept_id) == kept_entries
    assert await count(tc.db, telemetry_cache, telemetry_cache.c.session_id == session_id) == 0
    assert await count(tc.db, session_changes, session_changes.c.session_id == session_id) == 0
    assert await count(tc.db, health_samples) == 21
    assert await count(tc.db, telemetry_cache, telemetry_cache.c.session_id == kept_id) == (
        kept_views
    )
    for method, path in [
        ("GET", f"/api/v1/sessions/{session_id}"),
        ("GET", f"/api/v1/sessions/{session_id}/telemetry"),
        ("DELETE", f"/api/v1/sessions/{session_id}"),
    ]:
        gone = await tc.http.request(method, path, headers=auth)
        assert gone.status_code == 404, path
        assert gone.json()["code"] == "SESSION_NOT_FOUND"
    assert (await tc.get(auth, kept_id)).status_code == 200


async def test_a_strangers_session_is_not_found_and_stays(tc: TelemetryClient, users: Any) -> None:
    _a, alice = await users.create()
    _b, bob = await users.create()
    session_id = await tc.start_session({"Authorization": f"Bearer {alice}"}, T0_MS - MINUTE)
    response = await tc.http.delete(
        f"/api/v1/sessions/{session_id}", headers={"Authorization": f"Bearer {bob}"}
    )
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "SESSION_NOT_FOUND"
    assert await count(tc.db, sessions, sessions.c.id == session_id) == 1


async def test_subscribers_hear_deleted_and_are_unsubscribed(
    live: LiveServer, users: Any, socket_client: ClientFactory
) -> None:
    """A subscriber gets session.status ``deleted``; saves of the deleted session's id reach it
    no more (shown by a later event of another session arriving first), and subscribing again is
    a 404."""
    _owner, token = await users.create()
    watcher = await socket_client(live.url, token)
    session = await create_session(live.url, token)
    other = await create_session(live.url, token)
    for sid in (session["id"], other["id"]):
        assert (await watcher.call("subscribe", {"session_id": sid}))["ok"] is True
    watcher.drain("session.status")
    async with httpx.AsyncClient(base_url=live.url) as http:
        response = await http.delete(
            f"/api/v1/sessions/{session['id']}", headers={"Authorization": f"Bearer {token}"}
        )
    assert response.status_code == 204
    statuses = [await watcher.next("session.status")]
    # The event reaches the socket through both rooms it was in (user and session) at most once.
    assert statuses[0]["status"] == "deleted" and statuses[0]["session_id"] == session["id"]
    assert statuses[0]["live"] is False
    broadcast_updated(live, session["id"], 99)
    broadcast_updated(live, other["id"], 100)
    earlier = await watcher.before("session.updated", lambda e: e["session_id"] == other["id"])
    assert earlier == []
    again = await watcher.call("subscribe", {"session_id": session["id"]})
    assert again["ok"] is False and again["code"] == "SESSION_NOT_FOUND"


async def test_delete_takes_its_shares_their_access_log_and_alerts(
    live: LiveServer, users: Any, db: Database, socket_client: ClientFactory
) -> None:
    """A session with a share (read over HTTP and subscribed over Socket.IO) and an announced
    alert episode: after DELETE its ``shares``, ``share_access`` and ``session_alerts`` rows are
    gone (another session's share stays), the share token is 401, and the viewer's socket hears
    ``session.status`` deleted and is then closed as a revoked share's is."""
    _owner, token = await users.create()
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
        sid = (await live_session(http, token))["id"]
        kept_sid = (await live_session(http, token))["id"]
        created = {}
        for session_id in (sid, kept_sid):
            share = await http.post(
                f"/api/v1/sessions/{session_id}/shares",
                json={"expires_in_minutes": 60},
                headers=bearer(token),
            )
            assert share.status_code == 201, share.text
            created[session_id] = share.json()
        share_id, share_token = created[sid]["id"], created[sid]["token"]
        viewer = await socket_client(live.url, share_token)
        assert (await viewer.call("subscribe", {"session_id": sid}))["ok"] is True
        read = await http.get(f"/api/v1/sessions/{sid}", headers=bearer(share_token))
        assert read.status_code == 200
        await ingest(http, token, [heart_rate("crossing", 4, 112)])
        assert (await viewer.next("session.alert"))["session_id"] == sid
        live.run(live.parts.share_access.flush())
        assert await count(db, shares, shares.c.session_id == sid) == 1
        assert await count(db, share_access, share_access.c.share_id == share_id) == 2
        assert await count(db, session_alerts, session_alerts.c.session_id == sid) == 1

        deleted = await http.delete(f"/api/v1/sessions/{sid}", headers=bearer(token))
        assert deleted.status_code == 204

        assert await count(db, shares, shares.c.session_id == sid) == 0
        assert await count(db, share_access, share_access.c.share_id == share_id) == 0
        assert await count(db, session_alerts, session_alerts.c.session_id == sid) == 0
        assert await count(db, shares, shares.c.session_id == kept_sid) == 1
        status = await viewer.next("session.status")
        assert (status["session_id"], status["status"]) == (sid, "deleted")
        assert (await viewer.next("error"))["code"] == "SHARE_REVOKED"
        await asyncio.wait_for(viewer.disconnected.wait(), 10)
        for path in (f"/api/v1/sessions/{sid}", f"/api/v1/sessions/{sid}/telemetry"):
            refused = await http.get(path, headers=bearer(share_token))
            assert refused.status_code == 401, (path, refused.text)
            assert refused.json()["code"] == "TOKEN_INVALID"
        kept_token = created[kept_sid]["token"]
        assert (
            await http.get(f"/api/v1/sessions/{kept_sid}", headers=bearer(kept_token))
        ).status_code == 200


async def _purge_sessions(engine: AsyncEngine, user_id: str) -> None:
    """An erasure's purge batch of the user's sessions (with what refers to them)."""
    holder = next(h for h in purge.holders() if h.table is sessions)
    async with engine.begin() as conn:
        await purge.purge_batch(conn, holder, user_id)


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
@pytest.mark.parametrize("deleter", ["session_delete", "erasure_purge"])
async def test_delete_waits_for_a_save_that_prunes_the_change_log_instead_of_deadlocking(
    tc: TelemetryClient, users: Any, database_url: str, deleter: str
) -> None:
    """A compute's save holds the session's view rows (its compare-and-set UPDATE), then prunes
    the change log in the same transaction. A DELETE (or an erasure's purge) arriving in
    between waits for it and then removes everything; before, the cascade took the change log
    first and the two deadlocked (PostgreSQL ended one of them: a 500 for the user, seen under
    load; a purge batch retried in the background)."""
    user_id, token = await users.create()
    auth = {"Authorization": f"Bearer {token}"}
    session_id = await tc.start_session(auth, T0_MS - 30 * MINUTE)
    await tc.post_samples(auth, [hr(f"r{i}", T0_MS - (25 - i) * MINUTE, 60 + i) for i in range(5)])
    assert (await tc.get(auth, session_id)).status_code in (200, 202)
    await tc.settle()
    await tc.post_samples(auth, [hr("late", T0_MS - 10 * MINUTE, 99)])
    await tc.settle()
    assert await count(tc.db, telemetry_cache, telemetry_cache.c.session_id == session_id) >= 1
    assert await count(tc.db, session_changes, session_changes.c.session_id == session_id) >= 1
    where = {"session_id": session_id}
    engine = create_engine(database_url)
    try:
        async with engine.connect() as save, engine.connect() as watch:
            await save.begin()
            await save.execute(
                sa.text(
                    "UPDATE telemetry_cache SET updated_at_ms = updated_at_ms + 1 "
                    "WHERE session_id = :session_id"
                ),
                where,
            )
            deleting = asyncio.create_task(
                tc.parts.sessions.delete(user_id, session_id)
                if deleter == "session_delete"
                else _purge_sessions(engine, user_id)
            )
            await _until_a_backend_waits_for_a_lock(watch)
            assert not deleting.done()
            # the save's prune: with the delete holding none of the change log, it goes through
            await save.execute(
                sa.text("DELETE FROM session_changes WHERE session_id = :session_id"), where
            )
            await save.commit()
            await asyncio.wait_for(deleting, 30)
    finally:
        await engine.dispose()
    assert await count(tc.db, sessions, sessions.c.id == session_id) == 0
    assert await count(tc.db, telemetry_cache, telemetry_cache.c.session_id == session_id) == 0


async def _until_a_backend_waits_for_a_lock(watch: AsyncConnection) -> None:
    waiting = sa.text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    for _ in range(3_000):
        if await watch.scalar(waiting):
            return
        await watch.rollback()  # a fresh snapshot of the statistics at the next look
        await asyncio.sleep(0.01)
    raise AssertionError("the delete never waited for the save's lock")
