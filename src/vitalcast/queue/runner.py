"""The ``vitalcast worker`` process: its own container and telemetry service, a write-only
Socket.IO emitter for ``session.updated``, the BullMQ consumer, optional /metrics, and a clean
stop on SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

from prometheus_client import start_http_server

from vitalcast.app import build_container
from vitalcast.clock import Clock
from vitalcast.observability import get_logger
from vitalcast.queue.handler import ComputeJobHandler
from vitalcast.queue.worker import SHUTDOWN_GRACE_S, TelemetryWorker, test_hold_ms_from_env
from vitalcast.realtime.broadcaster import WebSocketBroadcaster
from vitalcast.settings import Settings
from vitalcast.telemetry.compute import Aggregator, compute_telemetry
from vitalcast.telemetry.service import SessionTelemetryService, default_owner_id

log = get_logger(__name__)

# A worker's compute lease is as short as its job lock (renewed every third of it): when a worker
# dies, its job is redelivered within seconds and the key must be free by then, not after the
# server-side default of 30 s.
WORKER_LEASE_MS = 6_000


def held_aggregator(aggregate: Aggregator, hold_ms: int) -> Aggregator:
    """TEST-ONLY: ``aggregate`` that first sleeps ``hold_ms`` while the lease is held, so a test
    can kill a worker in the middle of a compute (``VITALCAST_TEST_JOB_HOLD_MS``)."""

    async def held(conn: Any, session: Any, key: Any, now_ms: int) -> Any:
        await asyncio.sleep(hold_ms / 1000)
        return await aggregate(conn, session, key, now_ms)

    return held


async def run_worker(
    settings: Settings,
    *,
    concurrency: int,
    metrics_host: str = "127.0.0.1",
    metrics_port: int | None = None,
    shutdown_grace_s: float = SHUTDOWN_GRACE_S,
    clock: Clock | None = None,
) -> None:
    """Consume ``settings.queue_name`` until SIGTERM/SIGINT; then finish or release running jobs.
    Computes run on ``clock`` (the system clock unless given)."""
    container = build_container(settings, clock=clock)
    broadcaster = WebSocketBroadcaster.for_worker(settings, metrics=container.metrics)
    hold_ms = test_hold_ms_from_env()
    if hold_ms:
        log.warning("worker_test_hold_enabled", hold_ms=hold_ms)
    service = SessionTelemetryService(
        container.db,
        container.clock,
        container.metrics,
        lease_ms=min(settings.lease_ms, WORKER_LEASE_MS),
        owner_id=default_owner_id(),
        default_window_minutes=settings.default_window_minutes,
        listener=broadcaster,
        aggregator=held_aggregator(compute_telemetry, hold_ms) if hold_ms else None,
    )
    container.telemetry = service
    container.broadcaster = broadcaster
    worker = TelemetryWorker(
        settings,
        ComputeJobHandler(service, container.db, container.clock),
        concurrency=concurrency,
    )
    http = None
    if metrics_port is not None:
        http, _thread = start_http_server(
            metrics_port, addr=metrics_host, registry=container.metrics.registry
        )
        log.info("worker_metrics_listening", host=metrics_host, port=http.server_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        # Connecting retries while Redis is unreachable; a signal meanwhile still stops us.
        starting = asyncio.create_task(worker.start())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()
            await stopping
        else:
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
        log.info("worker_stopping")
    finally:
        await worker.stop(grace_s=shutdown_grace_s)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await broadcaster.close()
        await service.close()
        await container.db.dispose()
        if http is not None:
            with contextlib.suppress(Exception):
                http.shutdown()
                http.server_close()
