"""``create_app(settings)``: the HTTP (+ Socket.IO) surface of one server process over the parts
``wiring.build_server`` assembles, started and stopped by the ASGI lifespan."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vitalcast import __version__
from vitalcast.api import dashboard, exports, insights, me, ops, samples, sessions, webhooks
from vitalcast.api import errors as api_errors
from vitalcast.api import shares as shares_api
from vitalcast.api import telemetry as telemetry_api
from vitalcast.api.guard import RequestGuard
from vitalcast.api.ratelimits import Budgets
from vitalcast.observability import debug_enabled, get_logger
from vitalcast.realtime.frames import SOCKETIO_PATH
from vitalcast.realtime.server import RealtimeServer
from vitalcast.settings import Settings
from vitalcast.wiring import NO_SEAMS, Seams, ServerParts, build_server

log = get_logger("vitalcast.http")

#: work that runs beside a server for as long as it serves, on its parts (``serve --demo``)
Companion = Callable[[ServerParts], AbstractAsyncContextManager[None]]


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
        responding = False

        async def send_with_status(message: Message) -> None:
            nonlocal status, responding
            if message["type"] == "http.response.start":
                status, responding = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        except asyncio.CancelledError:
            # Only uvicorn cancels a request: one still running when the shutdown grace ends.
            # It would log the cancellation as a traceback; it is one line here, and a request
            # not answered yet gets a 503 to retry elsewhere (a started answer is cut).
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            log.info("request_cut_at_shutdown", method=scope["method"], answered=responding)
            if not responding:
                status = 503
                cut = api_errors.problem(
                    503, "SHUTTING_DOWN", "The server is shutting down.", retry_after_s=1
                )
                await cut(scope, receive, send)
        finally:
            if debug_enabled():
                log.debug(
                    "request",
                    method=scope["method"],
                    route=getattr(scope.get("route"), "path", "?"),
                    status=status,
                    ms=round((time.perf_counter() - started) * 1000, 2),
                    user_id=scope.get("state", {}).get("user_id"),
                )


def create_app(
    settings: Settings, seams: Seams = NO_SEAMS, *, companions: Sequence[Companion] = ()
) -> FastAPI:
    """The server app. Migrations are the caller's job (``vitalcast serve`` runs them first).
    ``companions`` start once the parts have started and stop before they close."""
    parts = build_server(settings, seams)
    realtime = RealtimeServer(parts.sio, parts)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        log.info("server_starting", mode="embedded" if settings.embedded else "scaled_out")
        await parts.start()
        try:
            async with AsyncExitStack() as stack:
                for companion in companions:
                    await stack.enter_async_context(companion(parts))
                yield
        finally:
            await realtime.close()
            await parts.close()
            log.info("server_stopped")

    app = FastAPI(
        title="vitalcast",
        version=__version__,
        summary="Real-time session telemetry for wearable health samples.",
        lifespan=lifespan,
        # FastAPI's /docs and /redoc load their scripts from a CDN; api.dashboard serves /docs.
        docs_url=None,
        redoc_url=None,
        # The service reports through /metrics and its logs; FastAPI's native OpenTelemetry
        # would otherwise ask the global providers whether it is wanted on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.parts = parts
    api_errors.install(app)
    # Routes are matched in this order, one regex after another: the two a live dashboard and
    # its wearable call every few seconds come first.
    app.include_router(telemetry_api.router)
    app.include_router(samples.router)
    app.include_router(ops.router)
    app.include_router(sessions.router)
    app.include_router(exports.router)
    app.include_router(insights.router)
    app.include_router(shares_api.router)
    app.include_router(me.router)
    app.include_router(webhooks.router)
    dashboard.install(app)
    app.mount(SOCKETIO_PATH, realtime.asgi_app())

    # Innermost: the telemetry GET and the ingest answered below FastAPI, once the guard let
    # them through.
    app.add_middleware(telemetry_api.TelemetryGet, parts=parts)
    app.add_middleware(samples.SamplesPost, parts=parts)
    app.add_middleware(
        RequestGuard,
        authenticator=parts.authenticator,
        share_access=parts.share_access,
        budgets=Budgets(parts.limiter, parts.metrics),
    )
    app.add_middleware(AccessLog)

    return app
