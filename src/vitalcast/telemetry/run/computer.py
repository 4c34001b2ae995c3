"""``TelemetryComputer``: one compute of one view, under its lease.

Take the lease (one conditional write), re-check freshness, aggregate (incrementally from the
view's stored partials where the change log allows, see ``compute/incremental``), save only while still
holding it, prune the change log no cached view needs any more, tell the listener; on error
record the failure and its backoff. The in-process coordinator and the queue worker both run
computes through ``compute``, which never raises: what happened is its ``ComputeOutcome``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from functools import partial

from sqlalchemy.ext.asyncio import AsyncConnection

from vitalcast.clock import Clock
from vitalcast.db.engine import Database
from vitalcast.observability import Metrics, get_logger
from vitalcast.sessions import changelog
from vitalcast.sessions.models import Session
from vitalcast.telemetry.compute.aggregate import Aggregator
from vitalcast.telemetry.compute.incremental import compute_view
from vitalcast.telemetry.compute.results import ComputedTelemetry, ComputePath
from vitalcast.telemetry.grid import payload_current
from vitalcast.telemetry.keys import CacheState, ComputeOutcome, ScheduleReason, TelemetryKey
from vitalcast.telemetry.ports import PostSaveHooks, SavedView, TelemetryListener, TelemetryUpdate
from vitalcast.telemetry.read.answer import COMPUTE_FAILED
from vitalcast.telemetry.store import queries
from vitalcast.telemetry.store.leases import SessionTelemetryCacheRepository
from vitalcast.telemetry.store.rows import CacheRow, Lease, LeaseRefusal, SaveResult

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


def _waits_for_nothing_else(aggregate: Aggregator) -> bool:
    """The production compute (``compute_view``, its memo bound or not) talks only to its
    connection, so it runs in the read unit; a seam's aggregator may wait for the test that set
    it and runs on the caller's loop."""
    target = aggregate.func if isinstance(aggregate, partial) else aggregate
    return target is compute_view


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


class TelemetryComputer:
    """Runs computes under the cache row's lease and tells ``listener``, then ``hooks``, after
    every save.

    ``aggregator`` is the compute seam (tests and the fault suite wrap it to fail or hold);
    ``lease_ms`` is renewed every third of itself while a compute runs.
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

    async def compute(self, key: TelemetryKey, *, reason: ScheduleReason) -> ComputeOutcome:
        """Run one compute of ``key`` under its lease; see ``ComputeOutcome``. Never raises."""
        now = self._clock.now_ms()
        asked = time.perf_counter()
        try:
            lease = await self._db.unit(
                lambda conn: self._cache.take_lease(
                    conn, key, owner=self.owner_id, now_ms=now, lease_ms=self._lease_ms
                ),
                derived=True,
            )
        except Exception as exc:
            log.error(
                "telemetry_lease_failed", session_id=key.session_id, error_type=type(exc).__name__
            )
            return ComputeOutcome.FAILED
        if isinstance(lease, LeaseRefusal):
            return _REFUSALS[lease]
        keeper = asyncio.create_task(self._keep_lease(key))
        try:
            return await self._compute_leased(key, lease, reason, time.perf_counter() - asked)
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)

    async def release(self, key: TelemetryKey) -> None:
        """Give our lease on ``key`` back without an outcome (a job handed to another worker),
        so whoever runs it next need not wait for the lease to lapse."""
        now = self._clock.now_ms()
        await self._db.unit(
            lambda conn: self._cache.release(conn, key, owner=self.owner_id, now_ms=now),
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

    async def _compute_leased(
        self, key: TelemetryKey, lease: Lease, reason: ScheduleReason, lease_s: float
    ) -> ComputeOutcome:
        started = time.perf_counter()
        read_started_ms = self._clock.now_ms()

        async def read(
            conn: AsyncConnection,
        ) -> tuple[Session | None, bool, ComputedTelemetry | None]:
            session, stored = await queries.session_and_stored(conn, key)
            fresh = session is not None and _lease_current(lease, session, key, read_started_ms)
            computed = None
            if session is not None and not fresh:
                computed = await self._aggregate(conn, session, key, read_started_ms, stored)
            return session, fresh, computed

        try:
            if _waits_for_nothing_else(self._aggregate):
                session, fresh, computed = await self._db.unit(read)
            else:
                # A seam's aggregator may wait for the test that set it: it runs on this loop.
                async with self._db.read() as conn:
                    session, fresh, computed = await read(conn)
            if computed is None:
                await self.release(key)
                return ComputeOutcome.SKIPPED_FRESH if fresh else ComputeOutcome.SESSION_GONE
            read_s = time.perf_counter() - started
            compute_ms = int(read_s * 1000)
            result = await self._db.unit(
                lambda conn: self._save(conn, key, lease, computed, compute_ms, read_started_ms),
                derived=True,
            )
            save_s = time.perf_counter() - started - read_s
        except Exception as exc:
            await self._record_failure(key, lease, exc, reason)
            return ComputeOutcome.FAILED
        if not result.saved:
            log.warning("telemetry_lease_lost", session_id=key.session_id, reason=reason.value)
            return ComputeOutcome.LEASE_LOST
        if computed.on_saved is not None:
            computed.on_saved()
        self._metrics.computes.labels(computed.state.value, reason.value).inc()
        self._metrics.compute_paths.labels(computed.path.value).inc()
        self._metrics.compute_seconds.labels(reason.value).observe(time.perf_counter() - started)
        if result.lag_ms is not None:
            self._metrics.freshness_lag_seconds.observe(max(result.lag_ms, 0) / 1000)
        pushing = time.perf_counter()
        await self._notify(key, computed)
        push_s = time.perf_counter() - pushing
        if self._hooks and session is not None:
            await self._hooks.run(
                SavedView(
                    session=session,
                    key=key,
                    source_watermark=computed.source_watermark,
                    live=computed.window.live,
                    episodes=computed.episodes,
                )
            )
        stages = dict(computed.stage_seconds)
        # the read stage is the whole read unit but its aggregate and assemble stages
        stages["read"] = read_s - stages.get("aggregate", 0.0) - stages.get("assemble", 0.0)
        stages |= {"lease": lease_s, "save": save_s, "push": push_s}
        for stage, seconds in stages.items():
            self._metrics.compute_stage_seconds.labels(stage).observe(max(seconds, 0.0))
        return ComputeOutcome.COMPUTED

    async def _save(
        self,
        conn: AsyncConnection,
        key: TelemetryKey,
        lease: Lease,
        computed: ComputedTelemetry,
        compute_ms: int,
        read_started_ms: int,
    ) -> SaveResult:
        """The save unit: the payload under our lease, and the change log pruned when due."""
        result = await self._cache.save(
            conn,
            key,
            computed,
            owner=self.owner_id,
            now_ms=self._clock.now_ms(),
            compute_ms=compute_ms,
            read_started_ms=read_started_ms,
        )
        if result.saved and _prune_due(lease.source_watermark, computed):
            floor = queries.views_floor(key.session_id, compute_version=key.compute_version)
            await changelog.prune(conn, key.session_id, through_seq=floor)
        return result

    async def _record_failure(
        self, key: TelemetryKey, lease: Lease, exc: Exception, reason: ScheduleReason
    ) -> None:
        self._metrics.computes.labels(CacheState.FAILED.value, reason.value).inc()
        attempts = lease.attempts + 1
        log.error(
            "telemetry_compute_failed",
            session_id=key.session_id,
            reason=reason.value,
            attempts=attempts,
            error_type=type(exc).__name__,
        )
        now = self._clock.now_ms()
        try:
            await self._db.unit(
                lambda conn: self._cache.fail(
                    conn,
                    key,
                    owner=self.owner_id,
                    now_ms=now,
                    attempts=attempts,
                    error_code=COMPUTE_FAILED,
                ),
                derived=True,
            )
        except Exception as release_exc:
            # The lease then simply expires and the next request or job takes it over.
            log.error(
                "telemetry_failure_not_recorded",
                session_id=key.session_id,
                error_type=type(release_exc).__name__,
            )

    async def _keep_lease(self, key: TelemetryKey) -> None:
        interval_s = self._lease_ms / 3 / 1000
        while True:
            await asyncio.sleep(interval_s)
            now = self._clock.now_ms()
            try:
                held = await self._db.unit(
                    lambda conn, now=now: self._cache.renew(  # type: ignore[misc]
                        conn, key, owner=self.owner_id, now_ms=now, lease_ms=self._lease_ms
                    ),
                    derived=True,
                )
            except Exception as exc:
                log.warning(
                    "telemetry_lease_renew_failed",
                    session_id=key.session_id,
                    error_type=type(exc).__name__,
                )
                continue
            if not held:
                return

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
