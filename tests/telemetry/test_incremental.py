"""Incremental recompute and deltas: the payload an incremental compute saves is byte for byte the
one a full recompute gives at the same watermark and time; the change log proves completeness or
the compute falls back to full; deltas rebuild the payload the server holds.

Real app, real SQLite and PostgreSQL, samples through POST /api/v1/samples; the full recompute
to compare with is the same compute run without the stored partials.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from tests.doubles import RecordingListener
from tests.properties import on_real_services
from tests.telemetry.conftest import MINUTE, TelemetryClient, hr, iso, telemetry_client
from tests.telemetry.deltas import ApplyDelta
from tests.telemetry.incremental_helpers import (
    SampleQueries,
    cached_views,
    compute_paths,
    log_seqs,
    recompute,
    recompute_batch,
    recompute_from_tail,
)
from vitalcast.catalog import ALL_CODES
from vitalcast.db.tables import session_changes, telemetry_cache
from vitalcast.telemetry.compute.aggregate import MAX_RANGES
from vitalcast.telemetry.compute.payload import unpack
from vitalcast.telemetry.compute.results import ComputePath
from vitalcast.telemetry.keys import ComputeOutcome, Resolution, ScheduleReason, TelemetryKey
from vitalcast.telemetry.run.computer import PRUNE_EVERY
from vitalcast.wiring import Seams

HOUR = 60 * MINUTE
#: the views every scenario keeps cached: the default one and a coarse narrow one
VIEWS = ((60, "1m"), (15, "5m"))


class ManualScheduler:
    """A scheduler that runs nothing: computes happen only when a test calls the computer."""

    def wrap(self, _inner: Any) -> ManualScheduler:
        return self

    async def submit(self, key: TelemetryKey, *, watermark: int, reason: ScheduleReason) -> bool:
        return True


@pytest.fixture
async def mtc(settings, clock) -> AsyncIterator[TelemetryClient]:
    """An app whose computes run only when the test asks the computer (nothing in background)."""
    seams = Seams(clock=clock, scheduler_wrapper=ManualScheduler().wrap)
    async with telemetry_client(settings, clock, seams) as client:
        yield client


async def _compute(tc: TelemetryClient, key: TelemetryKey) -> ComputeOutcome:
    return await tc.parts.computer.compute(key, reason=ScheduleReason.LIVE_UPDATE)


async def _assert_cached_equals_full(tc: TelemetryClient, session_id: str, user_id: str) -> None:
    views = await cached_views(tc, session_id, user_id)
    assert views
    for view in views:
        full = await recompute(tc, view.key, view.computed_at_ms, None)
        assert view.payload == full.blob, view.key


# -- the invariant, property-tested ------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    #: add | update | move | delete | advance | end
    kind: str
    #: add: (metric, ms relative to now, value) per sample
    samples: tuple[tuple[str, int, float], ...] = ()
    #: update, move, delete: which known record (modulo how many there are)
    pick: int = 0
    value: float = 0.0
    at_ms: int = 0


METRICS = {"heart_rate": (40.0, 180.0), "blood_oxygen": (85.0, 100.0), "steps": (0.0, 200.0)}


def _values(metric: str) -> st.SearchStrategy[float]:
    low, high = METRICS[metric]
    tenths = st.integers(int(low * 10), int(high * 10)).map(lambda v: v / 10)
    return st.one_of(tenths, st.floats(low, high, allow_nan=False, allow_infinity=False))


# ahead of now (the 5-minute tolerance), at the live edge, late, and before the session start
_OFFSETS = st.one_of(
    st.integers(-5 * MINUTE + 1, 0),
    st.integers(0, 3 * MINUTE),
    st.integers(0, 150 * MINUTE),
    st.sampled_from([0, 1, MINUTE - 1, MINUTE, 5 * MINUTE, 5 * MINUTE + 1]),
)


@st.composite
def _sample(draw: st.DrawFn) -> tuple[str, int, float]:
    metric = draw(st.sampled_from(sorted(METRICS)))
    return metric, -draw(_OFFSETS), draw(_values(metric))


@st.composite
def _step(draw: st.DrawFn) -> Step:
    kind = draw(
        st.sampled_from(["add", "add", "update", "move", "delete", "advance", "advance", "end"])
    )
    if kind == "add":
        return Step(kind, samples=tuple(draw(st.lists(_sample(), min_size=1, max_size=6))))
    if kind in ("update", "move", "delete"):
        return Step(
            kind,
            pick=draw(st.integers(0, 1000)),
            value=draw(_values("heart_rate")),
            at_ms=-draw(_OFFSETS),
        )
    if kind == "advance":
        return Step(
            kind,
            at_ms=draw(
                st.sampled_from([1_000, 59_000, 61_000, 5 * MINUTE]) | st.integers(1, 20 * MINUTE)
            ),
        )
    return Step(kind, at_ms=draw(st.integers(0, 10 * MINUTE)))


@dataclass(frozen=True)
class Program:
    started_ago_ms: int
    first: tuple[tuple[str, int, float], ...]
    steps: tuple[Step, ...]


@st.composite
def programs(draw: st.DrawFn) -> Program:
    return Program(
        started_ago_ms=draw(st.integers(0, 100 * MINUTE)),
        first=tuple(draw(st.lists(_sample(), min_size=1, max_size=8))),
        steps=tuple(draw(st.lists(_step(), min_size=1, max_size=7))),
    )


class Client:
    """One dashboard's copy of one view, kept current with deltas where the server sends them."""

    def __init__(
        self,
        tc: TelemetryClient,
        headers: dict[str, str],
        session_id: str,
        view: tuple[int, str],
        apply_delta: ApplyDelta,
    ) -> None:
        self.tc, self.headers, self.session_id = tc, headers, session_id
        self.apply_delta = apply_delta
        self.params = {"window_minutes": view[0], "resolution": view[1], "metrics": "all"}
        self.payload: dict[str, Any] | None = None
        self.deltas = 0

    async def look(self) -> None:
        """GET the view as a dashboard would after a change or a clock step: a stale answer
        (the live edge moved) schedules the recompute."""
        await self.tc.get(self.headers, self.session_id, **self.params)

    async def refresh(self) -> None:
        params = dict(self.params)
        if self.payload is not None:
            params["since_watermark"] = self.payload["source_watermark"]
        body = (await self.tc.get(self.headers, self.session_id, **params)).json()
        assert body["state"] in ("ready", "no_data"), body
        if "delta" in body:
            assert self.payload is not None
            self.payload = self.apply_delta(self.payload, body["delta"])
            self.deltas += 1
        else:
            self.payload = body["telemetry"]
        full = (await self.tc.get(self.headers, self.session_id, **self.params)).json()
        assert self.payload == full["telemetry"]


@on_real_services(25)
@given(program=programs())
async def test_incremental_payloads_equal_full_recomputes_and_deltas_rebuild_them(
    tc, users, apply_delta, view_memo, program: Program
):
    """After every insert, update, move, delete, late or early sample, clock advance and session
    end: each cached view equals a full recompute byte for byte, a live view recomputed later with
    nothing new equals a full recompute then, the session's views recomputed in one batch equal
    each one computed alone (payload, partials, history), and deltas applied in order rebuild
    each view."""
    user_id, token = await users.create()
    headers = {"Authorization": f"Bearer {token}"}
    tc.clock.advance(24 * HOUR)
    start = tc.clock.now_ms() - program.started_ago_ms
    session_id = await tc.start_session(headers, start)
    records: list[tuple[str, str, str]] = []  # (source, record_id, metric)
    serial = 0

    def wire(samples: tuple[tuple[str, int, float], ...]) -> list[dict[str, Any]]:
        nonlocal serial
        now = tc.clock.now_ms()
        batch = []
        for metric, offset, value in samples:
            serial += 1
            record = ("polar", f"r{serial}", metric)
            records.append(record)
            at = max(now + offset, start - 170 * MINUTE)
            batch.append(
                {
                    "source": "polar",
                    "record_id": record[1],
                    "metric": metric,
                    "value": value,
                    "start": iso(at),
                }
            )
        return batch

    await tc.post_samples(headers, wire(program.first))
    await tc.settle()
    clients = [Client(tc, headers, session_id, view, apply_delta) for view in VIEWS]
    for client in clients:
        await tc.get(headers, session_id, **client.params)
    await tc.settle()
    for client in clients:
        await client.refresh()
    ended = False
    data_steps_while_live = 0
    before = await compute_paths(tc)
    hits = view_memo.hits
    tails = 0
    for step in program.steps:
        now = tc.clock.now_ms()
        result: dict[str, Any] = {}
        if step.kind == "add":
            result = await tc.post_samples(headers, wire(step.samples))
        elif step.kind in ("update", "move", "delete"):
            source, record_id, metric = records[step.pick % len(records)]
            if step.kind == "delete":
                result = await tc.post_samples(headers, deleted=[(source, record_id)])
            else:
                low, high = METRICS[metric]
                value = min(max(step.value, low), high)
                at = now + step.at_ms if step.kind == "move" else None
                sample = {
                    "source": source,
                    "record_id": record_id,
                    "metric": metric,
                    "value": value,
                }
                if at is None:
                    # an update of the value keeps the time: resend it as it is stored
                    async with tc.db.read() as conn:
                        at = await conn.scalar(sa.text(
                            "SELECT start_ms FROM health_samples WHERE record_id = :r AND source = :s"
                        ), {"r": record_id, "s": source})  # fmt: skip
                sample["start"] = iso(max(at, start - 170 * MINUTE))
                result = await tc.post_samples(headers, [sample])
        elif step.kind == "advance":
            tc.clock.advance(step.at_ms)
        elif not ended:
            await tc.end_session(headers, session_id, max(start, now - step.at_ms))
            ended = True
        changed = sum(result.get(k, 0) for k in ("inserted", "updated", "deleted"))
        if changed and not ended:
            data_steps_while_live += 1
        await tc.settle()
        for client in clients:
            await client.look()
        await tc.settle()
        await _assert_cached_equals_full(tc, session_id, user_id)
        views = await cached_views(tc, session_id, user_id)
        now = tc.clock.now_ms()
        # every view again in one batch (one change-log read, one GROUP BY), as the computer
        # batches them: byte for byte what each gives alone
        batched = await recompute_batch(tc, [(view.key, now, view.stored) for view in views])
        for view, together in zip(views, batched, strict=True):
            # a recompute now from the stored partials, with or without news (the live tick):
            # decoded from the row, and from what this process remembers of its last save
            later = await recompute(tc, view.key, now, view.stored, memo=None)
            remembered = view_memo.copy()
            warm = await recompute(tc, view.key, now, view.stored, memo=remembered)
            assert remembered.hits == 1, view.key  # the computer's last save, from memory
            full = await recompute(tc, view.key, now, None, memo=None)
            # and with the rows of the tail a claim reads for a live view this process saved
            tailed, guessed = await recompute_from_tail(tc, view.key, now, view.stored, view_memo)
            tails += guessed
            assert later.blob == full.blob == warm.blob == together.blob == tailed.blob, view.key
            assert later.partials == full.partials == warm.partials == together.partials
            assert later.partials == tailed.partials, view.key
            assert later.history == warm.history == together.history == tailed.history, view.key
        for client in clients:
            await client.refresh()
    after = await compute_paths(tc)
    incremental = after.get("incremental", 0) - before.get("incremental", 0)
    # every change while live recomputes both cached views from their partials, from memory
    assert incremental >= 2 * data_steps_while_live
    assert view_memo.hits - hits >= incremental
    # while live, the views were recomputed from the tails their claims read, too
    assert tails or not data_steps_while_live


# -- when the log cannot prove completeness ---------------------------------------------------


async def _live_session(tc: TelemetryClient, users) -> tuple[str, str, dict[str, str], int]:
    user_id, token = await users.create()
    headers = {"Authorization": f"Bearer {token}"}
    start = tc.clock.now_ms() - 30 * MINUTE
    session_id = await tc.start_session(headers, start)
    await tc.post_samples(headers, [hr(f"a{i}", start + i * MINUTE, 60.0 + i) for i in range(30)])
    return user_id, session_id, headers, start


#: the view a watching client of the delta tests holds
DELTA_VIEW = {"window_minutes": 60, "resolution": "1m", "metrics": "all"}


async def _watched_live_session(
    tc: TelemetryClient, users
) -> tuple[str, dict[str, str], int, dict[str, Any]]:
    """A live session settled, and its view's payload as a watching client holds it before the
    update a test makes: (session id, headers, start, payload)."""
    _user_id, session_id, headers, start = await _live_session(tc, users)
    await tc.settle()
    base = (await tc.get(headers, session_id, **DELTA_VIEW)).json()["telemetry"]
    return session_id, headers, start, base


async def test_a_hole_in_the_change_log_falls_back_to_a_full_compute(mtc, users):
    """With the entry of one change missing from the log the compute is full (and exact); with
    the log complete it is incremental. Either way the log is pruned up to the saved watermark."""
    user_id, session_id, headers, start = await _live_session(mtc, users)
    key = TelemetryKey(session_id, 60, Resolution.ONE_MINUTE, user_id=user_id)
    assert await _compute(mtc, key) is ComputeOutcome.COMPUTED
    assert (await compute_paths(mtc)) == {"full_no_partials": 1.0}
    first = (await mtc.post_samples(headers, [hr("b", start + 31 * MINUTE, 90.0)]))["change_seq"]
    second = (await mtc.post_samples(headers, [hr("c", start + 5 * MINUTE, 91.5)]))["change_seq"]
    assert (await log_seqs(mtc, session_id))[-2:] == [first, second]
    async with mtc.db.write() as conn:
        await conn.execute(
            sa.delete(session_changes).where(
                session_changes.c.session_id == session_id, session_changes.c.change_seq == first
            )
        )
    assert await _compute(mtc, key) is ComputeOutcome.COMPUTED
    assert (await compute_paths(mtc)).get("full_log_hole") == 1.0
    await _assert_cached_equals_full(mtc, session_id, user_id)
    assert await log_seqs(mtc, session_id) == []

    await mtc.post_samples(headers, [hr("d", start + 6 * MINUTE, 95.0)])
    await mtc.post_samples(headers, [hr("e", start + 32 * MINUTE, 96.0)])
    assert await _compute(mtc, key) is ComputeOutcome.COMPUTED
    assert (await compute_paths(mtc)).get("incremental") == 1.0
    await _assert_cached_equals_full(mtc, session_id, user_id)


async def test_unreadable_partials_and_a_new_compute_version_compute_in_full(mtc, users):
    """Partials and a history that do not decode, and a view at another compute version (which
    has none), give a full compute, never an error."""
    user_id, session_id, headers, start = await _live_session(mtc, users)
    key = TelemetryKey(session_id, 60, Resolution.ONE_MINUTE, user_id=user_id)
    await _compute(mtc, key)
    await mtc.post_samples(headers, [hr("b", start + 31 * MINUTE, 90.0)])
    async with mtc.db.write() as conn:
        await conn.execute(
            sa.update(telemetry_cache)
            .where(telemetry_cache.c.session_id == session_id)
            .values(partials=b"not partials", history=b'[[1, "not a history"')
        )
    assert await _compute(mtc, key) is ComputeOutcome.COMPUTED
    assert (await compute_paths(mtc)).get("full_no_partials") == 2.0
    await _assert_cached_equals_full(mtc, session_id, user_id)
    other_version = TelemetryKey(
        session_id, 60, Resolution.ONE_MINUTE, key.compute_version + 1, user_id
    )
    computed = await recompute(mtc, other_version, mtc.clock.now_ms(), None)
    assert computed.path is ComputePath.FULL_NO_PARTIALS


async def test_more_dirty_ranges_than_one_query_takes_stay_exact(mtc, users):
    """Late samples in ten buckets apart: the GROUP BY merges its ranges down to MAX_RANGES and
    so aggregates clean buckets between them again; each comes back once, not twice."""
    user_id, session_id, headers, start = await _live_session(mtc, users)
    key = TelemetryKey(session_id, 60, Resolution.ONE_MINUTE, user_id=user_id)
    await _compute(mtc, key)
    late = [hr(f"late{i}", start + 2 * i * MINUTE + 30_000, 120.0 + i) for i in range(10)]
    assert len(late) > MAX_RANGES
    await mtc.post_samples(headers, late)
    await _compute(mtc, key)
    assert (await compute_paths(mtc)).get("incremental") == 1.0
    await _assert_cached_equals_full(mtc, session_id, user_id)


async def test_ending_the_session_logs_it_whole_then_late_samples_are_incremental(mtc, users):
    """Ending moves the window and the phases: the log says "whole session", the compute is full;
    a late sample after the end is incremental again, and exact."""
    user_id, session_id, headers, start = await _live_session(mtc, users)
    key = TelemetryKey(session_id, 60, Resolution.ONE_MINUTE, user_id=user_id)
    await _compute(mtc, key)
    await mtc.end_session(headers, session_id, start + 29 * MINUTE + 30_000)
    await _compute(mtc, key)
    assert (await compute_paths(mtc)).get("full_whole_session") == 1.0
    await mtc.post_samples(headers, [hr("late", start + 29 * MINUTE + 45_000, 120.0)])
    await _compute(mtc, key)
    assert (await compute_paths(mtc)).get("incremental") == 1.0
    await _assert_cached_equals_full(mtc, session_id, user_id)


async def test_the_log_is_pruned_only_once_every_cached_view_is_past_an_entry(mtc, users):
    """Two cached views: entries stay while one of them still needs them, and go once both have
    been recomputed past them."""
    user_id, session_id, headers, start = await _live_session(mtc, users)
    one = TelemetryKey(session_id, 60, Resolution.ONE_MINUTE, user_id=user_id)
    five = TelemetryKey(session_id, 15, Resolution.FIVE_MINUTES, user_id=user_id)
    await _compute(mtc, one)
    await _compute(mtc, five)
    # an incremental save prunes when its watermark crosses a multiple of PRUNE_EVERY
    seq, n = 1, 0
    while seq % PRUNE_EVERY:
        n += 1
        seq = (await mtc.post_samples(headers, [hr(f"b{n}", start + 31 * MINUTE + n, 90.0)]))[
            "change_seq"
        ]
    await _compute(mtc, one)
    assert seq in await log_seqs(mtc, session_id)
    await _compute(mtc, five)
    assert await log_seqs(mtc, session_id) == []
    assert (await compute_paths(mtc)).get("incremental") == 2.0


# -- the live tick: time moves, nothing new ----------------------------------------------------


async def test_a_live_view_recomputed_later_with_nothing_new_reads_no_samples(mtc, users):
    """The live end moved and no change is logged: the compute re-assembles the stored rows and
    runs no SQL over the samples; a sample that was ahead of the old end and is inside the new
    one is re-aggregated (one query), and both equal a full recompute at that time."""
    user_id, session_id, headers, _start = await _live_session(mtc, users)
    key = TelemetryKey(session_id, 60, Resolution.ONE_MINUTE, user_id=user_id)
    now = mtc.clock.now_ms()
    await mtc.post_samples(headers, [hr("ahead", now + 3 * MINUTE + 5_000, 101.0)])
    await _compute(mtc, key)
    (view,) = await cached_views(mtc, session_id, user_id)
    queries = SampleQueries()
    for advance in (90_000, 60_000, 3 * MINUTE):
        mtc.clock.advance(advance)
        later = mtc.clock.now_ms()
        with queries.watching(mtc.db.engine):
            queries.count = 0
            computed = await recompute(mtc, key, later, view.stored)
            read = queries.count
        assert computed.path is ComputePath.INCREMENTAL
        assert computed.blob == (await recompute(mtc, key, later, None)).blob
        reached = later > now + 3 * MINUTE + 5_000
        assert read == (1 if reached else 0), (advance, read)
        payload = orjson.loads(unpack(computed.blob).json(ALL_CODES))
        assert payload["window"]["end_ms"] == later


async def test_a_live_tick_through_the_computer_reads_no_samples(mtc, users):
    """The computer's live tick (the live edge crossed a bucket boundary, nothing new): it is
    incremental, runs no SQL over the samples, and saves exactly what a full compute gives."""
    user_id, session_id, _headers, _start = await _live_session(mtc, users)
    key = TelemetryKey(session_id, 60, Resolution.ONE_MINUTE, user_id=user_id)
    await _compute(mtc, key)
    mtc.clock.advance(MINUTE)
    queries = SampleQueries()
    with queries.watching(mtc.db.engine):
        outcome = await mtc.parts.computer.compute(key, reason=ScheduleReason.LIVE_TICK)
    assert outcome is ComputeOutcome.COMPUTED
    assert queries.count == 0
    assert (await compute_paths(mtc)).get("incremental") == 1.0
    (view,) = await cached_views(mtc, session_id, user_id)
    assert view.computed_at_ms == mtc.clock.now_ms()
    await _assert_cached_equals_full(mtc, session_id, user_id)


# -- what a save tells, and deltas -------------------------------------------------------------


async def test_session_updated_names_the_changed_buckets_and_the_previous_watermark(
    settings, clock, users
):
    """A sample in one bucket: ``changed`` is exactly that bucket, ``base_watermark`` the save
    before; the first save of a view covers its whole window and has no base."""
    recorder = RecordingListener()
    async with telemetry_client(
        settings, clock, Seams(clock=clock, telemetry_listener=recorder)
    ) as tc:
        _user_id, session_id, headers, start = await _live_session(tc, users)
        await tc.settle()
        first = [e for e in recorder.events if e["session_id"] == session_id][-1]
        assert first["base_watermark"] is None
        assert first["changed_from_ms"] == start - HOUR
        seq = (await tc.post_samples(headers, [hr("x", start + 7 * MINUTE + 10_000, 99.0)]))[
            "change_seq"
        ]
        await tc.settle()
        update = recorder.events[-1]
        assert update["source_watermark"] == seq
        assert update["base_watermark"] == first["source_watermark"]
        bucket = start + 7 * MINUTE
        assert (update["changed_from_ms"], update["changed_to_ms"]) == (bucket, bucket + MINUTE)


async def test_a_delta_carries_only_what_changed_and_rebuilds_the_payload(tc, users, apply_delta):
    """A client at the previous watermark gets a delta: one bucket's columns and the parts that
    moved; applying it gives the full payload. A watermark the history does not hold gets the
    full payload, and so does a client that sent no watermark."""
    session_id, headers, start, base = await _watched_live_session(tc, users)
    params = DELTA_VIEW
    await tc.post_samples(headers, [hr("x", start + 7 * MINUTE + 10_000, 99.0)])
    await tc.settle()
    response = await tc.get(headers, session_id, since_watermark=base["source_watermark"], **params)
    body = response.json()
    assert response.status_code == 200 and body["state"] == "ready"
    assert "telemetry" not in body and response.headers["ETag"]
    delta = body["delta"]
    entry = delta["metrics"]["heart_rate"]
    assert (entry["from_t"], entry["to_t"]) == (start + 7 * MINUTE, start + 8 * MINUTE)
    assert entry["t"] == [start + 7 * MINUTE] and entry["count"] == [2]
    assert "display_name" not in entry and "gaps" not in entry
    full = (await tc.get(headers, session_id, **params)).json()["telemetry"]
    # insights travel one by one: the during mean moved, the baseline (before phase) did not
    assert "during_mean" in entry["insights"] and "baseline" not in entry["insights"]
    assert apply_delta(base, delta) == full
    assert len(response.content) < len(orjson.dumps(full))

    unknown = await tc.get(
        headers, session_id, since_watermark=base["source_watermark"] - 1, **params
    )
    assert unknown.json()["telemetry"] == full
    current = await tc.http.get(
        f"/api/v1/sessions/{session_id}/telemetry",
        params={**params, "since_watermark": base["source_watermark"]},
        headers={**headers, "If-None-Match": response.headers["ETag"]},
    )
    assert current.status_code == 304


async def test_a_stale_answer_is_a_delta_too(tc, users, apply_delta):
    """While a recompute is due (the live edge moved on), a client that holds a payload gets the
    stale answer as a delta with its Retry-After: under load a dashboard keeps receiving deltas
    instead of a full payload per stale answer."""
    session_id, headers, start, base = await _watched_live_session(tc, users)
    params = DELTA_VIEW
    await tc.post_samples(headers, [hr("s", start + 7 * MINUTE + 10_000, 99.0)])
    await tc.settle()
    saved = (await tc.get(headers, session_id, **params)).json()["telemetry"]
    tc.clock.advance(2 * MINUTE)

    response = await tc.get(headers, session_id, since_watermark=base["source_watermark"], **params)
    body = response.json()
    assert response.status_code == 200 and body["state"] == "stale", body
    assert "telemetry" not in body and body["retry_after_seconds"] >= 1
    assert response.headers["Retry-After"] == str(body["retry_after_seconds"])
    assert apply_delta(base, body["delta"]) == saved
    await tc.settle()
    assert (await tc.get(headers, session_id, **params)).json()["state"] == "ready"


async def test_a_kept_deltas_ready_answer_is_never_served_once_its_view_is_stale(
    tc, users, apply_delta
):
    """Every client of an update gets the kept delta's ready answer as it was made (same bytes,
    same ETag, a 304 for If-None-Match): and once the view it was read for is no longer current
    (here the live edge moved on, with the same row and the same kept delta), the same delta
    is answered stale with its Retry-After, and the recompute it calls for runs."""
    session_id, headers, start, base = await _watched_live_session(tc, users)
    params = DELTA_VIEW
    since = base["source_watermark"]
    await tc.post_samples(headers, [hr("s", start + 7 * MINUTE + 10_000, 99.0)])
    await tc.settle()
    saved = (await tc.get(headers, session_id, **params)).json()["telemetry"]
    ready = [await tc.get(headers, session_id, since_watermark=since, **params) for _ in range(3)]
    assert {r.json()["state"] for r in ready} == {"ready"}
    assert len({r.content for r in ready}) == 1 and len({r.headers["etag"] for r in ready}) == 1
    assert apply_delta(base, ready[0].json()["delta"]) == saved
    etag = {"If-None-Match": ready[0].headers["etag"]}
    revalidated = await tc.get(headers | etag, session_id, since_watermark=since, **params)
    assert revalidated.status_code == 304 and revalidated.headers["etag"] == etag["If-None-Match"]
    tc.clock.advance(2 * MINUTE)

    # the view's rows held by a write (PostgreSQL: their row locks; SQLite: the write lock), so
    # the recompute the first stale answer calls for cannot save before the second request
    async with tc.db.write() as holding:
        await holding.execute(
            sa.text(
                "UPDATE telemetry_cache SET updated_at_ms = updated_at_ms "
                "WHERE session_id = :session_id"
            ),
            {"session_id": session_id},
        )
        for extra in ({}, etag):
            stale = await tc.get(headers | extra, session_id, since_watermark=since, **params)
            body = stale.json()
            assert stale.status_code == 200 and body["state"] == "stale", body
            assert stale.headers["Retry-After"] == str(body["retry_after_seconds"])
            assert "etag" not in stale.headers
            assert apply_delta(base, body["delta"]) == saved
    await tc.settle()
    again = (await tc.get(headers, session_id, **params)).json()
    assert (
        again["state"] == "ready" and again["telemetry"]["computed_at_ms"] > saved["computed_at_ms"]
    )


async def test_clients_at_one_watermark_share_a_delta_and_the_next_save_gets_its_own(
    tc, users, apply_delta
):
    """Every client watching a session asks for the same delta after an update: each gets the
    same bytes. After another save, a client at the first watermark gets the delta to the new
    payload (never the one kept for the save before), and it still rebuilds the payload."""
    session_id, headers, start, base = await _watched_live_session(tc, users)
    params = DELTA_VIEW
    since = base["source_watermark"]
    await tc.post_samples(headers, [hr("a", start + 7 * MINUTE + 10_000, 99.0)])
    await tc.settle()
    answers = [await tc.get(headers, session_id, since_watermark=since, **params) for _ in range(3)]
    assert len({a.content for a in answers}) == 1
    first = answers[0].json()["delta"]
    assert set(first["metrics"]["heart_rate"]["t"]) == {start + 7 * MINUTE}

    await tc.post_samples(headers, [hr("b", start + 9 * MINUTE + 10_000, 120.0)])
    await tc.settle()
    later = (await tc.get(headers, session_id, since_watermark=since, **params)).json()["delta"]
    assert later["source_watermark"] > first["source_watermark"]
    entry = later["metrics"]["heart_rate"]
    assert (entry["from_t"], entry["to_t"]) == (start + 7 * MINUTE, start + 10 * MINUTE)
    full = (await tc.get(headers, session_id, **params)).json()["telemetry"]
    assert apply_delta(base, later) == full


async def test_since_watermark_must_be_a_watermark(tc, users):
    """A negative or non-numeric since_watermark is a 422 problem, not a full answer."""
    _user_id, session_id, headers, _start = await _live_session(tc, users)
    for bad in ("-1", "x"):
        response = await tc.get(headers, session_id, since_watermark=bad)
        assert response.status_code == 422
        assert response.headers["content-type"].startswith("application/problem+json")
