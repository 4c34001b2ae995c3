"""``create_app(settings)``: the database, the services and the HTTP (+ Socket.IO) surface of one
server process, started and stopped by the ASGI lifespan."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vitalcast import __version__, ratelimit
from vitalcast.api import dashboard, ops, samples, sessions
from vitalcast.api import errors as api_errors
from vitalcast.api import telemetry as telemetry_api
from vitalcast.clock import Clock, SystemClock
from vitalcast.container import Container
from vitalcast.db.engine import Database, create_engine
from vitalcast.ingest.service import IngestService
from vitalcast.observability import Metrics, get_logger
from vitalcast.queue.service import SessionTelemetryQueueService
from vitalcast.realtime.server import SOCKETIO_PATH, RealtimeServer
from vitalcast.sessions.service import SessionService
from vitalcast.settings import Settings
from vitalcast.telemetry.live_ticks import LiveTicker
from vitalcast.telemetry.service import build_telemetry

log = get_logger("vitalcast.http")


class AccessLog:
    """Logs method, route, status and duration of each HTTP request, never the query's values,
    headers or body. Plain ASGI: Starlette's BaseHTTPMiddleware costs ~0.1 ms per request, a
    tenth of a cached telemetry answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            log.debug(
                "request",
                method=scope["method"],
                route=getattr(scope.get("route"), "path", "?"),
                status=status,
                ms=round((time.perf_counter() - started) * 1000, 2),
                user_id=scope.get("state", {}).get("user_id"),
            )


def build_container(settings: Settings, *, clock: Clock | None = None) -> Container:
    """Everything a process needs before it serves or works: settings, database, clock, metrics."""
    clock = clock or SystemClock()
    db = Database(create_engine(settings.resolved_database_url))
    metrics = Metrics()
    return Container(
        settings=settings,
        db=db,
        clock=clock,
        metrics=metrics,
        secret=settings.resolved_secret(),
        sessions=SessionService(db, clock),
        ingest=IngestService(db, clock, metrics),
    )


def create_app(settings: Settings, *, clock: Clock | None = None) -> FastAPI:
    """The server app. Migrations are the caller's job (``vitalcast serve`` runs them first)."""
    container = build_container(settings, clock=clock)
    realtime = RealtimeServer(container)
    container.broadcaster = realtime.broadcaster
    telemetry, coordinator = build_telemetry(
        settings, container.db, container.clock, container.metrics, subscriptions=realtime
    )
    ticker = LiveTicker(
        container.db,
        container.clock,
        realtime,
        telemetry.schedule,
        container.metrics,
        telemetry.cache,
    )
    container.telemetry = telemetry
    telemetry.listener = realtime.broadcaster
    container.extras["coordinator"] = coordinator
    container.extras["refresh_metrics"] = coordinator.refresh_metrics

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        log.info("server_starting", mode="embedded" if settings.embedded else "scaled_out")
        await coordinator.start()
        queue = None
        if settings.redis_url:
            # Computes become queue jobs; the coordinator only runs them while Redis is down.
            queue = SessionTelemetryQueueService(
                settings, fallback=coordinator, metrics=container.metrics
            )
            container.queue = queue
            telemetry.scheduler = queue
            container.extras["refresh_metrics"] = queue.refresh_metrics
        await ticker.start()
        try:
            yield
        finally:
            await ticker.stop()
            if queue is not None:
                await queue.close()
            await coordinator.stop()
            await telemetry.close()
            await realtime.close()
            await ratelimit.close(container)
            await container.db.dispose()
            log.info("server_stopped")

    app = FastAPI(
        title="vitalcast",
        version=__version__,
        summary="Real-time session telemetry for wearable health samples.",
        lifespan=lifespan,
    )
    app.state.container = container
    api_errors.install(app)
    app.include_router(ops.router)
    app.include_router(sessions.router)
    app.include_router(samples.router)
    app.include_router(telemetry_api.router)
    dashboard.install(app)
    app.mount(SOCKETIO_PATH, realtime.asgi_app())

    app.add_middleware(AccessLog)

    return app
