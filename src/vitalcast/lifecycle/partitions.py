"""Keeps the months of ``health_samples`` ahead of the clock (PostgreSQL; docs/partitioning.md).

Servers and workers both run a keeper: this month and the next ``ahead`` ones exist before the
first sample of them arrives, so a live ingest never waits for a partition to be attached. Months
in the past are created by the writers themselves (``Database.partitions.ensure``), and expired
ones are dropped by retention.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from vitalcast.db.partitions import AHEAD, SamplePartitions
from vitalcast.observability import get_logger

log = get_logger(__name__)

#: how often a keeper creates the months ahead
INTERVAL_S = 86_400.0


class PartitionKeeper:
    """Creates this month and the next ``ahead`` ones at start and every ``interval_s``."""

    def __init__(
        self,
        partitions: SamplePartitions,
        now_ms: Callable[[], int],
        *,
        ahead: int = AHEAD,
        interval_s: float = INTERVAL_S,
    ) -> None:
        self._partitions = partitions
        self._now_ms = now_ms
        self._ahead = ahead
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.run_once()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def run_once(self) -> None:
        """One pass; a failure is logged (the next pass, or the writer's own ``ensure``,
        creates the month) rather than stopping the process."""
        try:
            created = await self._partitions.ensure_ahead(self._now_ms(), self._ahead)
        except Exception as exc:
            log.error("sample_partitions_failed", error_type=type(exc).__name__)
            return
        if created:
            log.info("sample_partitions_created", months=[m.name for m in sorted(created)])

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            # Another process may have dropped or created months meanwhile: look again.
            self._partitions.forget()
            await self.run_once()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
