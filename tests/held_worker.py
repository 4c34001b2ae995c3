"""``python -m tests.held_worker HOLD_MS [--until FILE] [--concurrency N] [--metrics-port P]
[--shutdown-grace S]``: a real worker (``run_worker``, settings from the environment as for
``vitalcast worker``) whose every compute first holds its lease ``HOLD_MS`` (so fault tests can
kill a worker mid-job), or with ``--until`` until FILE exists (so a test decides when)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from tests.doubles import gated_aggregator, held_aggregator
from vitalcast.observability import configure_logging
from vitalcast.queue.runner import run_worker
from vitalcast.queue.worker import SHUTDOWN_GRACE_S
from vitalcast.settings import Settings
from vitalcast.wiring import Seams


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("hold_ms", type=int)
    parser.add_argument("--until", type=Path, default=None)
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--metrics-port", type=int, default=None)
    parser.add_argument("--shutdown-grace", type=float, default=SHUTDOWN_GRACE_S)
    args = parser.parse_args()
    settings = Settings()
    configure_logging(settings.log_level)
    aggregator = held_aggregator(args.hold_ms)
    if args.until is not None:
        aggregator = gated_aggregator(args.until, aggregator)
    asyncio.run(
        run_worker(
            settings,
            concurrency=args.concurrency or settings.max_concurrent_computes,
            metrics_port=args.metrics_port,
            shutdown_grace_s=args.shutdown_grace,
            seams=Seams(aggregator=aggregator),
        )
    )


if __name__ == "__main__":
    main()
