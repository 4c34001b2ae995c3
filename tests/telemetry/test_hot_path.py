"""What a cached telemetry GET costs, counted: one hot read and no other statement (a remembered
token reads nothing), the stored payload brought once per save and process (``KeptPayloads``),
its parameters checked as FastAPI would and documented as before."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.conftest import TEST_SECRET
from tests.services import service_missing
from tests.sql_statements import statements_where
from tests.telemetry.conftest import MINUTE, TelemetryClient, hr, telemetry_client
from vitalcast.app import create_app
from vitalcast.auth import issue_token
from vitalcast.clock import ManualClock, now_ms
from vitalcast.settings import Settings
from vitalcast.telemetry.compute.payload import PackedPayload
from vitalcast.telemetry.keys import Resolution, TelemetryKey
from vitalcast.telemetry.read.delta_cache import MAX_KEPT_DELTAS, DeltaCache
from vitalcast.telemetry.read.kept import KeptPayloads, PayloadId
from vitalcast.telemetry.read.reader import CacheReader, PostgresCacheReader, open_reader
from vitalcast.telemetry.store.rows import HotRow
from vitalcast.wiring import Seams

HOUR = 60 * MINUTE


def statements_of_this_task() -> Any:  # Any: tests.sql_statements' context manager
    """Every SQL statement any engine sends from the running task, or from a database thread
    (``db.units``), while the block runs; the server's own background tasks (the revocation
    poll, the webhook dispatcher) run on the loop in tasks of their own and are not counted."""
    task, loop_thread = asyncio.current_task(), threading.get_ident()
    return statements_where(
        lambda _conn: threading.get_ident() != loop_thread or asyncio.current_task() is task
    )


@dataclass
class CountingReader:
    """The real hot reader, recording every read: whether it named a kept payload and whether
    the payload's bytes came back."""

    inner: CacheReader
    reads: list[tuple[bool, bool]] = field(default_factory=list)
    #: per read, whether the payload's save history came back
    histories: list[bool] = field(default_factory=list)

    async def read(self, **kwargs: Any) -> HotRow | None:
        row = await self.inner.read(**kwargs)
        self.reads.append((kwargs.get("kept") is not None, row is not None and bool(row.payload)))
        self.histories.append(row is not None and row.history is not None)
        return row

    async def close(self) -> None:
        await self.inner.close()


@pytest.fixture
async def counted(settings: Settings, clock: ManualClock):
    readers: list[CountingReader] = []

    def wrap(reader: CacheReader) -> CacheReader:
        readers.append(CountingReader(reader))
        return readers[-1]

    async with telemetry_client(
        settings, clock, Seams(clock=clock, cache_reader_wrapper=wrap)
    ) as tc:
        yield tc, readers[0]


async def _ended_session(tc: TelemetryClient, headers: dict[str, str]) -> str:
    """A session of two hours, ended four hours ago, with its views computed."""
    start = tc.clock.now_ms() - 4 * HOUR
    session_id = await tc.start_session(headers, start)
    await tc.post_samples(
        headers, [hr(f"hr-{i}", start + i * MINUTE, 70.0 + i % 5) for i in range(90)]
    )
    await tc.end_session(headers, session_id, start + 2 * HOUR)
    await tc.settle()
    return session_id


async def test_a_cached_get_is_one_hot_read_and_no_other_statement(counted, users):
    """Once the token is remembered and the payload kept, each GET runs exactly one statement,
    the hot read, which leaves the payload's bytes in the database; the answer is the same. (A
    token not seen yet costs its user's row, once: the count sees the GET's statements.)"""
    tc, reader = counted
    user_id, token = await users.create()
    headers = {"Authorization": f"Bearer {token}"}
    session_id = await _ended_session(tc, headers)
    first = await tc.get(headers, session_id)
    assert first.status_code == 200 and first.json()["state"] == "ready"
    another = issue_token(TEST_SECRET, user_id, now_s=now_ms() // 1000, ttl_s=600)
    with statements_of_this_task() as statements:
        await tc.get({"Authorization": f"Bearer {another}"}, session_id)
    assert len(statements) == 1 and "users" in statements[0]
    reader.reads.clear()
    with statements_of_this_task() as statements:
        answers = [await tc.get(headers, session_id) for _ in range(20)]
    assert statements == []
    assert reader.reads == [(True, False)] * 20
    assert {a.content for a in answers} == {first.content}
    assert {a.headers["etag"] for a in answers} == {first.headers["etag"]}


async def test_a_new_save_brings_the_payload_once_and_each_view_keeps_its_own(counted, users):
    """After a save the next GET reads the new payload (one statement) and answers it; later GETs
    leave it out again. Another window of the session is another view, kept apart: reading its
    new payload leaves the first one kept."""
    tc, reader = counted
    headers = await users.headers()
    session_id = await _ended_session(tc, headers)
    before = await tc.get(headers, session_id)
    wide = await tc.get(headers, session_id, window_minutes=120)
    await tc.settle()
    wide = await tc.get(headers, session_id, window_minutes=120)
    assert wide.json()["state"] == "ready" and wide.content != before.content
    start = tc.clock.now_ms() - 4 * HOUR  # the session's, as _ended_session made it
    await tc.post_samples(headers, [hr("late", start + 100 * MINUTE, 99.0)])
    await tc.settle()
    reader.reads.clear()
    after = [await tc.get(headers, session_id) for _ in range(3)]
    assert [a.json()["state"] for a in after] == ["ready"] * 3
    assert after[0].headers["etag"] != before.headers["etag"]
    assert reader.reads == [(True, True), (True, False), (True, False)]
    assert len({a.content for a in after}) == 1 and after[0].content != before.content
    reader.reads.clear()
    wide_after = await tc.get(headers, session_id, window_minutes=120)
    again = await tc.get(headers, session_id)
    assert reader.reads == [(True, True), (True, False)]
    assert wide_after.content not in (wide.content, again.content)
    assert again.content == after[0].content


async def test_a_delta_its_clients_ask_is_built_at_the_save(counted, users, apply_delta):
    """Once a client asked a delta of a view, the view's next save builds the delta from the
    save before: the first delta fetch after the update is one hot read with neither the
    payload nor its history (a delta built on request reads both), and the delta rebuilds the
    new payload from the one the client held."""
    tc, reader = counted
    headers = await users.headers()
    session_id = await _ended_session(tc, headers)
    held = (await tc.get(headers, session_id)).json()["telemetry"]
    asked = await tc.get(headers, session_id, since_watermark=held["source_watermark"])
    assert asked.json()["state"] == "ready"
    start = tc.clock.now_ms() - 4 * HOUR  # the session's, as _ended_session made it
    await tc.post_samples(headers, [hr("late", start + 100 * MINUTE, 99.0)])
    await tc.settle()
    reader.reads.clear()
    update = await tc.get(headers, session_id, since_watermark=held["source_watermark"])
    assert reader.reads == [(False, False)]
    body = update.json()
    assert body["state"] == "ready" and "delta" in body
    full = (await tc.get(headers, session_id)).json()["telemetry"]
    assert full["source_watermark"] > held["source_watermark"]
    assert apply_delta(held, body["delta"]) == full


async def test_a_delta_no_kept_delta_answers_is_built_from_one_read(counted, users, apply_delta):
    """A delta no built delta leads to (nobody asked this selection, as on a server whose
    worker saved the view) is built from one hot read that brings the history with the
    payload, or the history alone when this process keeps that payload; the next client of
    the same delta finds it built (one read, no blob)."""
    tc, reader = counted
    headers = await users.headers()
    session_id = await _ended_session(tc, headers)
    start = tc.clock.now_ms() - 4 * HOUR  # the session's, as _ended_session made it
    for metric, kept in (("heart_rate", False), ("all", True)):
        held = (await tc.get(headers, session_id, metrics=metric)).json()["telemetry"]
        await tc.post_samples(headers, [hr(f"late-{metric}", start + 100 * MINUTE, 99.0)])
        await tc.settle()
        if kept:  # a full GET after the save: this process keeps the new payload
            await tc.get(headers, session_id, metrics=metric)
        reader.reads.clear()
        reader.histories.clear()
        since = held["source_watermark"]
        first, second = [
            await tc.get(headers, session_id, metrics=metric, since_watermark=since)
            for _ in range(2)
        ]
        assert reader.reads == [(True, not kept), (False, False)], metric
        assert reader.histories == [True, False], metric
        assert first.content == second.content and "delta" in first.json()
        full = (await tc.get(headers, session_id, metrics=metric)).json()["telemetry"]
        assert full["source_watermark"] > since
        assert apply_delta(held, first.json()["delta"]) == full


def _packed(size: int) -> PackedPayload:
    return PackedPayload(b"h" * size, {"heart_rate": b"f" * size})


def _row(watermark: int, computed_at_ms: int = 1) -> HotRow:
    return HotRow(
        "completed", 0, 1, watermark, "1m", "ready", watermark, computed_at_ms, None, None, None
    )


def test_kept_payloads_answer_only_for_the_same_stored_payload_and_stay_within_their_bytes():
    """A kept payload serves a row of the same resolution, watermark and compute time only; the
    oldest served go first once the bytes pass the bound."""
    kept = KeptPayloads(max_bytes=1000)
    kept.put(("a", 60, None), _row(3), _packed(200), user_id="u")
    assert kept.held(("a", 60, None)) == PayloadId("1m", 3, 1)
    assert kept.get(("a", 60, None), _row(3)) is not None
    assert kept.get(("a", 60, None), _row(4)) is None
    assert kept.get(("a", 60, None), _row(3, computed_at_ms=2)) is None
    assert kept.get(("a", 120, None), _row(3)) is None
    kept.put(("b", 60, None), _row(1), _packed(200), user_id="u")
    kept.get(("a", 60, None), _row(3))
    kept.put(("c", 60, None), _row(1), _packed(200), user_id="u")
    assert kept.held(("b", 60, None)) is None
    assert kept.held(("a", 60, None)) is not None and kept.held(("c", 60, None)) is not None
    kept.put(("d", 60, None), _row(1), _packed(600), user_id="u")
    assert kept.held(("d", 60, None)) is None


def test_kept_payloads_and_deltas_forget_a_user_or_a_session_and_nothing_else():
    """What an erasure (by user) or a session deletion drops: exactly that user's or that
    session's entries, with the bytes they counted."""
    kept, built = KeptPayloads(max_bytes=1000), DeltaCache()
    for session_id, user_id in (("a", "u"), ("b", "u"), ("c", "w")):
        kept.put((session_id, 60, None), _row(1), _packed(100), user_id=user_id)
        key = TelemetryKey(session_id, 60, Resolution.ONE_MINUTE, user_id=user_id)
        built.put(key, _row(2), 1, ("heart_rate",), b"delta")
    assert built.may_have("b", 60, 1, ("heart_rate",))
    assert (kept.forget(session_id="b"), built.forget(session_id="b")) == (1, 1)
    assert not built.may_have("b", 60, 1, ("heart_rate",))
    assert built.may_have("a", 60, 1, ("heart_rate",))
    assert not built.may_have("a", 60, 2, ("heart_rate",))
    assert (kept.entries_of(user_id="u"), built.entries_of(user_id="u")) == (1, 1)
    assert (kept.forget(user_id="u"), built.forget(user_id="u")) == (1, 1)
    assert kept.held(("a", 60, None)) is None and kept.held(("c", 60, None)) is not None
    assert (kept.entries_of(user_id="w"), built.entries_of(session_id="c")) == (1, 1)
    # the bytes of the forgotten payloads are free again: four more of 200 fit beside "c"
    for session_id in "defg":
        kept.put((session_id, 60, None), _row(1), _packed(100), user_id="w")
    assert kept.held(("c", 60, None)) is not None


def test_where_kept_deltas_start_follows_what_is_kept():
    """``may_have`` answers for the deltas kept, not for those evicted past the bound: a delta
    built again for the same save counts once."""
    built = DeltaCache()
    key = TelemetryKey("a", 60, Resolution.ONE_MINUTE, user_id="u")
    built.put(key, _row(2), 1, ("heart_rate",), b"delta")
    built.put(key, _row(2), 1, ("heart_rate",), b"delta")
    for since in range(2, MAX_KEPT_DELTAS + 1):
        built.put(key, _row(since + 1), since, ("heart_rate",), b"delta")
    assert built.may_have("a", 60, 1, ("heart_rate",))
    built.put(key, _row(MAX_KEPT_DELTAS + 2), MAX_KEPT_DELTAS + 1, ("heart_rate",), b"delta")
    assert not built.may_have("a", 60, 1, ("heart_rate",))
    assert built.may_have("a", 60, 2, ("heart_rate",))


async def test_bad_parameters_are_fastapis_422_with_their_locations(tc, users):
    """The telemetry GET checks its parameters in one call, with FastAPI's answer: a 422
    VALIDATION_ERROR naming where each bad one is, never its value."""
    headers = await users.headers()
    session_id = await _ended_session(tc, headers)
    url = f"/api/v1/sessions/{session_id}/telemetry"
    for path, params, extra, loc in [
        ("/api/v1/sessions/not-a-uuid/telemetry", {}, {}, ["path", "session_id"]),
        (url, {"since_watermark": "-1"}, {}, ["query", "since_watermark"]),
        (url, {"window_minutes": "sixty"}, {}, ["query", "window_minutes"]),
        (url, {"metrics": "x" * 501}, {}, ["query", "metrics"]),
        (url, {}, {"If-None-Match": "x" * 1001}, ["header", "if-none-match"]),
    ]:
        response = await tc.http.get(path, params=params, headers=headers | extra)
        assert response.status_code == 422, (params, extra)
        assert response.headers["content-type"] == "application/problem+json"
        body = response.json()
        assert body["code"] == "VALIDATION_ERROR"
        assert [e["loc"] for e in body["errors"]] == [loc]
        assert "x" * 100 not in response.text and "sixty" not in response.text


def test_the_telemetry_parameters_are_documented(settings: Settings):
    """The OpenAPI of the GET lists the path id, the four query parameters and If-None-Match."""
    operation = create_app(settings).openapi()["paths"]["/api/v1/sessions/{session_id}/telemetry"]
    documented = {(p["name"], p["in"], p["required"]) for p in operation["get"]["parameters"]}
    assert documented == {
        ("session_id", "path", True),
        ("window_minutes", "query", False),
        ("resolution", "query", False),
        ("metrics", "query", False),
        ("since_watermark", "query", False),
        ("if-none-match", "header", False),
    }
    since = next(p for p in operation["get"]["parameters"] if p["name"] == "since_watermark")
    assert since["schema"]["anyOf"][0] == {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}


async def test_the_postgres_hot_read_prepares_again_a_statement_postgres_no_longer_takes(
    pg_database_url: str | None,
) -> None:
    """The PostgreSQL reader runs each kept connection's statements prepared; after a table it
    reads was altered (a migration), the statement is prepared again and the read answers (as
    asyncpg's own statement cache does), on the same connection."""
    if pg_database_url is None:
        service_missing("PostgreSQL")
    assert pg_database_url is not None
    reader = open_reader(pg_database_url)
    assert isinstance(reader, PostgresCacheReader)
    pool = await reader._get_pool()
    conn = await pool.acquire()
    try:
        await conn.execute("CREATE TEMPORARY TABLE hot_read_probe (a text)")
        await conn.execute("INSERT INTO hot_read_probe VALUES ('x')")
        sql = "SELECT a FROM hot_read_probe"
        assert tuple(await reader._fetchrow(conn, sql, ())) == ("x",)
        first = reader._prepared[conn][sql]
        await conn.execute("ALTER TABLE hot_read_probe ALTER COLUMN a TYPE varchar(10)")
        assert tuple(await reader._fetchrow(conn, sql, ())) == ("x",)
        assert reader._prepared[conn][sql] is not first
    finally:
        await pool.release(conn)
        await reader.close()
