"""``python -m tests.held_worker HOLD_MS [--concurrency N] [--metrics-port P] [--shutdown-grace S]``:
a real worker (``run_worker``, settings from the environment as for ``vitalcast worker``) whose
every compute first holds its lease ``HOLD_MS``, so fault tests can kill a worker mid-job."""

from __future__ import annotations

import argparse
import asyncio

from tests.doubles import held_aggregator
from vitalcast.observability import configure_logging
from vitalcast.queue.runner import run_worker
from vitalcast.queue.worker import SHUTDOWN_GRACE_S
from vitalcast.settings import Settings
from vitalcast.wiring import Seams


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("hold_ms", type=int)
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--metrics-port", type=int, default=None)
    parser.add_argument("--shutdown-grace", type=float, default=SHUTDOWN_GRACE_S)
    args = parser.parse_args()
    settings = Settings()
    configure_logging(settings.log_level)
    asyncio.run(
        run_worker(
            settings,
            concurrency=args.concurrency or settings.max_concurrent_computes,
            metrics_port=args.metrics_port,
            shutdown_grace_s=args.shutdown_grace,
            seams=Seams(aggregator=held_aggregator(args.hold_ms)),
        )
    )


if __name__ == "__main__":
    main()
