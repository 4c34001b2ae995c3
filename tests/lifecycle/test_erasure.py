"""DELETE /api/v1/me and ``vitalcast users erase``: tokens refused and sockets closed at once,
then nothing of the user in any table (reflected from the database) or Redis key, and another
user's rows exactly as they were."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import socketio

from tests.conftest import TEST_SECRET
from tests.lifecycle.traces import (
    all_rows,
    keys_holding,
    redis_dump,
    rows_holding,
    rows_without,
)
from tests.realtime.conftest import LiveServer, serve_in_thread
from tests.telemetry.conftest import MINUTE, T0_MS, TelemetryClient, iso
from vitalcast.db.engine import Database, create_engine
from vitalcast.lifecycle.erasure_queue import ErasureWorker
from vitalcast.settings import Settings
from vitalcast.telemetry.compute.memo import ViewMemo
from vitalcast.telemetry.keys import Resolution, ScheduleReason, TelemetryKey
from vitalcast.testing import hr_sample as hr
from vitalcast.testing import user_with_token
from vitalcast.wiring import Seams, build_worker

HOUR = 60 * MINUTE


async def _wait_for(predicate: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def _populate(base: str, token: str, now: int, tag: str) -> list[str]:
    """Two sessions with samples (one ended), a replayable ingest; the session ids."""
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=auth, timeout=30) as http:
        ids = []
        for k, start in enumerate((now - 3 * HOUR, now - 30 * MINUTE)):
            created = await http.post("/api/v1/sessions", json={"started_at": iso(start)})
            assert created.status_code == 201, created.text
            ids.append(created.json()["id"])
            body = {
                "request_id": f"{tag}-{k}",
                "samples": [hr(f"{tag}{k}-{i}", start + i * MINUTE, 60.0 + i) for i in range(25)],
            }
            assert (await http.post("/api/v1/samples", json=body)).status_code == 200
        ended = await http.post(
            f"/api/v1/sessions/{ids[0]}/end", json={"ended_at": iso(now - 2 * HOUR)}
        )
        assert ended.status_code == 200
        for sid in ids:
            assert (await http.get(f"/api/v1/sessions/{sid}/telemetry")).status_code in (200, 202)
    return ids


async def test_an_erasure_forgets_what_the_process_keeps_of_the_user(
    tc: TelemetryClient, users: Any, view_memo: ViewMemo
) -> None:
    """Embedded: from the 202 on, the process keeps nothing of the erased user in memory (the
    hot read's kept payloads, the compute's memo), nor once the purge has finished; another
    user's entries stay as they were."""
    tokens = dict([await users.create(), await users.create()])
    victim_id, other_id = tokens
    for token in tokens.values():
        auth = {"Authorization": f"Bearer {token}"}
        sid = await tc.start_session(auth, T0_MS - 30 * MINUTE)
        await tc.post_samples(
            auth, [hr(f"r{i}", T0_MS - (25 - i) * MINUTE, 60 + i) for i in range(20)]
        )
        assert (await tc.get(auth, sid)).status_code in (200, 202)
        await tc.settle()
        assert (await tc.get(auth, sid)).status_code == 200
    telemetry = tc.parts.telemetry
    for uid in tokens:
        assert telemetry.entries_of(user_id=uid) >= 1 and view_memo.entries_of(user_id=uid) >= 1
    others = (telemetry.entries_of(user_id=other_id), view_memo.entries_of(user_id=other_id))

    erased = await tc.http.delete(
        "/api/v1/me", headers={"Authorization": f"Bearer {tokens[victim_id]}"}
    )

    assert erased.status_code == 202
    assert (telemetry.entries_of(user_id=victim_id), view_memo.entries_of(user_id=victim_id)) == (
        0,
        0,
    )

    async def purged() -> bool:
        return not await tc.parts.erasure.pending()

    await _wait_for(purged)
    assert telemetry.entries_of(user_id=victim_id) == view_memo.entries_of(user_id=victim_id) == 0
    assert (telemetry.entries_of(user_id=other_id), view_memo.entries_of(user_id=other_id)) == (
        others
    )


@pytest.mark.slow
async def test_erasure_leaves_no_trace_in_any_table_or_redis_key(
    database_url: str, tmp_path: Path, redis_url: str, unique_prefix: str
) -> None:
    """Scaled out (Redis: rate limits, queued telemetry jobs, the erasure job, pub/sub): the
    victim has sessions, samples, cached views with history, change-log entries, a stored
    ingest replay, rate-limit keys, queued jobs and an open subscribed socket; another user
    has the same. After DELETE /me: the socket is closed, every token use is 401, and once
    the worker has purged, no row of any table and no key holds the victim's id or name,
    while the other user's rows are exactly what they were. What the processes keep in memory
    goes too, the worker's over Redis: a deleted session's entries at once, the victim's from
    the 202 on (the server's kept payloads, the worker's compute memo); the other user's stay."""
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        secret=TEST_SECRET,
        redis_url=redis_url,
        queue_prefix=f"{unique_prefix}q",
        queue_name="telemetry",
        rate_limit_prefix=f"{unique_prefix}rl",
        socketio_channel=f"{unique_prefix}sio",
        erasure_batch_rows=25,
    )
    prefixes = [settings.queue_prefix, settings.rate_limit_prefix]
    victim_id, victim = await user_with_token(database_url, TEST_SECRET, "victim-name-7f3a")
    other_id, other = await user_with_token(database_url, TEST_SECRET, "other-name-19cd")
    db = Database(create_engine(database_url))
    memo = ViewMemo()
    worker = build_worker(settings, Seams(view_memo=memo))
    await worker.start()
    erasures = ErasureWorker(settings, worker.erasure)
    try:
        with serve_in_thread(settings) as live:
            now = int(time.time() * 1000)
            victim_sessions = await _populate(live.url, victim, now, "v")
            other_sessions = await _populate(live.url, other, now, "o")
            # Cached views (with partials and history) and change-log entries, computed by a
            # worker's computer; then late samples so the log has entries past the views.
            for uid, sids, token in (
                (victim_id, victim_sessions, victim),
                (other_id, other_sessions, other),
            ):
                for sid in sids:
                    key = TelemetryKey(sid, 60, Resolution.ONE_MINUTE, user_id=uid)
                    await worker.computer.compute(key, reason=ScheduleReason.CACHE_MISS)
                async with httpx.AsyncClient(base_url=live.url) as http:
                    late = {"samples": [hr(f"late-{uid}", now - 10 * MINUTE, 99.0)]}
                    response = await http.post(
                        "/api/v1/samples", json=late, headers={"Authorization": f"Bearer {token}"}
                    )
                    assert response.status_code == 200
                    for sid in sids:
                        served = await http.get(
                            f"/api/v1/sessions/{sid}/telemetry",
                            headers={"Authorization": f"Bearer {token}"},
                        )
                        assert served.status_code == 200
            for uid in (victim_id, other_id):
                assert await _kept(live, user_id=uid) >= 1 and memo.entries_of(user_id=uid) >= 1
            others_kept = (await _kept(live, user_id=other_id), memo.entries_of(user_id=other_id))
            # A deleted session is forgotten by the server at once and by the worker over Redis.
            gone_id = victim_sessions.pop(0)
            async with httpx.AsyncClient(base_url=live.url) as http:
                deleted = await http.delete(
                    f"/api/v1/sessions/{gone_id}", headers={"Authorization": f"Bearer {victim}"}
                )
            assert deleted.status_code == 204
            assert await _kept(live, session_id=gone_id) == 0
            await _wait_for(lambda: _none(memo.entries_of(session_id=gone_id)))
            assert memo.entries_of(session_id=victim_sessions[0]) >= 1
            socket = socketio.AsyncClient(reconnection=False)
            closed = asyncio.Event()
            socket.on("disconnect", lambda *_: closed.set())
            await socket.connect(
                live.url, auth={"token": victim}, transports=["websocket"], wait_timeout=10
            )
            assert (await socket.call("subscribe", {"session_id": victim_sessions[0]}))["ok"]

            before = await all_rows(db)
            markers = [victim_id, "victim-name-7f3a"]
            assert {"sessions", "health_samples", "telemetry_cache", "session_changes"} <= set(
                rows_holding(before, [*markers, *victim_sessions])
            )
            others_before = rows_without(before, [*markers, *victim_sessions])
            dump = await redis_dump(redis_url, prefixes)
            held = keys_holding(dump, markers)
            assert any(k.startswith(settings.rate_limit_prefix) for k in held), held
            assert any(k.startswith(settings.queue_prefix) for k in held), held

            auth = {"Authorization": f"Bearer {victim}"}
            async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
                erased = await http.delete("/api/v1/me", headers=auth)
                assert erased.status_code == 202, erased.text
                assert erased.json() == {"erasure": {"state": "purging"}}
                asked_at = time.monotonic()
                for method, path in [
                    ("GET", "/api/v1/sessions"),
                    ("GET", f"/api/v1/sessions/{victim_sessions[0]}/telemetry"),
                    ("POST", "/api/v1/samples"),
                    ("DELETE", "/api/v1/me"),
                    ("GET", "/api/v1/me/export"),
                ]:
                    refused = await http.request(method, path, headers=auth, json={})
                    assert refused.status_code == 401, (path, refused.text)
                    assert refused.json()["code"] == "TOKEN_INVALID"
            assert await _kept(live, user_id=victim_id) == 0
            await _wait_for(lambda: _none(memo.entries_of(user_id=victim_id)))
            await asyncio.wait_for(closed.wait(), 10)
            socket_closed_s = time.monotonic() - asked_at
            again = socketio.AsyncClient(reconnection=False)
            with pytest.raises(socketio.exceptions.ConnectionError):
                await again.connect(
                    live.url, auth={"token": victim}, transports=["websocket"], wait_timeout=10
                )

            await erasures.start()

            async def purged() -> bool:
                return not rows_holding(await all_rows(db), markers)

            await _wait_for(purged)
            await _wait_for(lambda: _no_keys(redis_url, prefixes, markers))
            after = await all_rows(db)
            assert rows_holding(after, [*markers, *victim_sessions]) == {}
            assert after == others_before
            assert keys_holding(await redis_dump(redis_url, prefixes), markers) == []
            # The other user is untouched and still served.
            async with httpx.AsyncClient(base_url=live.url) as http:
                mine = await http.get(
                    "/api/v1/sessions", headers={"Authorization": f"Bearer {other}"}
                )
            assert {s["id"] for s in mine.json()["items"]} == set(other_sessions)
            assert await _kept(live, user_id=victim_id) == memo.entries_of(user_id=victim_id) == 0
            assert (await _kept(live, user_id=other_id), memo.entries_of(user_id=other_id)) == (
                others_kept
            )
            print(f"socket closed {socket_closed_s:.3f} s after the 202")
    finally:
        await erasures.stop()
        await worker.close()
        await db.dispose()
        await _delete_keys(redis_url, prefixes)


async def _kept(live: LiveServer, **whose: str) -> int:
    """Kept payloads and built deltas the live server holds of a user or a session (read on
    the server's own loop)."""

    async def entries() -> int:
        return int(live.app.state.parts.telemetry.entries_of(**whose))

    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(entries(), live.loop))


async def _none(entries: int) -> bool:
    return entries == 0


async def _no_keys(url: str, prefixes: list[str], markers: list[str]) -> bool:
    return not keys_holding(await redis_dump(url, prefixes), markers)


async def _delete_keys(url: str, prefixes: list[str]) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        for prefix in prefixes:
            keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
            if keys:
                await client.delete(*keys)
    finally:
        await client.aclose()
