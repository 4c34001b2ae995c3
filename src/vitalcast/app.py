"""``create_app(settings)``: the database, the services and the HTTP (+ Socket.IO) surface of one
server process, started and stopped by the ASGI lifespan."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response

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
from vitalcast.telemetry.service import build_telemetry

log = get_logger("vitalcast.http")


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
        settings, container.db, container.clock, container.metrics
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
        try:
            yield
        finally:
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

    @app.middleware("http")
    async def access_log(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        # Method, route and status only: never the query's values, headers or the body.
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        log.debug(
            "request",
            method=request.method,
            route=getattr(route, "path", "?"),
            status=response.status_code,
            ms=round((time.perf_counter() - started) * 1000, 2),
            user_id=getattr(request.state, "user_id", None),
        )
        return response

    return app
