"""The one place where a process is assembled from ``Settings``: every collaborator is built once,
in dependency order, into a frozen dataclass of concrete types. Nothing is assigned afterwards.

Server (``build_server``)::

    Socket.IO server ─▶ WebSocketBroadcaster ─▶ TelemetryComputer ─▶ BoundedComputeCoordinator
    SubscriptionRegistry (written by the Socket.IO handlers) ───────────────┤ (retries, fallback)
                             scheduler = SessionTelemetryQueueService (Redis) or the coordinator
                                  ├─▶ SessionTelemetryService (answers requests)
                                  ├─▶ LiveTicker (subscribed live views, once per bucket)
                                  ├─▶ InsightsService (compares sessions, schedules misses)
                                  └─▶ TelemetryTriggers ─┐
                        ChangeFanout(triggers, broadcaster) ─▶ IngestService, SessionService

Worker (``build_worker``): a computer that emits through a write-only Socket.IO manager.
Command-line jobs (``build_local_computes``): a computer and a coordinator, no push.
Imports (``build_importer``): ingest and session services whose changes reach the workers and
the servers' subscribers when scaled out, and nobody when embedded.

Tests stand in for the clock, the aggregate or the listener of saves through ``Seams``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import socketio

from vitalcast.auth import Authenticator
from vitalcast.clock import Clock, SystemClock
from vitalcast.db.engine import Database, create_engine
from vitalcast.ingest.service import IngestService
from vitalcast.observability import Metrics
from vitalcast.queue.service import SessionTelemetryQueueService
from vitalcast.ratelimit import RateLimiter
from vitalcast.realtime.broadcaster import WebSocketBroadcaster, socketio_server
from vitalcast.realtime.subscriptions import SubscriptionRegistry
from vitalcast.sessions.changes import NO_LISTENER, ChangeFanout, ChangeListener
from vitalcast.sessions.service import SessionService
from vitalcast.settings import Settings
from vitalcast.telemetry.compute import Aggregator
from vitalcast.telemetry.computer import TelemetryComputer
from vitalcast.telemetry.coordinator import BoundedComputeCoordinator
from vitalcast.telemetry.incremental import compute_view
from vitalcast.telemetry.insights_service import InsightsService
from vitalcast.telemetry.live_ticks import LiveTicker
from vitalcast.telemetry.models import Subscriptions, TelemetryListener
from vitalcast.telemetry.reader import open_reader
from vitalcast.telemetry.scheduling import Scheduler
from vitalcast.telemetry.service import SessionTelemetryService
from vitalcast.telemetry.triggers import TelemetryTriggers


@dataclass(frozen=True, slots=True)
class Seams:
    """Stand-ins a test may give a process; None keeps the real part."""

    #: the clock of leases, backoff and live windows (tests use ``ManualClock``)
    clock: Clock | None = None
    #: the aggregate of one compute (the fault suite wraps it to fail or to hold the lease)
    aggregator: Aggregator | None = None
    #: who hears about every save instead of the broadcaster
    telemetry_listener: TelemetryListener | None = None
    #: wraps the server's scheduler (e.g. to record what was scheduled, and why)
    scheduler_wrapper: Callable[[Scheduler], Scheduler] | None = None


#: the real thing everywhere
NO_SEAMS = Seams()


@dataclass(frozen=True, slots=True)
class ServerParts:
    """Everything one ``vitalcast serve`` process runs, built by ``build_server``."""

    settings: Settings
    db: Database
    clock: Clock
    metrics: Metrics
    #: the HS256 key of bearer tokens
    secret: str
    #: who a caller is (token and user), for HTTP and Socket.IO alike
    authenticator: Authenticator
    sio: socketio.AsyncServer
    broadcaster: WebSocketBroadcaster
    #: sessions with subscribed sockets on this process (the Socket.IO handlers keep it)
    subscriptions: SubscriptionRegistry
    computer: TelemetryComputer
    coordinator: BoundedComputeCoordinator
    #: None in the embedded mode
    queue: SessionTelemetryQueueService | None
    telemetry: SessionTelemetryService
    insights: InsightsService
    triggers: TelemetryTriggers
    ticker: LiveTicker
    sessions: SessionService
    ingest: IngestService
    limiter: RateLimiter

    async def start(self) -> None:
        await self.coordinator.start()
        await self.ticker.start()

    async def refresh_metrics(self) -> None:
        """Update the gauges that are read rather than counted (before /metrics renders)."""
        if self.queue is not None:
            await self.queue.refresh_metrics()
        else:
            await self.coordinator.refresh_metrics()

    async def close(self) -> None:
        """Stop computing and release every connection (the realtime server closes first)."""
        await self.ticker.stop()
        if self.queue is not None:
            await self.queue.close()
        await self.coordinator.stop()
        await self.telemetry.close()
        await self.broadcaster.close()
        await self.limiter.close()
        await self.db.dispose()


@dataclass(frozen=True, slots=True)
class WorkerParts:
    """Everything one ``vitalcast worker`` process runs, built by ``build_worker``."""

    settings: Settings
    db: Database
    clock: Clock
    metrics: Metrics
    broadcaster: WebSocketBroadcaster
    computer: TelemetryComputer

    async def close(self) -> None:
        await self.broadcaster.close()
        await self.db.dispose()


@dataclass(frozen=True, slots=True)
class LocalComputes:
    """Computes run in this process with nobody to push to (``vitalcast backfill``)."""

    db: Database
    clock: Clock
    computer: TelemetryComputer
    coordinator: BoundedComputeCoordinator

    async def close(self) -> None:
        await self.coordinator.stop()
        await self.db.dispose()


@dataclass(frozen=True, slots=True)
class ImporterParts:
    """What ``vitalcast import`` runs, built by ``build_importer``."""

    db: Database
    clock: Clock
    ingest: IngestService
    sessions: SessionService
    #: scaled out only: where the import's recomputes and ``session.status`` pushes go
    queue: SessionTelemetryQueueService | None
    broadcaster: WebSocketBroadcaster | None

    async def close(self) -> None:
        if self.queue is not None:
            await self.queue.close()
        if self.broadcaster is not None:
            await self.broadcaster.close()
        await self.db.dispose()


class _Silent:
    """The listener of saves in a process with nobody subscribed."""

    async def session_updated(self, update: object) -> None:
        return None


def _database(settings: Settings) -> Database:
    return Database(create_engine(settings.resolved_database_url))


def _computer(
    settings: Settings,
    db: Database,
    clock: Clock,
    metrics: Metrics,
    listener: TelemetryListener,
    seams: Seams,
    *,
    lease_ms: int,
) -> TelemetryComputer:
    return TelemetryComputer(
        db,
        clock,
        metrics,
        seams.telemetry_listener or listener,
        lease_ms=lease_ms,
        aggregator=seams.aggregator or compute_view,
    )


def _coordinator(
    settings: Settings,
    computer: TelemetryComputer,
    metrics: Metrics,
    subscriptions: Subscriptions | None = None,
) -> BoundedComputeCoordinator:
    return BoundedComputeCoordinator(
        computer.compute,
        max_concurrency=settings.max_concurrent_computes,
        max_pending=settings.max_pending_computes,
        metrics=metrics,
        retry_delay=computer.retry_delay_ms,
        subscriptions=subscriptions,
    )


def build_server(settings: Settings, seams: Seams = NO_SEAMS) -> ServerParts:
    """The parts of a server process; nothing connects until used or ``start``ed."""
    clock = seams.clock or SystemClock()
    db = _database(settings)
    metrics = Metrics()
    sio, manager = socketio_server(settings)
    broadcaster = WebSocketBroadcaster.for_server(sio, manager, metrics=metrics)
    subscriptions = SubscriptionRegistry()
    computer = _computer(
        settings, db, clock, metrics, broadcaster, seams, lease_ms=settings.lease_ms
    )
    coordinator = _coordinator(settings, computer, metrics, subscriptions)
    queue = (
        SessionTelemetryQueueService(settings, fallback=coordinator, metrics=metrics)
        if settings.redis_url
        else None
    )
    scheduler: Scheduler = queue if queue is not None else coordinator
    if seams.scheduler_wrapper is not None:
        scheduler = seams.scheduler_wrapper(scheduler)
    triggers = TelemetryTriggers(
        db, clock, scheduler, default_window_minutes=settings.default_window_minutes
    )
    changes = ChangeFanout(triggers, broadcaster)
    secret = settings.resolved_secret()
    return ServerParts(
        settings=settings,
        db=db,
        clock=clock,
        metrics=metrics,
        secret=secret,
        authenticator=Authenticator(secret, db),
        sio=sio,
        broadcaster=broadcaster,
        subscriptions=subscriptions,
        computer=computer,
        coordinator=coordinator,
        queue=queue,
        telemetry=SessionTelemetryService(
            db,
            clock,
            metrics,
            scheduler,
            open_reader(settings.resolved_database_url),
            default_window_minutes=settings.default_window_minutes,
        ),
        insights=InsightsService(
            db, clock, scheduler, default_window_minutes=settings.default_window_minutes
        ),
        triggers=triggers,
        ticker=LiveTicker(db, clock, subscriptions, scheduler, metrics),
        sessions=SessionService(db, clock, changes),
        ingest=IngestService(db, clock, metrics, changes),
        limiter=RateLimiter.from_settings(settings),
    )


def build_worker(settings: Settings, seams: Seams = NO_SEAMS) -> WorkerParts:
    """The parts of a worker process: computes whose saves are pushed through Redis."""
    clock = seams.clock or SystemClock()
    db = _database(settings)
    metrics = Metrics()
    broadcaster = WebSocketBroadcaster.for_worker(settings, metrics=metrics)
    # As short as the job lock (settings.worker_lease_ms): when a worker dies, its job is
    # redelivered within seconds and the key must be free by then, not after the server's lease.
    lease_ms = min(settings.lease_ms, settings.worker_lease_ms)
    computer = _computer(settings, db, clock, metrics, broadcaster, seams, lease_ms=lease_ms)
    return WorkerParts(settings, db, clock, metrics, broadcaster, computer)


def build_importer(settings: Settings, seams: Seams = NO_SEAMS) -> ImporterParts:
    """The ingest and session services of a command-line import. Scaled out, their changes have
    the effects an HTTP ingest's have: recomputes go to the workers through the queue and
    ``session.status`` to the servers' subscribers through Redis. Embedded, no other part runs
    in this process: the server finds the touched sessions stale by their watermarks on the
    next read and recomputes them then."""
    clock = seams.clock or SystemClock()
    db = _database(settings)
    metrics = Metrics()
    queue = broadcaster = None
    changes: ChangeListener = NO_LISTENER
    if settings.redis_url:
        queue = SessionTelemetryQueueService(settings, fallback=None, metrics=metrics)
        broadcaster = WebSocketBroadcaster.for_worker(settings, metrics=metrics)
        triggers = TelemetryTriggers(
            db, clock, queue, default_window_minutes=settings.default_window_minutes
        )
        changes = ChangeFanout(triggers, broadcaster)
    return ImporterParts(
        db,
        clock,
        IngestService(db, clock, metrics, changes),
        SessionService(db, clock, changes),
        queue,
        broadcaster,
    )


def build_local_computes(settings: Settings, seams: Seams = NO_SEAMS) -> LocalComputes:
    """A bounded in-process coordinator over a computer that tells nobody (a CLI job)."""
    clock = seams.clock or SystemClock()
    db = _database(settings)
    metrics = Metrics()
    computer = _computer(settings, db, clock, metrics, _Silent(), seams, lease_ms=settings.lease_ms)
    return LocalComputes(db, clock, computer, _coordinator(settings, computer, metrics))
