"""The one place where a process is assembled from ``Settings``: every collaborator is built once,
in dependency order, into a frozen dataclass of concrete types. Nothing is assigned afterwards.

Server (``build_server``)::

    Socket.IO server ─▶ WebSocketBroadcaster ─▶ TelemetryComputer ─▶ BoundedComputeCoordinator
    SubscriptionRegistry (written by the Socket.IO handlers) ───────────────┤ (retries, fallback)
                             scheduler = SessionTelemetryQueueService (Redis) or the coordinator
                                  │   (scaled out, live updates of cached views first offered
                                  │    to the coordinator: InlineLiveUpdates)
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
from typing import TYPE_CHECKING

from vitalcast.alerts.service import AlertService
from vitalcast.clock import Clock, SystemClock
from vitalcast.credentials import SubjectTombstones, erased_subject_kept_ms
from vitalcast.db.engine import Database, create_engine
from vitalcast.ingest.service import IngestService
from vitalcast.lifecycle.erasure import ErasureService, InProcessErasures, Revoke, redis_scope
from vitalcast.lifecycle.erasure_queue import QueuedErasures
from vitalcast.lifecycle.export import AccountExport
from vitalcast.lifecycle.partitions import PartitionKeeper
from vitalcast.lifecycle.retention import DailyRetention, RetentionService
from vitalcast.lifecycle.samples import SampleDeletionService
from vitalcast.observability import GcPacer, Metrics, PauseWatch, sqlite_unit_observer
from vitalcast.queue.service import SessionTelemetryQueueService
from vitalcast.queue.webhooks import WebhookQueue
from vitalcast.ratelimit import RateLimiter
from vitalcast.realtime.subscriptions import SubscriptionRegistry
from vitalcast.redis_connections import HeldPublishes
from vitalcast.revocations import (
    Revocation,
    RevocationBus,
    RevocationKind,
    RevocationPoll,
    channel_of,
    publish_once,
)
from vitalcast.sessions.changes import NO_LISTENER, ChangeFanout, ChangeListener
from vitalcast.sessions.models import Session
from vitalcast.sessions.service import SessionService
from vitalcast.settings import Settings
from vitalcast.shares import ShareAccessLog
from vitalcast.telemetry.compute.incremental import Aggregator, assemble_batch
from vitalcast.telemetry.compute.memo import ViewMemo
from vitalcast.telemetry.ports import PostSaveHooks, Subscriptions, TelemetryListener
from vitalcast.telemetry.read.forgetting import Forgetting
from vitalcast.telemetry.read.reader import CacheReader, open_reader
from vitalcast.telemetry.read.service import SessionTelemetryService
from vitalcast.telemetry.read.subscribe import SubscribeSupport
from vitalcast.telemetry.run.batcher import MAX_BATCHES_IN_FLIGHT
from vitalcast.telemetry.run.computer import TelemetryComputer
from vitalcast.telemetry.run.coordinator import BoundedComputeCoordinator
from vitalcast.telemetry.run.inline import InlineLiveUpdates
from vitalcast.telemetry.run.insights_service import InsightsService
from vitalcast.telemetry.run.live_ticks import LiveTicker
from vitalcast.telemetry.run.triggers import TelemetryTriggers
from vitalcast.telemetry.scheduling import Scheduler
from vitalcast.telemetry.store.leases import SessionTelemetryCacheRepository
from vitalcast.webhooks.addresses import Resolver, system_resolver
from vitalcast.webhooks.sender import WebhookSender
from vitalcast.webhooks.service import WebhookDispatcher, WebhookService

if TYPE_CHECKING:
    # Socket.IO (with aiohttp) and token verification (PyJWT, cryptography) are imported where
    # a server or a worker is built: a command-line import, erasure or retention builds neither
    # and its process started 0.2 s of CPU faster without them.
    import socketio

    from vitalcast.auth import Authenticator
    from vitalcast.realtime.broadcaster import WebSocketBroadcaster


@dataclass(frozen=True, slots=True)
class Seams:
    """Stand-ins a test may give a process; None keeps the real part."""

    #: the clock of leases, backoff and live windows (tests use ``ManualClock``)
    clock: Clock | None = None
    #: the compute of a batch of views (the fault suite wraps it to fail or to hold the leases)
    aggregator: Aggregator | None = None
    #: who hears about every save instead of the broadcaster
    telemetry_listener: TelemetryListener | None = None
    #: wraps the server's scheduler (e.g. to record what was scheduled, and why)
    scheduler_wrapper: Callable[[Scheduler], Scheduler] | None = None
    #: what the process's computes remember of their saves (tests count what it serves)
    view_memo: ViewMemo | None = None
    #: wraps the telemetry GET's hot read (tests count the reads and what they brought)
    cache_reader_wrapper: Callable[[CacheReader], CacheReader] | None = None
    #: the DNS of webhook URLs (tests make a name resolve to a chosen address)
    resolver: Resolver | None = None


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
    #: scaled out: the live updates of this server's ingests computed here (None: embedded, or
    #: ``Settings.inline_live_updates`` off)
    inline: InlineLiveUpdates | None
    telemetry: SessionTelemetryService
    insights: InsightsService
    triggers: TelemetryTriggers
    ticker: LiveTicker
    sessions: SessionService
    ingest: IngestService
    limiter: RateLimiter
    #: local-token revocations written by other processes (the CLI), found by polling
    revocation_poll: RevocationPoll
    #: reads through shares, written once a second for their owners
    share_access: ShareAccessLog
    #: POST /api/v1/samples/delete
    sample_deletion: SampleDeletionService
    #: GET /api/v1/me/export
    export: AccountExport
    #: DELETE /api/v1/me: records erasures; ``erasures`` runs their purges
    erasure: ErasureService
    erasures: InProcessErasures | QueuedErasures
    #: the daily raw-sample purge (None: VITALCAST_RAW_RETENTION_DAYS unset)
    retention: DailyRetention | None
    #: creates the months of health_samples ahead (PostgreSQL; a no-op elsewhere)
    partition_keeper: PartitionKeeper
    #: the owner's webhook endpoints, and the sender of their deliveries
    webhooks: WebhookService
    dispatcher: WebhookDispatcher
    #: announces alert episodes (a post-save hook of ``computer``) and replays missed ones
    alerts: AlertService
    #: scaled out: webhook deliveries as BullMQ jobs (the dispatcher only sweeps for lost ones)
    webhook_jobs: WebhookQueue | None
    #: the state and the missed update a Socket.IO subscribe asks for
    subscribe: SubscribeSupport
    #: GC pauses and event-loop lag on /metrics
    pauses: PauseWatch
    #: young collections on a timer (``Settings.gc_young_interval_ms``; off at 0)
    gc_pacer: GcPacer

    async def start(self) -> None:
        self.pauses.start()
        self.gc_pacer.start()
        await self.partition_keeper.start()
        await self.coordinator.start()
        await self.ticker.start()
        await self.authenticator.start()
        await self.revocation_poll.start()
        await self.share_access.start()
        await self.dispatcher.start()
        # A purge cut by a crash or a restart resumes.
        if await self.erasure.pending():
            await self.erasures.dispatch()
        if self.retention is not None:
            await self.retention.start()

    async def refresh_metrics(self) -> None:
        """Update the gauges that are read rather than counted (before /metrics renders)."""
        if self.queue is not None:
            await self.queue.refresh_metrics()
        else:
            await self.coordinator.refresh_metrics()

    async def close(self) -> None:
        """Stop computing and release every connection (the realtime server closes first)."""
        await self.dispatcher.stop()
        if self.webhook_jobs is not None:
            await self.webhook_jobs.close()
        await self.ticker.stop()
        await self.erasures.stop()
        if self.retention is not None:
            await self.retention.stop()
        await self.partition_keeper.stop()
        await self.share_access.close()
        await self.revocation_poll.close()
        await self.authenticator.close()
        if self.inline is not None:
            await self.inline.drain()
        if self.queue is not None:
            await self.queue.close()
        await self.coordinator.stop()
        await self.telemetry.close()
        await self.broadcaster.close()
        await self.limiter.close()
        await self.db.dispose()
        await self.gc_pacer.stop()
        await self.pauses.stop()


@dataclass(frozen=True, slots=True)
class WorkerParts:
    """Everything one ``vitalcast worker`` process runs, built by ``build_worker``."""

    settings: Settings
    db: Database
    clock: Clock
    metrics: Metrics
    broadcaster: WebSocketBroadcaster
    computer: TelemetryComputer
    #: runs the erasure purges the servers queue
    erasure: ErasureService
    #: sends the webhook deliveries whose jobs this worker takes (``queue.webhooks``)
    dispatcher: WebhookDispatcher
    webhook_jobs: WebhookQueue
    #: creates the months of health_samples ahead (PostgreSQL; a no-op elsewhere)
    partition_keeper: PartitionKeeper
    #: the servers' revocations, heard so that the compute memo forgets deleted and erased data
    revocations: RevocationBus
    #: the broadcaster's publishes, held to go out with the completions of telemetry jobs
    held: HeldPublishes

    async def start(self) -> None:
        await self.partition_keeper.start()
        await self.revocations.start()

    async def close(self) -> None:
        await self.revocations.close()
        await self.partition_keeper.stop()
        await self.webhook_jobs.close()
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
    return Database(
        create_engine(settings.resolved_database_url, pool_timeout=settings.database_pool_timeout_s)
    )


def _memo(seams: Seams) -> ViewMemo:
    return seams.view_memo if seams.view_memo is not None else ViewMemo()


def _computer(
    settings: Settings,
    db: Database,
    clock: Clock,
    metrics: Metrics,
    listener: TelemetryListener,
    seams: Seams,
    *,
    lease_ms: int,
    hooks: PostSaveHooks | None = None,
    memo: ViewMemo | None = None,
) -> TelemetryComputer:
    """The process's one computer, with the one memo of its saves and the cache repository."""
    memo = memo if memo is not None else _memo(seams)
    return TelemetryComputer(
        db,
        clock,
        metrics,
        seams.telemetry_listener or listener,
        lease_ms=lease_ms,
        aggregator=seams.aggregator or assemble_batch,
        cache=SessionTelemetryCacheRepository(),
        hooks=hooks,
        memo=memo,
    )


def _coordinator(
    settings: Settings,
    computer: TelemetryComputer,
    metrics: Metrics,
    subscriptions: Subscriptions | None = None,
) -> BoundedComputeCoordinator:
    return BoundedComputeCoordinator(
        computer.compute_batch,
        max_concurrency=settings.max_concurrent_computes,
        max_pending=settings.max_pending_computes,
        max_batch=settings.compute_batch_max_views,
        max_batches=MAX_BATCHES_IN_FLIGHT,
        metrics=metrics,
        retry_delay=computer.retry_delay_ms,
        subscriptions=subscriptions,
    )


def build_server(settings: Settings, seams: Seams = NO_SEAMS) -> ServerParts:
    """The parts of a server process; nothing connects until used or ``start``ed."""
    from vitalcast.realtime.broadcaster import WebSocketBroadcaster, socketio_server

    clock = seams.clock or SystemClock()
    db = _database(settings)
    metrics = Metrics()
    db.unit_observer = sqlite_unit_observer(metrics)
    sio, manager = socketio_server(settings)
    broadcaster = WebSocketBroadcaster.for_server(sio, manager, metrics=metrics)
    subscriptions = SubscriptionRegistry()
    hooks = PostSaveHooks()
    memo = _memo(seams)
    computer = _computer(
        settings,
        db,
        clock,
        metrics,
        broadcaster,
        seams,
        lease_ms=settings.lease_ms,
        hooks=hooks,
        memo=memo,
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
    inline = (
        InlineLiveUpdates(coordinator, scheduler, metrics)
        if queue is not None and settings.inline_live_updates
        else None
    )
    triggers = TelemetryTriggers(
        db,
        clock,
        scheduler,
        default_window_minutes=settings.default_window_minutes,
        inline=inline,
    )
    changes = ChangeFanout(triggers, broadcaster)
    secret = settings.resolved_secret()
    authenticator = _authenticator(settings, db, clock, secret)
    erasure = _erasure(settings, db, clock, authenticator)
    in_process = InProcessErasures(erasure)
    resolver = seams.resolver or system_resolver
    webhook_jobs = WebhookQueue(settings) if settings.redis_url else None
    dispatcher = _dispatcher(settings, db, clock, metrics, resolver, webhook_jobs)
    alerts = AlertService(
        db, clock, metrics, broadcaster, deliveries_committed=dispatcher.committed
    )
    hooks.register(alerts)
    reader = open_reader(settings.resolved_database_url)
    if seams.cache_reader_wrapper is not None:
        reader = seams.cache_reader_wrapper(reader)
    telemetry = SessionTelemetryService(
        db,
        clock,
        metrics,
        scheduler,
        reader,
        default_window_minutes=settings.default_window_minutes,
    )
    # the deltas of this process's saves are built at save time, for the clients asking them
    hooks.register(telemetry.saved)
    authenticator.revocations.subscribe(Forgetting([telemetry, memo]))
    return ServerParts(
        pauses=PauseWatch(metrics),
        gc_pacer=GcPacer(settings.gc_young_interval_ms),
        settings=settings,
        db=db,
        clock=clock,
        metrics=metrics,
        secret=secret,
        authenticator=authenticator,
        sio=sio,
        broadcaster=broadcaster,
        subscriptions=subscriptions,
        computer=computer,
        coordinator=coordinator,
        queue=queue,
        inline=inline,
        telemetry=telemetry,
        insights=InsightsService(
            db, clock, scheduler, default_window_minutes=settings.default_window_minutes
        ),
        triggers=triggers,
        ticker=LiveTicker(db, clock, subscriptions, scheduler, metrics),
        sessions=SessionService(
            db, clock, changes, deletions=_SessionDeletions(broadcaster, authenticator)
        ),
        ingest=IngestService(db, clock, metrics, changes),
        limiter=RateLimiter.from_settings(settings),
        sample_deletion=SampleDeletionService(db, clock, changes),
        export=AccountExport(db, clock, window_minutes=settings.default_window_minutes),
        erasure=erasure,
        erasures=QueuedErasures(settings, in_process) if settings.redis_url else in_process,
        retention=(
            DailyRetention(retention_service(settings, db, clock), clock)
            if settings.raw_retention_days
            else None
        ),
        partition_keeper=PartitionKeeper(db.partitions, clock.now_ms),
        revocation_poll=RevocationPoll(
            db, authenticator.revocations, interval_ms=settings.revocation_poll_ms
        ),
        share_access=ShareAccessLog(db, clock),
        webhooks=WebhookService(
            db, clock, allow_private=settings.webhook_allow_private, resolver=resolver
        ),
        dispatcher=dispatcher,
        alerts=alerts,
        webhook_jobs=webhook_jobs,
        subscribe=SubscribeSupport(
            db, clock, reader, default_window_minutes=settings.default_window_minutes
        ),
    )


@dataclass(frozen=True, slots=True)
class _SessionDeletions:
    """A deleted session's subscribers are told and its room closed on every node, then the
    session is revoked on every server: its shares' cached principals and what each process
    keeps of its views go at once (``Forgetting``)."""

    broadcaster: WebSocketBroadcaster
    authenticator: Authenticator

    async def session_deleted(self, session: Session) -> None:
        await self.broadcaster.session_deleted(session)
        await self.authenticator.revoke_session(session.id)


def _publisher(settings: Settings, clock: Clock) -> Revoke:
    """``revoke_user`` of a process that is no server (worker, CLI): published through Redis
    when scaled out; embedded, the server's poll of ``users.tokens_valid_after_ms`` (which the
    erasure moves) finds it."""

    async def revoke(user_id: str) -> None:
        if settings.redis_url:
            revocation = Revocation(RevocationKind.USER, user_id, clock.now_ms())
            await publish_once(
                settings.redis_url, channel_of(settings.socketio_channel), revocation
            )

    return revoke


def retention_service(settings: Settings, db: Database, clock: Clock) -> RetentionService:
    """The raw-sample retention of ``settings`` (``vitalcast retention run`` and the daily one)."""
    if not settings.raw_retention_days:
        raise ValueError("VITALCAST_RAW_RETENTION_DAYS is not set")
    return RetentionService(db, clock, days=settings.raw_retention_days)


def build_retention(settings: Settings) -> tuple[Database, RetentionService]:
    """The database and retention service of ``vitalcast retention run``."""
    db = _database(settings)
    return db, retention_service(settings, db, SystemClock())


def _erasure(
    settings: Settings, db: Database, clock: Clock, authenticator: Authenticator | None
) -> ErasureService:
    """The erasure service of a process; one that is no server revokes through Redis."""
    from vitalcast.oidc import LEEWAY_S

    revoke: Revoke = (
        authenticator.revoke_user if authenticator is not None else _publisher(settings, clock)
    )
    return ErasureService(
        db,
        clock,
        revoke=revoke,
        redis=redis_scope(
            settings.redis_url,
            [settings.rate_limit_prefix, settings.queue_prefix],
            settings.queue_prefix,
        ),
        tombstones=(
            SubjectTombstones(settings.resolved_secret(), settings.oidc_issuer)
            if settings.oidc_issuer
            else None
        ),
        tombstone_kept_ms=erased_subject_kept_ms(settings.oidc_token_max_lifetime_s, LEEWAY_S),
        batch_rows=settings.erasure_batch_rows,
    )


def _authenticator(settings: Settings, db: Database, clock: Clock, secret: str) -> Authenticator:
    """Local tokens (unless switched off), the OpenID Connect issuer's when one is configured,
    share tokens; revocations travel through Redis when it is configured."""
    from vitalcast.auth import Authenticator
    from vitalcast.oidc import OidcVerifier

    oidc = None
    if settings.oidc_issuer:
        if not settings.oidc_audience:
            raise ValueError("VITALCAST_OIDC_AUDIENCE is required with VITALCAST_OIDC_ISSUER")
        oidc = OidcVerifier(
            settings.oidc_issuer,
            settings.oidc_audience,
            refresh_s=settings.oidc_jwks_refresh_s,
            max_lifetime_s=settings.oidc_token_max_lifetime_s,
        )
    return Authenticator(
        secret,
        db,
        clock=clock,
        local_tokens=settings.local_tokens,
        oidc=oidc,
        revocations=RevocationBus(
            settings.redis_url, channel=channel_of(settings.socketio_channel)
        ),
        cache_s=settings.auth_cache_s,
    )


def _dispatcher(
    settings: Settings,
    db: Database,
    clock: Clock,
    metrics: Metrics,
    resolver: Resolver,
    jobs: WebhookQueue | None,
) -> WebhookDispatcher:
    sender = WebhookSender(
        allow_private=settings.webhook_allow_private,
        timeout_s=settings.webhook_timeout_s,
        resolver=resolver,
    )
    return WebhookDispatcher(
        db,
        clock,
        metrics,
        sender,
        concurrency=settings.webhook_concurrency,
        retry_base_ms=settings.webhook_retry_base_ms,
        retry_max_ms=settings.webhook_retry_max_ms,
        retry_window_ms=settings.webhook_retry_window_ms,
        # an attempt ends within twice the timeout; the claim outlives it with room to record
        claim_ms=int(settings.webhook_timeout_s * 2_000) + 10_000,
        jobs=jobs,
    )


def build_worker(settings: Settings, seams: Seams = NO_SEAMS) -> WorkerParts:
    """The parts of a worker process: computes whose saves are pushed through Redis."""
    from vitalcast.realtime.broadcaster import WebSocketBroadcaster

    clock = seams.clock or SystemClock()
    db = _database(settings)
    metrics = Metrics()
    # the telemetry consumer sends the publishes of its jobs' computes with their completions
    held = HeldPublishes()
    broadcaster = WebSocketBroadcaster.for_worker(settings, metrics=metrics, held=held)
    # As short as the job lock (settings.worker_lease_ms): when a worker dies, its job is
    # redelivered within seconds and the key must be free by then, not after the server's lease.
    lease_ms = min(settings.lease_ms, settings.worker_lease_ms)
    hooks = PostSaveHooks()
    memo = _memo(seams)
    computer = _computer(
        settings, db, clock, metrics, broadcaster, seams, lease_ms=lease_ms, hooks=hooks, memo=memo
    )
    webhook_jobs = WebhookQueue(settings)
    dispatcher = _dispatcher(
        settings, db, clock, metrics, seams.resolver or system_resolver, webhook_jobs
    )
    hooks.register(
        AlertService(db, clock, metrics, broadcaster, deliveries_committed=dispatcher.committed)
    )
    erasure = _erasure(settings, db, clock, None)
    # The worker is no server: it only listens, so that its compute memo forgets as they do.
    revocations = RevocationBus(settings.redis_url, channel=channel_of(settings.socketio_channel))
    revocations.subscribe(Forgetting([memo]))
    return WorkerParts(
        settings,
        db,
        clock,
        metrics,
        broadcaster,
        computer,
        erasure,
        dispatcher,
        webhook_jobs,
        PartitionKeeper(db.partitions, clock.now_ms),
        revocations,
        held,
    )


def build_erasure(settings: Settings) -> tuple[Database, ErasureService]:
    """The database and erasure service of ``vitalcast users erase`` (revokes through Redis
    when scaled out; an embedded server forgets the user when its token cache misses)."""
    db = _database(settings)
    return db, _erasure(settings, db, SystemClock(), None)


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
        from vitalcast.realtime.broadcaster import WebSocketBroadcaster

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
