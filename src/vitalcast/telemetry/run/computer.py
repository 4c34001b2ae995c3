"""``TelemetryComputer``: computes of views, a batch at a time, each under its lease.

A batch takes two units of work, whatever its size. The first *claims* the leases of all its keys,
reading what their computes start from (one statement), and reads what they need: one read of
the change logs and, for a live update, one GROUP BY over every dirty range (see
``compute/incremental``; a full compute's longer GROUP BY runs in a read unit of its own). On
PostgreSQL the claim itself reads the change logs and the GROUP BY rows of each live view's
guessed tail (``guess_tails``): a live update the tail covers is two statements, the claim and
the save. Each
view is then assembled on its own on the loop, and the second unit, one compare-and-set save,
stores every result whose lease is still ours and prunes the change logs no cached view needs
any more. Then, per saved view, the listener and the post-save hooks. A view whose compute raised
fails alone: its failure and backoff are recorded, the others are saved. The in-process
coordinator and the queue worker both run computes through ``compute_batch`` (``compute`` is a
batch of one), which never raises: what happened to each key is its ``ComputeOutcome``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.metrics import MetricWrapperBase
from sqlalchemy.ext.asyncio import AsyncConnection

from vitalcast.clock import Clock
from vitalcast.db.engine import Database
from vitalcast.observability import Metrics, get_logger
from vitalcast.sessions import changelog
from vitalcast.sessions.models import Session
from vitalcast.telemetry.compute.incremental import (
    Aggregator,
    BatchRead,
    ViewInput,
    guess_tails,
    read_views,
)
from vitalcast.telemetry.compute.memo import ViewMemo
from vitalcast.telemetry.compute.results import ComputedTelemetry, ComputePath
from vitalcast.telemetry.grid import payload_current
from vitalcast.telemetry.keys import CacheState, ComputeOutcome, ScheduleReason, TelemetryKey
from vitalcast.telemetry.ports import PostSaveHooks, SavedView, TelemetryListener, TelemetryUpdate
from vitalcast.telemetry.read.answer import COMPUTE_FAILED
from vitalcast.telemetry.store import queries
from vitalcast.telemetry.store.leases import SessionTelemetryCacheRepository, ToSave
from vitalcast.telemetry.store.rows import CacheRow, Claim, Lease, LeaseRefusal

log = get_logger(__name__)

#: a live holder usually finishes long before its lease runs out (its save releases it): a
#: retry blocked by one looks again at least this often instead of waiting out the whole lease
LEASE_POLL_MS = 1_000
#: an incremental save prunes the change log when its watermark crosses a multiple of this
PRUNE_EVERY = 16

_REFUSALS = {
    LeaseRefusal.BUSY: ComputeOutcome.LEASE_BUSY,
    LeaseRefusal.BACKING_OFF: ComputeOutcome.BACKING_OFF,
    LeaseRefusal.NO_SESSION: ComputeOutcome.SESSION_GONE,
}


def _lease_current(lease: Lease, session: Session, key: TelemetryKey, now_ms: int) -> bool:
    """The payload under our lease already answers for ``session`` now (same watermark and,
    while live, the same live edge): a second trigger of one change or one bucket, on this
    process or another, then costs no compute."""
    return lease.has_payload and payload_current(
        payload_watermark=lease.source_watermark,
        session_watermark=session.source_watermark,
        live=session.live,
        session_start_ms=session.start_ms,
        bucket_ms=key.resolution.bucket_ms,
        computed_at_ms=lease.computed_at_ms,
        now_ms=now_ms,
    )


def default_owner_id() -> str:
    """A lease owner id unique to this process."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _prune_due(saved_before: int | None, computed: ComputedTelemetry) -> bool:
    """Whether this save prunes the session's change log: after a full compute, or when the
    view's watermark crosses a multiple of ``PRUNE_EVERY``. Pruning later is always safe (the
    log only holds a few entries more), and a DELETE on every save was a tenth of a small live
    view's whole update."""
    return (
        computed.path is not ComputePath.INCREMENTAL
        or saved_before is None
        or saved_before // PRUNE_EVERY != computed.source_watermark // PRUNE_EVERY
    )


#: a compute asked for: the view and why
ComputeItem = tuple[TelemetryKey, ScheduleReason]


@dataclass(slots=True)
class _Claimed:
    """What a batch's claim found, kept by the caller of its unit of work (so a read that
    fails after the claim still tells which leases it had taken): the outcomes of the keys not
    computed, and the claims of the due ones (None until the claim returned)."""

    outcomes: dict[TelemetryKey, ComputeOutcome] = field(default_factory=dict)
    due: list[Claim] | None = None


class TelemetryComputer:
    """Runs computes under the cache rows' leases and tells ``listener``, then ``hooks``, after
    every save.

    ``aggregator`` is the compute seam (tests and the fault suite wrap it to fail or hold);
    ``lease_ms`` is renewed every third of itself while a batch runs.
    """

    def __init__(
        self,
        db: Database,
        clock: Clock,
        metrics: Metrics,
        listener: TelemetryListener,
        *,
        lease_ms: int,
        aggregator: Aggregator,
        cache: SessionTelemetryCacheRepository,
        owner_id: str | None = None,
        hooks: PostSaveHooks | None = None,
        memo: ViewMemo | None = None,
    ) -> None:
        self._db = db
        self._hooks = hooks if hooks is not None else PostSaveHooks()
        self._clock = clock
        self._metrics = metrics
        self._listener = listener
        self._lease_ms = lease_ms
        self.owner_id = owner_id or default_owner_id()
        self._aggregate = aggregator
        self._cache = cache
        self._memo = memo
        # asked per batch: a property that walks SQLAlchemy's engine each time
        self._alone_units = db.alone_units
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}  # Any: a metric's child

    def _labelled(self, metric: MetricWrapperBase, *values: str) -> Any:  # Any: its child
        """``metric.labels(*values)``, looked up once: ``labels`` validates and locks on every
        call, about ten times per saved view."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    async def compute(self, key: TelemetryKey, *, reason: ScheduleReason) -> ComputeOutcome:
        """Run one compute of ``key`` under its lease: a batch of one. Never raises."""
        return (await self.compute_batch([(key, reason)]))[key]

    async def compute_batch(
        self, items: Sequence[ComputeItem]
    ) -> dict[TelemetryKey, ComputeOutcome]:
        """Run the computes of ``items`` as one batch; the outcome of each key (a key asked
        for twice runs once). Never raises."""
        reasons: dict[TelemetryKey, ScheduleReason] = {}
        for key, reason in items:
            reasons.setdefault(key, reason)
        keys = list(reasons)
        if not keys:
            return {}
        now = self._clock.now_ms()
        started = time.perf_counter()
        claimed = _Claimed()
        # On PostgreSQL the claim and the reads stand alone (no BEGIN and COMMIT round trips):
        # under READ COMMITTED each statement read its own snapshot in the transaction too, and
        # the claim then holds when a read fails (see below).
        alone = self._alone_units
        try:
            # short: a GROUP BY longer than a live update's runs in a read unit of its own
            read = await self._db.unit(
                lambda conn: self._claim_and_read(conn, keys, now, claimed),
                derived=True,
                alone=alone,
                short=True,
            )
        except Exception as exc:
            if claimed.due is None:
                log.error(
                    "telemetry_lease_failed",
                    session_id=keys[0].session_id,
                    views=len(keys),
                    error_type=type(exc).__name__,
                )
                return dict.fromkeys(keys, ComputeOutcome.FAILED)
            # The read failed. In a transaction the claim went with it: record the failure (and
            # its backoff) under the leases taken again, as a failed compute does. Standing
            # alone, the claim holds: record it under the leases held, and give back those of
            # the views found fresh (their release may have gone with the failure).
            if alone:
                fresh = [
                    k for k, o in claimed.outcomes.items() if o is ComputeOutcome.SKIPPED_FRESH
                ]
                if fresh:
                    with contextlib.suppress(Exception):
                        await self._release_many(fresh)
            await self._record_failures([(c, exc) for c in claimed.due], reasons, reclaim=not alone)
            return claimed.outcomes | dict.fromkeys(
                (c.key for c in claimed.due), ComputeOutcome.FAILED
            )
        outcomes, due = claimed.outcomes, claimed.due
        if read is None or not due:
            return outcomes
        self._metrics.compute_batch_views.observe(len(due))
        # A batch usually ends long before a third of its lease: until then its keeper is only
        # a timer, not a task started, cancelled and gathered per batch.
        keepers: list[asyncio.Task[None]] = []
        held = [c.key for c in due]
        timer = asyncio.get_running_loop().call_later(
            self._lease_ms / 3 / 1000,
            lambda: keepers.append(asyncio.create_task(self._keep_leases(held))),
        )
        try:
            outcomes |= await self._compute_claimed(due, reasons, now, read, started)
        finally:
            timer.cancel()
            for keeper in keepers:
                keeper.cancel()
            await asyncio.gather(*keepers, return_exceptions=True)
        return outcomes

    async def _claim_and_read(
        self, conn: AsyncConnection, keys: list[TelemetryKey], now: int, claimed: _Claimed
    ) -> BatchRead | None:
        """The batch's one unit of work before its save: take the leases (giving back at once
        those whose payload is already current) and read what the due views' computes need:
        change logs and, for a live update, the GROUP BY (``read_views``). On PostgreSQL the
        claim reads the change logs and the rows of the tails guessed for live views
        (``guess_tails``): a live update the tail covers runs no other statement here."""
        started = time.perf_counter()
        tails = guess_tails(keys, self._memo, now)
        try:
            claims = await self._cache.claim(
                conn, keys, owner=self.owner_id, now_ms=now, lease_ms=self._lease_ms, tails=tails
            )
        except Exception:
            if not tails or not self._alone_units:
                raise
            # The tails' GROUP BY failed with the claim (the samples out of reach): claim
            # without them, so that the read fails after the claim as it would have, and its
            # failure and backoff are recorded (see ``compute_batch``).
            claims = await self._cache.claim(
                conn, keys, owner=self.owner_id, now_ms=now, lease_ms=self._lease_ms
            )
        due: list[Claim] = []
        fresh: list[TelemetryKey] = []
        for key, claim in claims.items():
            if isinstance(claim, LeaseRefusal):
                claimed.outcomes[key] = _REFUSALS[claim]
            elif _lease_current(claim.lease, claim.session, key, now):
                fresh.append(key)
                claimed.outcomes[key] = ComputeOutcome.SKIPPED_FRESH
            else:
                due.append(claim)
        if fresh:
            await self._cache.release_many(conn, fresh, owner=self.owner_id, now_ms=now)
        claimed.due = due
        if not due:
            return None
        claim_s = time.perf_counter() - started
        views = [ViewInput(c.session, c.key, now, c.stored) for c in due]
        read = await read_views(conn, views, memo=self._memo)
        return dataclasses.replace(read, read_s=read.read_s + claim_s)

    async def release(self, key: TelemetryKey) -> None:
        """Give our lease on ``key`` back without an outcome (a job handed to another worker),
        so whoever runs it next need not wait for the lease to lapse."""
        await self._release_many([key])

    async def _release_many(self, keys: Sequence[TelemetryKey]) -> None:
        now = self._clock.now_ms()
        await self._db.unit(
            lambda conn: self._cache.release_many(conn, keys, owner=self.owner_id, now_ms=now),
            derived=True,
        )

    async def row(self, key: TelemetryKey) -> CacheRow | None:
        """The cache row of ``key`` as it is now (its backoff and error code, for the queue)."""
        return await self._db.unit(lambda conn: queries.row_of(conn, key))

    async def retry_delay_ms(self, key: TelemetryKey) -> int | None:
        """Milliseconds until ``key`` may be computed again (the coordinator's ``RetryDelay``):
        until its failure backoff has elapsed and no other holder's lease blocks it, looking
        again at least every ``LEASE_POLL_MS`` while a lease does (0: nothing blocks it; None:
        the row is gone)."""
        row = await self.row(key)
        if row is None:
            return None
        now = self._clock.now_ms()
        backoff = (row.next_attempt_ms or now) - now
        lease = 0
        if row.lease_owner is not None and row.lease_expires_ms is not None:
            lease = min(row.lease_expires_ms - now, LEASE_POLL_MS)
        return max(backoff, lease, 0)

    async def _compute_claimed(
        self,
        due: list[Claim],
        reasons: dict[TelemetryKey, ScheduleReason],
        read_started_ms: int,
        read: BatchRead,
        started: float,
    ) -> dict[TelemetryKey, ComputeOutcome]:
        try:
            # the read ran in the claim's unit of work, the assembly stays on this loop
            # (``assemble_batch``); a seam's aggregator may also wait for the test that set it
            batch = await self._aggregate(self._db, read)
        except Exception as exc:
            await self._record_failures([(c, exc) for c in due], reasons)
            return dict.fromkeys((c.key for c in due), ComputeOutcome.FAILED)
        compute_ms = int((time.perf_counter() - started) * 1000)
        done: list[ToSave] = []
        failed: list[tuple[Claim, Exception]] = []
        for claimed, outcome in zip(due, batch.results, strict=True):
            if isinstance(outcome, Exception):
                failed.append((claimed, outcome))
            else:
                done.append(ToSave(claimed, outcome, compute_ms))
        outcomes = dict.fromkeys((c.key for c, _exc in failed), ComputeOutcome.FAILED)
        if failed:
            await self._record_failures(failed, reasons)
        if not done:
            return outcomes
        saving = time.perf_counter()
        # With no change log due for pruning the save is one compare-and-set statement: it stands
        # alone, with no transaction around it (two round trips fewer); a prune joins it in one.
        alone = not any(_prune_due(r.claim.lease.source_watermark, r.computed) for r in done)
        try:
            saved = await self._db.unit(
                lambda conn: self._save(conn, done, read_started_ms),
                derived=True,
                alone=alone,
                short=True,
            )
        except Exception as exc:
            await self._record_failures([(r.claim, exc) for r in done], reasons)
            return outcomes | dict.fromkeys((r.claim.key for r in done), ComputeOutcome.FAILED)
        save_s = time.perf_counter() - saving
        now = self._clock.now_ms()
        pushing = time.perf_counter()
        for result in done:
            key, computed = result.claim.key, result.computed
            reason = reasons[key]
            if key not in saved:
                log.warning("telemetry_lease_lost", session_id=key.session_id, reason=reason.value)
                outcomes[key] = ComputeOutcome.LEASE_LOST
                continue
            outcomes[key] = ComputeOutcome.COMPUTED
            if computed.on_saved is not None:
                computed.on_saved()
            metrics = self._metrics
            self._labelled(metrics.computes, computed.state.value, reason.value).inc()
            self._labelled(metrics.compute_paths, computed.path.value).inc()
            self._labelled(metrics.compute_seconds, reason.value).observe(pushing - started)
            stale = result.claim.stale_since_ms
            if stale is not None and stale <= read_started_ms:
                self._metrics.freshness_lag_seconds.observe(max(now - stale, 0) / 1000)
            await self._notify(key, computed)
            if self._hooks:
                await self._hooks.run(
                    SavedView(
                        session=result.claim.session,
                        key=key,
                        source_watermark=computed.source_watermark,
                        live=computed.window.live,
                        episodes=computed.episodes,
                        payload=computed.blob,
                        computed_at_ms=computed.computed_at_ms,
                        history=computed.history,
                        base_watermark=computed.base_watermark,
                    )
                )
        # the read stage is the claim (lease and read in one statement; on PostgreSQL with the
        # change logs and the live tails' GROUP BY) and the change-log read
        stages = batch.stage_seconds | {"save": save_s, "push": time.perf_counter() - pushing}
        for stage, seconds in stages.items():
            self._labelled(self._metrics.compute_stage_seconds, stage).observe(max(seconds, 0.0))
        return outcomes

    async def _save(
        self, conn: AsyncConnection, done: list[ToSave], read_started_ms: int
    ) -> set[TelemetryKey]:
        """The save unit: every result still under our lease, and the change logs pruned where
        due."""
        saved = await self._cache.save_many(
            conn,
            done,
            owner=self.owner_id,
            now_ms=self._clock.now_ms(),
            read_started_ms=read_started_ms,
        )
        pruning: dict[int, list[str]] = {}
        for result in done:
            key = result.claim.key
            if key in saved and _prune_due(result.claim.lease.source_watermark, result.computed):
                pruning.setdefault(key.compute_version, []).append(key.session_id)
        for version, session_ids in pruning.items():
            await changelog.prune_many(
                conn, session_ids, through_seq=queries.views_floor_of_log(compute_version=version)
            )
        return saved

    async def _record_failures(
        self,
        failed: Sequence[tuple[Claim, Exception]],
        reasons: dict[TelemetryKey, ScheduleReason],
        *,
        reclaim: bool = False,
    ) -> None:
        """Record each failure and its backoff under our lease, released; ``reclaim``: the
        leases went with a failed unit of work, take them again first (one still free)."""
        now = self._clock.now_ms()
        for claimed, exc in failed:
            key = claimed.key
            reason = reasons[key]
            self._metrics.computes.labels(CacheState.FAILED.value, reason.value).inc()
            log.error(
                "telemetry_compute_failed",
                session_id=key.session_id,
                reason=reason.value,
                attempts=claimed.lease.attempts + 1,
                error_type=type(exc).__name__,
            )

        async def fail(conn: AsyncConnection) -> None:
            claims = [claimed for claimed, _exc in failed]
            if reclaim:
                taken = await self._cache.claim(
                    conn,
                    [c.key for c in claims],
                    owner=self.owner_id,
                    now_ms=now,
                    lease_ms=self._lease_ms,
                )
                claims = [c for c in taken.values() if isinstance(c, Claim)]
            for claimed in claims:
                await self._cache.fail(
                    conn,
                    claimed.key,
                    owner=self.owner_id,
                    now_ms=now,
                    attempts=claimed.lease.attempts + 1,
                    error_code=COMPUTE_FAILED,
                )

        try:
            await self._db.unit(fail, derived=True)
        except Exception as release_exc:
            # The leases then simply expire and the next request or job takes them over.
            log.error(
                "telemetry_failure_not_recorded",
                session_id=failed[0][0].key.session_id,
                views=len(failed),
                error_type=type(release_exc).__name__,
            )

    async def _keep_leases(self, keys: list[TelemetryKey]) -> None:
        """Renew the batch's leases (one statement) now, a third of the lease after it started,
        and every third of the lease after that while it runs."""
        interval_s = self._lease_ms / 3 / 1000
        while keys:
            now = self._clock.now_ms()
            try:
                held = await self._db.unit(
                    lambda conn, now=now, keys=keys: self._cache.renew_many(  # type: ignore[misc]
                        conn, keys, owner=self.owner_id, now_ms=now, lease_ms=self._lease_ms
                    ),
                    derived=True,
                )
            except Exception as exc:
                log.warning(
                    "telemetry_lease_renew_failed",
                    session_id=keys[0].session_id,
                    error_type=type(exc).__name__,
                )
            else:
                keys = [k for k in keys if k in held]
            await asyncio.sleep(interval_s)

    async def _notify(self, key: TelemetryKey, computed: ComputedTelemetry) -> None:
        window = computed.window
        update = TelemetryUpdate(
            session_id=key.session_id,
            source_watermark=computed.source_watermark,
            state=computed.state.value,
            window_minutes=key.window_minutes,
            resolution=key.resolution.value,
            computed_at_ms=computed.computed_at_ms,
            live=window.live,
            changed_from_ms=computed.changed_from_ms,
            changed_to_ms=computed.changed_to_ms,
            base_watermark=computed.base_watermark,
        )
        try:
            await self._listener.session_updated(update)
        except Exception as exc:
            log.warning(
                "telemetry_listener_failed",
                session_id=key.session_id,
                error_type=type(exc).__name__,
            )
