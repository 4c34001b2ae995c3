"""TEST-ONLY entry point: ``vitalcast serve`` and ``vitalcast worker`` on a clock the test sets.

    python -m tests.stepped_clock CLOCK_FILE serve --host H --port P
    python -m tests.stepped_clock CLOCK_FILE worker [--metrics-port P] [--concurrency N]

Every process started this way reads "now" from CLOCK_FILE (epoch milliseconds, read on every
call), or the wall clock while the file does not exist. The time stands still until the test
writes another one with ``set_time``, so all processes cross a bucket boundary together, exactly
when the test says and never on their own however slow the machine: a live window that moves
with time is tested in seconds, not minutes. Production code only sees the clock of ``Seams``;
nothing here is reachable from ``vitalcast`` itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from vitalcast.cli import run_server
from vitalcast.clock import now_ms
from vitalcast.observability import configure_logging
from vitalcast.queue.runner import run_worker
from vitalcast.settings import Settings
from vitalcast.wiring import Seams


class SteppedClock:
    """The time in ``path`` (the wall clock until the file exists)."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def now_ms(self) -> int:
        try:
            return int(self._path.read_text())
        except (FileNotFoundError, ValueError):
            return now_ms()


def set_time(path: Path, at_ms: int) -> None:
    """Make "now" ``at_ms`` for every process on ``path`` until the next ``set_time``. Written
    atomically: a reader sees the old time or the new one."""
    staged = path.with_suffix(".next")
    staged.write_text(str(at_ms))
    os.replace(staged, path)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.stepped_clock")
    parser.add_argument("clock_file", type=Path)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    worker = commands.add_parser("worker")
    worker.add_argument("--metrics-port", type=int, default=None)
    worker.add_argument("--concurrency", type=int, default=None)
    args = parser.parse_args(argv)
    seams = Seams(clock=SteppedClock(args.clock_file))
    if args.command == "serve":
        run_server(host=args.host, port=args.port, seams=seams)
        return
    settings = Settings()
    configure_logging(settings.log_level)
    asyncio.run(
        run_worker(
            settings,
            concurrency=args.concurrency or settings.max_concurrent_computes,
            metrics_port=args.metrics_port,
            seams=seams,
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
