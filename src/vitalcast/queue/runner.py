"""The ``vitalcast worker`` process: its parts (``wiring.build_worker``: a telemetry computer that
pushes ``session.updated`` through a write-only Socket.IO manager), the BullMQ consumer, optional
/metrics, and a clean stop on SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import signal

from prometheus_client import start_http_server

from vitalcast.lifecycle.erasure_queue import ErasureWorker
from vitalcast.observability import get_logger
from vitalcast.queue.handler import ComputeJobHandler
from vitalcast.queue.webhooks import WebhookJobWorker
from vitalcast.queue.worker import SHUTDOWN_GRACE_S, TelemetryWorker
from vitalcast.settings import Settings
from vitalcast.wiring import NO_SEAMS, Seams, build_worker

log = get_logger(__name__)


async def run_worker(
    settings: Settings,
    *,
    concurrency: int,
    metrics_host: str = "127.0.0.1",
    metrics_port: int | None = None,
    shutdown_grace_s: float = SHUTDOWN_GRACE_S,
    seams: Seams = NO_SEAMS,
) -> None:
    """Consume ``settings.queue_name`` until SIGTERM/SIGINT; then finish or release running jobs."""
    parts = build_worker(settings, seams)
    await parts.start()
    worker = TelemetryWorker(
        settings,
        ComputeJobHandler(parts.computer, parts.clock, max_batch=settings.compute_batch_max_views),
        concurrency=concurrency,
        held=parts.held,
    )
    erasures = ErasureWorker(settings, parts.erasure)
    webhooks = WebhookJobWorker(
        settings, parts.dispatcher, concurrency=settings.webhook_concurrency
    )
    http = None
    if metrics_port is not None:
        http, _thread = start_http_server(
            metrics_port, addr=metrics_host, registry=parts.metrics.registry
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
            await erasures.start()
            await webhooks.start()
            await stopping
        else:
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
        log.info("worker_stopping")
    finally:
        await erasures.stop()
        await webhooks.stop()
        await worker.stop(grace_s=shutdown_grace_s)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await parts.close()
        if http is not None:
            with contextlib.suppress(Exception):
                http.shutdown()
                http.server_close()
