"""Computes batched across views: a batch saves byte for byte what the same views computed one by
one save (payload, partials, history), a poisoned view fails alone (its failure and backoff are
recorded, every other view is saved and told once, and it is retried), and a batch of many due
views costs one claim, one change-log read, one GROUP BY and one save statement (on PostgreSQL a
live update the claim's tail covers: the claim and the save).

Real app, real SQLite and PostgreSQL; the computes run only when a test asks the computer.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from functools import partial

import pytest

from tests.doubles import RecordingListener
from tests.telemetry.conftest import MINUTE, TelemetryClient, hr, telemetry_client
from tests.telemetry.incremental_helpers import (
    Statements,
    cached_views,
    recompute,
    recompute_batch,
)
from tests.telemetry.test_incremental import ManualScheduler
from vitalcast.clock import ManualClock
from vitalcast.db.engine import Database, create_engine
from vitalcast.observability import Metrics
from vitalcast.sessions.models import Session
from vitalcast.settings import Settings
from vitalcast.telemetry.compute.aggregate import Assembled, assemble
from vitalcast.telemetry.compute.downsample import MetricSeries
from vitalcast.telemetry.compute.incremental import assemble_batch
from vitalcast.telemetry.grid import TelemetryWindow
from vitalcast.telemetry.keys import ComputeOutcome, Resolution, ScheduleReason, TelemetryKey
from vitalcast.telemetry.ports import PostSaveHooks, SavedView
from vitalcast.telemetry.read.answer import COMPUTE_FAILED
from vitalcast.telemetry.run.computer import TelemetryComputer
from vitalcast.telemetry.store import queries
from vitalcast.telemetry.store.leases import BACKOFF_BASE_MS, SessionTelemetryCacheRepository
from vitalcast.wiring import Seams

VIEWS = ((60, Resolution.ONE_MINUTE), (15, Resolution.FIVE_MINUTES))
UPDATE = ScheduleReason.LIVE_UPDATE


@pytest.fixture
async def mtc(settings, clock) -> AsyncIterator[TelemetryClient]:
    """An app whose computes run only when the test asks the computer."""
    seams = Seams(clock=clock, scheduler_wrapper=ManualScheduler().wrap)
    async with telemetry_client(settings, clock, seams) as client:
        yield client


async def _live_sessions(tc: TelemetryClient, users) -> tuple[list[TelemetryKey], dict]:
    """Three live sessions of two users (one user has two: their samples are shared), each
    with a few samples; every view of ``VIEWS`` of each, and the headers of each session."""
    keys: list[TelemetryKey] = []
    headers_of: dict[str, dict[str, str]] = {}
    for user_sessions in (2, 1):
        user_id, token = await users.create()
        headers = {"Authorization": f"Bearer {token}"}
        for n in range(user_sessions):
            start = tc.clock.now_ms() - (40 - 10 * n) * MINUTE
            session_id = await tc.start_session(headers, start)
            await tc.post_samples(
                headers,
                [hr(f"s{n}-{i}", start + i * MINUTE + 7_000, 60.0 + i % 9) for i in range(20)],
            )
            headers_of[session_id] = headers
            keys += [TelemetryKey(session_id, w, r, user_id=user_id) for w, r in VIEWS]
    return keys, headers_of


async def _rows(tc: TelemetryClient, keys: list[TelemetryKey]) -> dict[TelemetryKey, tuple]:
    """(payload, partials, history) of each key's row."""
    found = {}
    for key in keys:
        for view in await cached_views(tc, key.session_id, key.user_id):
            if view.key == key:
                found[key] = (view.payload, view.stored.partials, view.stored.history)
    return found


async def _failed_once(tc: TelemetryClient, keys: list[TelemetryKey]) -> None:
    """Each view of ``keys`` failed once: lease given back, the failure recorded, and its next
    attempt one base backoff from now."""
    now = tc.clock.now_ms()
    async with tc.db.read() as conn:
        for key in keys:
            row = await queries.row_of(conn, key)
            assert row is not None and row.lease_owner is None
            assert (row.attempts, row.error_code) == (1, COMPUTE_FAILED)
            assert row.next_attempt_ms == now + BACKOFF_BASE_MS


async def test_a_batch_saves_byte_for_byte_what_computes_one_by_one_save(mtc, users):
    """Six views of three sessions (two users), first full then incremental after late, live
    and deleted samples: what one batch saves is what each view computed alone from the same
    row gives, payload, partials and history alike."""
    keys, headers_of = await _live_sessions(mtc, users)
    for step in range(3):
        now = mtc.clock.now_ms()
        before = {
            v.key: v.stored
            for k in keys[::2]
            for v in await cached_views(mtc, k.session_id, k.user_id)
        }
        alone = {key: await recompute(mtc, key, now, before.get(key), memo=None) for key in keys}
        batched = await recompute_batch(mtc, [(key, now, before.get(key)) for key in keys])
        outcomes = await mtc.parts.computer.compute_batch([(key, UPDATE) for key in keys])
        assert set(outcomes.values()) == {ComputeOutcome.COMPUTED}, step
        saved = await _rows(mtc, keys)
        for key, together in zip(keys, batched, strict=True):
            one = alone[key]
            assert (together.blob, together.partials, together.history) == (
                one.blob,
                one.partials,
                one.history,
            ), (step, key)
            assert saved[key] == (one.blob, one.partials, one.history), (step, key)
        # news for two of the three sessions: a late sample, one at the live edge, a deletion
        first, second = keys[0].session_id, keys[4].session_id
        mtc.clock.advance(5 * MINUTE)
        now = mtc.clock.now_ms()
        await mtc.post_samples(
            headers_of[first],
            [hr(f"late{step}", now - 25 * MINUTE, 101.0), hr(f"edge{step}", now - 1, 88.0)],
        )
        await mtc.post_samples(headers_of[second], deleted=[("polar", "s0-3")])


class Poison:
    """The assembly of ``assemble``, raising for one session while ``on``."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.on = True
        self.raised = 0

    def __call__(
        self,
        session: Session,
        key: TelemetryKey,
        window: TelemetryWindow,
        series: Mapping[str, MetricSeries],
        now_ms: int,
    ) -> Assembled:
        if self.on and session.id == self.session_id:
            self.raised += 1
            raise ValueError("a poisoned view")
        return assemble(session, key, window, series, now_ms)


@asynccontextmanager
async def _computer(
    settings: Settings,
    clock: ManualClock,
    poison: Poison,
    listener: RecordingListener,
    saved: list[SavedView],
) -> AsyncIterator[TelemetryComputer]:
    """A computer on the app's database whose assembly is ``poison``'s, telling ``listener``
    and, through a post-save hook, ``saved``."""
    db = Database(create_engine(settings.resolved_database_url))
    hooks = PostSaveHooks()

    async def record(view: SavedView) -> None:
        saved.append(view)

    hooks.register(record)
    try:
        yield TelemetryComputer(
            db,
            clock,
            Metrics(),
            listener,
            lease_ms=30_000,
            aggregator=partial(assemble_batch, assembler=poison),
            cache=SessionTelemetryCacheRepository(),
            hooks=hooks,
        )
    finally:
        await db.dispose()


async def test_a_poisoned_view_fails_alone_and_is_retried_after_its_backoff(mtc, users, settings):
    """One session's assembly raises: its two views fail (failure, attempts and backoff
    recorded, their last payloads kept), the four others are saved, each told to the listener
    and the post-save hooks once; retried before the backoff they back off, after it (the
    poison gone) they are saved."""
    keys, headers_of = await _live_sessions(mtc, users)
    assert set((await mtc.parts.computer.compute_batch([(k, UPDATE) for k in keys])).values()) == {
        ComputeOutcome.COMPUTED
    }
    poisoned = keys[2].session_id
    good = [k for k in keys if k.session_id != poisoned]
    bad = [k for k in keys if k.session_id == poisoned]
    kept = await _rows(mtc, bad)
    for session_id, headers in headers_of.items():
        await mtc.post_samples(
            headers, [hr(f"new-{session_id}", mtc.clock.now_ms() - MINUTE, 99.0)]
        )
    poison, listener, saved = Poison(poisoned), RecordingListener(), []
    async with _computer(settings, mtc.clock, poison, listener, saved) as computer:
        outcomes = await computer.compute_batch([(k, UPDATE) for k in keys])
        assert {k: outcomes[k] for k in bad} == dict.fromkeys(bad, ComputeOutcome.FAILED)
        assert {k: outcomes[k] for k in good} == dict.fromkeys(good, ComputeOutcome.COMPUTED)
        assert poison.raised == len(bad)
        assert sorted((e["session_id"], e["window_minutes"]) for e in listener.events) == sorted(
            (k.session_id, k.window_minutes) for k in good
        )
        assert sorted((v.key.session_id, v.key.window_minutes) for v in saved) == sorted(
            (k.session_id, k.window_minutes) for k in good
        )
        now = mtc.clock.now_ms()
        await _failed_once(mtc, bad)
        async with mtc.db.read() as conn:
            for key in good:
                row = await queries.row_of(conn, key)
                assert row is not None and (row.attempts, row.error_code) == (0, None)
        assert await _rows(mtc, bad) == kept
        for key in good:
            full = await recompute(mtc, key, now, None)
            assert (await _rows(mtc, [key]))[key][0] == full.blob

        again = await computer.compute_batch([(k, UPDATE) for k in keys])
        assert {k: again[k] for k in bad} == dict.fromkeys(bad, ComputeOutcome.BACKING_OFF)
        poison.on = False
        mtc.clock.advance(BACKOFF_BASE_MS)
        healed = await computer.compute_batch([(k, UPDATE) for k in bad])
        assert healed == dict.fromkeys(bad, ComputeOutcome.COMPUTED)
        now = mtc.clock.now_ms()
        for key in bad:
            full = await recompute(mtc, key, now, None)
            assert (await _rows(mtc, [key]))[key][0] == full.blob


@contextmanager
def _units(db: Database) -> Iterator[list[bool]]:
    """Whether each unit of work the calling task has ``db`` run meanwhile writes (instruments
    the real one; the app's periodic work, e.g. the revocation look, runs units of its own)."""
    seen: list[bool] = []
    run = db.unit
    task = asyncio.current_task()

    async def counted(unit, *, write=False, derived=False, alone=False, short=False):
        if asyncio.current_task() is task:
            seen.append(write or derived)
        return await run(unit, write=write, derived=derived, alone=alone, short=short)

    db.unit = counted  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        del db.unit


async def test_a_batch_of_due_views_is_one_claim_one_group_by_and_one_save(mtc, users):
    """Six due views (three sessions, each with news) cost one claim, one change-log read, one
    GROUP BY and one save statement, and at most one prune, in two units of work (the claim
    folded into the read, the save); one view alone costs the same. On PostgreSQL the claim
    also reads the change logs and the GROUP BY rows of each view's tail, guessed from this
    process's last save of it: a live update is two statements, the claim and the save. News
    older than the tail costs its GROUP BY again, and is saved as a full compute gives it.
    /metrics shows each batch's size and its time per stage."""
    keys, headers_of = await _live_sessions(mtc, users)
    await mtc.parts.computer.compute_batch([(k, UPDATE) for k in keys])
    pg = not mtc.db.sqlite

    async def news(round_: int, ago_ms: int) -> None:
        for session_id, headers in headers_of.items():
            now = mtc.clock.now_ms()
            await mtc.post_samples(headers, [hr(f"n{round_}-{session_id}", now - ago_ms, 77.0)])

    rounds = ((keys, MINUTE, not pg), (keys[:1], MINUTE, not pg), (keys, 10 * MINUTE, True))
    for round_, (batch, ago_ms, group_by) in enumerate(rounds):
        await news(round_, ago_ms)
        task = asyncio.current_task()
        with Statements(task=task).watching() as statements, _units(mtc.db) as units:
            outcomes = await mtc.parts.computer.compute_batch([(k, UPDATE) for k in batch])
        assert set(outcomes.values()) == {ComputeOutcome.COMPUTED}, outcomes
        # the claim with the change-log read and the GROUP BY, then the save
        assert units == [True, True], units
        counts = {kind: statements.count(kind) for kind in Statements.KINDS}
        assert counts["prune"] <= 1, counts
        assert dataclasses.replace(_Counts(**counts), prune=0) == _Counts(
            claim=1, save=1, group_by=int(group_by), log_read=int(not pg), prune=0, cache_other=0
        ), (round_, statements.seen)
        assert len(statements.seen) == 2 + 2 * (not pg) + (pg and group_by) + counts["prune"]
        now = mtc.clock.now_ms()
        for key, (payload, _partials, _history) in (await _rows(mtc, batch)).items():
            assert payload == (await recompute(mtc, key, now, None)).blob, (round_, key)
    # /metrics: the batches' sizes (6, 6, 1 and 6 views) and where their time went
    text = (await mtc.http.get("/metrics")).text
    assert "vitalcast_compute_batch_views_count 4.0" in text
    assert "vitalcast_compute_batch_views_sum 19.0" in text
    for stage in ("read", "aggregate", "assemble", "save", "push"):
        assert f'vitalcast_compute_stage_seconds_count{{stage="{stage}"}} 4.0' in text, stage


@dataclasses.dataclass(frozen=True)
class _Counts:
    claim: int
    save: int
    group_by: int
    log_read: int
    prune: int
    cache_other: int


async def test_a_read_failing_after_the_claim_records_its_failure_and_backoff(mtc, users):
    """The claim and the read are one unit of work: when the read fails (here the samples the
    GROUP BY reads are out of reach), the failure and its backoff are still recorded under the
    leases (taken again on SQLite, where the claim went with the unit; held on PostgreSQL, where
    the claim stands alone: there the claim reading the views' tails fails with the samples, and
    is taken again without them), the payloads kept; after the backoff the views are saved."""
    keys, headers_of = await _live_sessions(mtc, users)
    computer = mtc.parts.computer
    assert set((await computer.compute_batch([(k, UPDATE) for k in keys])).values()) == {
        ComputeOutcome.COMPUTED
    }
    kept = await _rows(mtc, keys)
    for session_id, headers in headers_of.items():
        await mtc.post_samples(headers, [hr(f"n-{session_id}", mtc.clock.now_ms() - MINUTE, 88.0)])
    async with mtc.db.write() as conn:
        await conn.exec_driver_sql("ALTER TABLE health_samples RENAME TO health_samples_away")
    try:
        with Statements().watching() as statements:
            outcomes = await computer.compute_batch([(k, UPDATE) for k in keys])
    finally:
        async with mtc.db.write() as conn:
            await conn.exec_driver_sql("ALTER TABLE health_samples_away RENAME TO health_samples")
    assert outcomes == dict.fromkeys(keys, ComputeOutcome.FAILED)
    # SQLite: the claim, then again to record the failures; PostgreSQL: with and without tails
    assert statements.count("claim") == 2, statements.seen
    await _failed_once(mtc, keys)
    assert await _rows(mtc, keys) == kept
    again = await computer.compute_batch([(k, UPDATE) for k in keys])
    assert again == dict.fromkeys(keys, ComputeOutcome.BACKING_OFF)
    mtc.clock.advance(BACKOFF_BASE_MS)
    healed = await computer.compute_batch([(k, UPDATE) for k in keys])
    assert healed == dict.fromkeys(keys, ComputeOutcome.COMPUTED)
    now = mtc.clock.now_ms()
    for key in keys:
        full = await recompute(mtc, key, now, None)
        assert (await _rows(mtc, [key]))[key][0] == full.blob
