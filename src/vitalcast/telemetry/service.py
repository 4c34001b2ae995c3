"""``SessionTelemetryService``: the one entry point of telemetry.

- ``get`` answers a request from the cache with one hot read (ownership, session watermark and
  cache row together) and decides the state of DESIGN.md "Request states"; a miss or a stale read
  schedules a compute and never waits for it.
- ``compute`` runs one compute under the row's lease: take it (one conditional write), re-check
  freshness, aggregate, save only while still holding it; on error record the failure and back
  off. The coordinator and the queue worker both call it.
- ``schedule`` hands a key to ``scheduler`` (the coordinator, or the queue in scaled-out mode).
- ``on_sessions_changed`` / ``on_session_status`` turn ingest and session ends into schedules.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from vitalcast.clock import Clock
from vitalcast.db.engine import Database
from vitalcast.errors import InvalidInput, NotFound
from vitalcast.observability import Metrics, get_logger
from vitalcast.sessions.models import Session
from vitalcast.settings import Settings
from vitalcast.telemetry.answer import (
    COMPUTE_FAILED,
    DATABASE_UNAVAILABLE,
    RETRY_READ_FAILED_S,
    RETRY_SHED_S,
    TelemetryAnswer,
    decide,
    etag_matches,
    make_etag,
    select_metrics,
)
from vitalcast.telemetry.cache import Lease, LeaseRefusal, SessionTelemetryCacheRepository
from vitalcast.telemetry.compute import (
    Aggregator,
    ComputedTelemetry,
    compute_telemetry,
    load_session,
)
from vitalcast.telemetry.coordinator import BoundedComputeCoordinator
from vitalcast.telemetry.models import (
    COMPUTE_VERSION,
    MAX_WINDOW_MINUTES,
    MIN_WINDOW_MINUTES,
    CacheState,
    ComputeOutcome,
    Resolution,
    Scheduler,
    ScheduleReason,
    Subscriptions,
    TelemetryKey,
    TelemetryListener,
    payload_current,
    resolve_resolution,
)
from vitalcast.telemetry.payload import unpack
from vitalcast.telemetry.reader import CacheReader, HotRow, open_reader
from vitalcast.telemetry.retries import RetryDelays

log = get_logger(__name__)

_RESOLUTIONS = ("1m", "5m", "auto")
_ASYNC_COMMIT = sa.text("SET LOCAL synchronous_commit TO OFF")


def default_owner_id() -> str:
    """A lease owner id unique to this process."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class _NotWired:
    async def submit(self, key: TelemetryKey, *, watermark: int, reason: ScheduleReason) -> bool:
        raise RuntimeError("SessionTelemetryService.scheduler was never set")


class SessionTelemetryService:
    """Answers telemetry requests from the cache, schedules and runs computes."""

    scheduler: Scheduler
    listener: TelemetryListener | None

    def __init__(
        self,
        db: Database,
        clock: Clock,
        metrics: Metrics,
        *,
        lease_ms: int,
        owner_id: str,
        default_window_minutes: int,
        listener: TelemetryListener | None = None,
        aggregator: Aggregator | None = None,
        reader: CacheReader | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._metrics = metrics
        self._lease_ms = lease_ms
        self.owner_id = owner_id
        self.default_window_minutes = default_window_minutes
        self.listener = listener
        self.scheduler = _NotWired()
        self.cache = SessionTelemetryCacheRepository()
        #: the compute seam (tests put a failing one in front of the real aggregate)
        self.aggregator: Aggregator = aggregator or compute_telemetry
        self._reader = reader or open_reader(db.engine.url.render_as_string(hide_password=False))
        self._responses = {
            state: metrics.telemetry_responses.labels(state.value) for state in CacheState
        }

    async def close(self) -> None:
        await self._reader.close()

    @asynccontextmanager
    async def _cache_write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction for cache rows. On PostgreSQL its commit does not wait for the WAL
        flush: the rows are derived data, and one lost to a server crash is recomputed on the
        next read (a lost lease only makes its holder's conditional save fail)."""
        async with self._db.write() as conn:
            if not self._db.sqlite:
                await conn.execute(_ASYNC_COMMIT)
            yield conn

    # -- the request path ---------------------------------------------------------------------

    async def get(
        self,
        user_id: str,
        session_id: str,
        *,
        window_minutes: int,
        resolution: str,
        metrics: Sequence[str] | None,
        if_none_match: str | None = None,
    ) -> TelemetryAnswer:
        """The answer for one GET; raises NotFound for a session that is not the caller's and
        InvalidInput for a bad window, resolution or metric code."""
        codes = select_metrics(metrics)
        if not MIN_WINDOW_MINUTES <= window_minutes <= MAX_WINDOW_MINUTES:
            raise InvalidInput(
                f"window_minutes must be {MIN_WINDOW_MINUTES}…{MAX_WINDOW_MINUTES}.",
                code="WINDOW_OUT_OF_RANGE",
            )
        if resolution not in _RESOLUTIONS:
            raise InvalidInput("resolution must be 1m, 5m or auto.", code="INVALID_RESOLUTION")
        requested = None if resolution == "auto" else resolution
        now = self._clock.now_ms()
        with_payload = not if_none_match
        while True:
            try:
                row = await self._reader.read(
                    user_id=user_id,
                    session_id=session_id,
                    window_minutes=window_minutes,
                    resolution=requested,
                    now_ms=now,
                    with_payload=with_payload,
                )
            except Exception as exc:
                log.warning(
                    "telemetry_read_failed", session_id=session_id, error_type=type(exc).__name__
                )
                return self._count(
                    TelemetryAnswer(
                        CacheState.FAILED,
                        codes,
                        retry_after_s=RETRY_READ_FAILED_S,
                        error_code=DATABASE_UNAVAILABLE,
                    )
                )
            if row is None:
                raise NotFound("Session not found.", code="SESSION_NOT_FOUND")
            key = self._key_of(row, user_id, session_id, window_minutes, requested, now)
            decision = decide(row, now)
            fresh = decision.state in (CacheState.READY, CacheState.NO_DATA)
            etag = None
            if fresh:
                live_at = row.computed_at_ms if row.live else None
                etag = make_etag(key, row.source_watermark or 0, codes, live_at_ms=live_at)
                if etag_matches(if_none_match, etag):
                    return self._count(
                        TelemetryAnswer(decision.state, codes, etag=etag, not_modified=True)
                    )
            has_payload = row.status in (CacheState.READY, CacheState.NO_DATA)
            if has_payload and row.payload is None:
                with_payload = True
                continue
            break
        retry_after = decision.retry_after_s
        if decision.reason is not None:
            accepted = await self.schedule(
                key, watermark=row.session_watermark, reason=decision.reason
            )
            if decision.state is CacheState.COMPUTING and not accepted:
                retry_after = RETRY_SHED_S
        return self._count(
            TelemetryAnswer(
                decision.state,
                codes,
                payload=unpack(row.payload) if row.payload is not None else None,
                retry_after_s=retry_after,
                error_code=decision.error_code,
                etag=etag,
            )
        )

    def _count(self, answer: TelemetryAnswer) -> TelemetryAnswer:
        self._responses[answer.state].inc()
        return answer

    @staticmethod
    def _key_of(
        row: HotRow,
        user_id: str,
        session_id: str,
        window_minutes: int,
        requested: str | None,
        now_ms: int,
    ) -> TelemetryKey:
        if row.resolution is not None:
            resolution = Resolution(row.resolution)
        else:
            resolution = resolve_resolution(
                requested,
                start_ms=row.session_start_ms,
                end_ms=row.session_end_ms,
                live=row.live,
                window_minutes=window_minutes,
                now_ms=now_ms,
            )
        return TelemetryKey(session_id, window_minutes, resolution, COMPUTE_VERSION, user_id)

    async def subscription_state(self, session: Session) -> tuple[str, int | None]:
        """(state the default-window GET would answer, watermark of the cached payload or None);
        schedules nothing."""
        now = self._clock.now_ms()
        try:
            row = await self._reader.read(
                user_id=session.user_id,
                session_id=session.id,
                window_minutes=self.default_window_minutes,
                resolution=None,
                now_ms=now,
                with_payload=False,
            )
        except Exception as exc:
            log.warning(
                "telemetry_read_failed", session_id=session.id, error_type=type(exc).__name__
            )
            return CacheState.FAILED.value, None
        if row is None:
            raise NotFound("Session not found.", code="SESSION_NOT_FOUND")
        decision = decide(row, now)
        has_payload = row.status in (CacheState.READY, CacheState.NO_DATA)
        return decision.state.value, row.source_watermark if has_payload else None

    # -- scheduling ---------------------------------------------------------------------------

    async def schedule(self, key: TelemetryKey, *, watermark: int, reason: ScheduleReason) -> bool:
        """Hand ``key`` to the scheduler; False when it was shed or could not be handed over."""
        try:
            return await self.scheduler.submit(key, watermark=watermark, reason=reason)
        except Exception as exc:
            log.error(
                "telemetry_schedule_failed",
                session_id=key.session_id,
                reason=reason.value,
                error_type=type(exc).__name__,
            )
            return False

    def default_key(self, session: Session, resolution: Resolution | None = None) -> TelemetryKey:
        """The key of the default window (auto resolution unless given) of ``session`` now."""
        chosen = resolution or resolve_resolution(
            None,
            start_ms=session.start_ms,
            end_ms=session.end_ms,
            live=session.live,
            window_minutes=self.default_window_minutes,
            now_ms=self._clock.now_ms(),
        )
        return TelemetryKey(
            session.id, self.default_window_minutes, chosen, COMPUTE_VERSION, session.user_id
        )

    async def on_sessions_changed(self, sessions: Sequence[Session]) -> None:
        """Ingest moved these sessions' watermarks: recompute every cached view of them and the
        default one (``live_update`` while active, ``late_ingest`` once ended)."""
        by_id = {session.id: session for session in sessions}
        keys = await self._cached_keys(by_id)
        for session in by_id.values():
            keys.add(self.default_key(session))
        for key in sorted(keys):
            session = by_id[key.session_id]
            reason = ScheduleReason.LIVE_UPDATE if session.live else ScheduleReason.LATE_INGEST
            await self.schedule(key, watermark=session.source_watermark, reason=reason)

    async def on_session_status(self, session: Session) -> None:
        """An ended or cancelled session: precompute the default window at 1m and 5m (and
        refresh any other cached view). Starting a session schedules nothing."""
        if session.live:
            return
        keys = await self._cached_keys({session.id: session})
        keys.add(self.default_key(session, Resolution.ONE_MINUTE))
        keys.add(self.default_key(session, Resolution.FIVE_MINUTES))
        for key in sorted(keys):
            await self.schedule(
                key, watermark=session.source_watermark, reason=ScheduleReason.SESSION_COMPLETED
            )

    async def _cached_keys(self, by_id: dict[str, Session]) -> set[TelemetryKey]:
        try:
            async with self._db.read() as conn:
                rows = await self.cache.keys_of(conn, list(by_id), compute_version=COMPUTE_VERSION)
        except Exception as exc:
            log.error("telemetry_cache_keys_failed", error_type=type(exc).__name__)
            return set()
        return {
            TelemetryKey(sid, window, res, COMPUTE_VERSION, by_id[sid].user_id)
            for sid, window, res in rows
        }

    # -- one compute --------------------------------------------------------------------------

    async def compute(self, key: TelemetryKey, *, reason: ScheduleReason) -> ComputeOutcome:
        """Run one compute of ``key`` under its lease; see ``ComputeOutcome``. Never raises."""
        now = self._clock.now_ms()
        try:
            async with self._cache_write() as conn:
                lease = await self.cache.take_lease(
                    conn, key, owner=self.owner_id, now_ms=now, lease_ms=self._lease_ms
                )
        except Exception as exc:
            log.error(
                "telemetry_lease_failed", session_id=key.session_id, error_type=type(exc).__name__
            )
            return ComputeOutcome.FAILED
        if isinstance(lease, LeaseRefusal):
            return {
                LeaseRefusal.BUSY: ComputeOutcome.LEASE_BUSY,
                LeaseRefusal.BACKING_OFF: ComputeOutcome.BACKING_OFF,
                LeaseRefusal.NO_SESSION: ComputeOutcome.SESSION_GONE,
            }[lease]
        keeper = asyncio.create_task(self._keep_lease(key))
        try:
            return await self._compute_leased(key, lease, reason)
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)

    async def _compute_leased(
        self, key: TelemetryKey, lease: Lease, reason: ScheduleReason
    ) -> ComputeOutcome:
        started = time.perf_counter()
        read_started_ms = self._clock.now_ms()
        try:
            async with self._db.read() as conn:
                session = await load_session(conn, key)
                fresh = session is not None and self._lease_current(
                    lease, session, key, read_started_ms
                )
                computed = None
                if session is not None and not fresh:
                    computed = await self.aggregator(conn, session, key, read_started_ms)
            if computed is None:
                async with self._cache_write() as conn:
                    await self.cache.release(
                        conn, key, owner=self.owner_id, now_ms=self._clock.now_ms()
                    )
                return ComputeOutcome.SKIPPED_FRESH if fresh else ComputeOutcome.SESSION_GONE
            compute_ms = int((time.perf_counter() - started) * 1000)
            saved_at = self._clock.now_ms()
            async with self._cache_write() as conn:
                result = await self.cache.save(
                    conn,
                    key,
                    computed,
                    owner=self.owner_id,
                    now_ms=saved_at,
                    compute_ms=compute_ms,
                    read_started_ms=read_started_ms,
                )
        except Exception as exc:
            await self._record_failure(key, lease, exc, reason)
            return ComputeOutcome.FAILED
        if not result.saved:
            log.warning("telemetry_lease_lost", session_id=key.session_id, reason=reason.value)
            return ComputeOutcome.LEASE_LOST
        self._metrics.computes.labels(computed.state.value, reason.value).inc()
        self._metrics.compute_seconds.labels(reason.value).observe(time.perf_counter() - started)
        if result.lag_ms is not None:
            self._metrics.freshness_lag_seconds.observe(max(result.lag_ms, 0) / 1000)
        await self._notify(key, computed)
        return ComputeOutcome.COMPUTED

    @staticmethod
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
        try:
            async with self._cache_write() as conn:
                await self.cache.fail(
                    conn,
                    key,
                    owner=self.owner_id,
                    now_ms=self._clock.now_ms(),
                    attempts=attempts,
                    error_code=COMPUTE_FAILED,
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
            try:
                async with self._cache_write() as conn:
                    held = await self.cache.renew(
                        conn,
                        key,
                        owner=self.owner_id,
                        now_ms=self._clock.now_ms(),
                        lease_ms=self._lease_ms,
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
        listener = self.listener
        if listener is None:
            return
        window = computed.window
        try:
            await listener.session_updated(
                session_id=key.session_id,
                source_watermark=computed.source_watermark,
                state=computed.state.value,
                window_minutes=key.window_minutes,
                resolution=key.resolution.value,
                computed_at_ms=computed.computed_at_ms,
                live=window.live,
                changed_from_ms=window.start_ms,
                changed_to_ms=window.end_ms,
            )
        except Exception as exc:
            log.warning(
                "telemetry_listener_failed",
                session_id=key.session_id,
                error_type=type(exc).__name__,
            )


def build_telemetry(
    settings: Settings,
    db: Database,
    clock: Clock,
    metrics: Metrics,
    *,
    owner_id: str | None = None,
    subscriptions: Subscriptions | None = None,
) -> tuple[SessionTelemetryService, BoundedComputeCoordinator]:
    """The service with its in-process coordinator wired as its scheduler; the coordinator
    retries failed or blocked computes while a trigger, a recent GET or a subscriber of
    ``subscriptions`` still needs them."""
    service = SessionTelemetryService(
        db,
        clock,
        metrics,
        lease_ms=settings.lease_ms,
        owner_id=owner_id or default_owner_id(),
        default_window_minutes=settings.default_window_minutes,
    )
    coordinator = BoundedComputeCoordinator(
        service.compute,
        max_concurrency=settings.max_concurrent_computes,
        max_pending=settings.max_pending_computes,
        metrics=metrics,
        retry_delay=RetryDelays(db, clock, service.cache),
        subscriptions=subscriptions,
    )
    service.scheduler = coordinator
    return service, coordinator
