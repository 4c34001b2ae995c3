"""Stand-ins the tests hand to the wiring through ``Seams``: listeners of saves that record or
fail, and aggregates that hold the lease or fail. Real components everywhere else."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

from tests.waits import eventually
from vitalcast.db.engine import Database
from vitalcast.telemetry.compute.incremental import (
    Aggregator,
    BatchComputed,
    BatchRead,
    assemble_batch,
)
from vitalcast.telemetry.ports import TelemetryUpdate


class RecordingListener:
    """A TelemetryListener that keeps what it was told, as plain dicts."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def session_updated(self, update: TelemetryUpdate) -> None:
        self.events.append(dataclasses.asdict(update))


class BrokenListener:
    """A TelemetryListener whose every call fails, like a realtime layer that is down."""

    async def session_updated(self, update: TelemetryUpdate) -> None:
        raise RuntimeError("the realtime layer is down")


def held_aggregator(hold_ms: int, aggregate: Aggregator = assemble_batch) -> Aggregator:
    """``aggregate`` that first sleeps ``hold_ms`` while the lease is held, so a test can kill a
    worker in the middle of a compute."""

    async def held(
        db: Database,
        read: BatchRead,
    ) -> BatchComputed:
        await asyncio.sleep(hold_ms / 1000)
        return await aggregate(db, read)

    return held


def gated_aggregator(gate: Path, aggregate: Aggregator = assemble_batch) -> Aggregator:
    """``aggregate`` that first waits, lease held, until the file ``gate`` exists: the test lets
    computes finish when it is ready, however slow the machine, instead of guessing a hold."""

    async def gated(
        db: Database,
        read: BatchRead,
    ) -> BatchComputed:
        async def opened() -> bool:
            return await asyncio.to_thread(gate.exists)

        await eventually(opened, what=f"the test created {gate}", timeout_s=300)
        return await aggregate(db, read)

    return gated


def held_while_aggregator(flag: Path, aggregate: Aggregator = assemble_batch) -> Aggregator:
    """``aggregate`` that, when the file ``flag`` exists as it starts, holds its lease for as
    long as the file stays: computes run freely until the test creates the flag, and the ones
    after it are still holding when the test kills the process, however slow the machine."""

    async def held(
        db: Database,
        read: BatchRead,
    ) -> BatchComputed:
        async def lowered() -> bool:
            return not await asyncio.to_thread(flag.exists)

        await eventually(lowered, what=f"the test removed {flag}", timeout_s=300)
        return await aggregate(db, read)

    return held


class FailingFirst:
    """An aggregate that raises on its first ``failures`` calls (every view of the batch fails),
    then is ``aggregate``."""

    def __init__(self, failures: int, aggregate: Aggregator = assemble_batch) -> None:
        self._aggregate = aggregate
        self.failures = failures
        self.calls = 0

    async def __call__(
        self,
        db: Database,
        read: BatchRead,
    ) -> BatchComputed:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError("injected compute failure")
        return await self._aggregate(db, read)
