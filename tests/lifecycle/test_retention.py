"""Raw-sample retention: samples older than the limit are gone, the sessions whose windows
reached them archived first: their views are served byte for byte as kept (``archived: true``),
never recomputed; their raw exports answer 410 RAW_EXPIRED while the bucket CSV keeps working;
newer sessions and today's inserts are untouched."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from tests.lifecycle.conftest import count
from tests.telemetry.conftest import MINUTE, TelemetryClient, hr
from vitalcast.db.tables import health_samples, sessions
from vitalcast.lifecycle.retention import DAY_MS, RetentionService

HOUR = 60 * MINUTE


async def test_retention_archives_then_purges_and_serves_the_kept_views(
    tc: TelemetryClient, users: Any
) -> None:
    _uid, token = await users.create()
    auth = {"Authorization": f"Bearer {token}"}
    now = tc.clock.now_ms()
    old_start, new_start = now - 10 * DAY_MS, now - 30 * MINUTE
    old = await tc.start_session(auth, old_start)
    await tc.post_samples(auth, [hr(f"o{i}", old_start + i * MINUTE, 60.0 + i) for i in range(30)])
    await tc.end_session(auth, old, old_start + 30 * MINUTE)
    new = await tc.start_session(auth, new_start)
    await tc.post_samples(auth, [hr(f"n{i}", new_start + i * MINUTE, 80.0 + i) for i in range(25)])
    for sid in (old, new):
        await tc.get(auth, sid)
    await tc.settle()
    before = await tc.get(auth, old)
    assert before.status_code == 200 and before.json()["state"] == "ready"
    buckets_before = await tc.http.get(
        f"/api/v1/sessions/{old}/export.csv", params={"kind": "buckets"}, headers=auth
    )
    assert buckets_before.status_code == 200

    done = await RetentionService(tc.db, tc.clock, days=5).run()

    assert (done.sessions_archived, done.samples_deleted) == (1, 30)
    assert await count(tc.db, health_samples) == 25
    async with tc.db.read() as conn:
        archived = dict(
            (await conn.execute(sa.select(sessions.c.id, sessions.c.archived_at_ms))).all()
        )
    assert archived[old] is not None and archived[new] is None
    after = await tc.get(auth, old)
    assert after.status_code == 200
    assert after.content == before.content[:-1] + b',"archived":true}'
    assert after.headers["etag"] == before.headers["etag"]
    again = await tc.get(auth, old, **{})
    assert again.content == after.content
    revalidated = await tc.http.get(
        f"/api/v1/sessions/{old}/telemetry",
        headers=auth | {"If-None-Match": before.headers["etag"]},
    )
    assert revalidated.status_code == 304
    never_kept = await tc.get(auth, old, window_minutes=15)
    assert never_kept.status_code == 410 and never_kept.json()["code"] == "RAW_EXPIRED"
    for kind_path in ("export.csv", "fhir"):
        gone = await tc.http.get(f"/api/v1/sessions/{old}/{kind_path}", headers=auth)
        assert gone.status_code == 410, kind_path
        assert gone.headers["content-type"] == "application/problem+json"
        assert gone.json()["code"] == "RAW_EXPIRED"
    buckets_after = await tc.http.get(
        f"/api/v1/sessions/{old}/export.csv", params={"kind": "buckets"}, headers=auth
    )
    assert buckets_after.status_code == 200 and buckets_after.content == buckets_before.content
    assert (await tc.http.get(f"/api/v1/sessions/{old}", headers=auth)).json()["archived"] is True

    # A late sample in the archived window moves nothing: the view is never recomputed.
    watermark = before.json()["telemetry"]["source_watermark"]
    await tc.post_samples(auth, [hr("late-old", old_start + 5 * MINUTE + 1_000, 150.0)])
    await tc.settle()
    assert (await tc.get(auth, old)).content == after.content
    assert after.json()["telemetry"]["source_watermark"] == watermark

    # The newer session and today's inserts are untouched.
    fresh = await tc.get(auth, new)
    assert fresh.status_code == 200 and "archived" not in fresh.json()
    await tc.post_samples(auth, [hr("today", now - MINUTE, 99.0)])
    assert (
        await tc.http.get(f"/api/v1/sessions/{new}/export.csv", headers=auth)
    ).status_code == 200
    second = await RetentionService(tc.db, tc.clock, days=5).run()
    assert (second.sessions_archived, second.samples_deleted) == (0, 1)
    assert await count(tc.db, health_samples) == 26
