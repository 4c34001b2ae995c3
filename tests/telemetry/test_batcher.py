"""ComputeBatcher: computes asked for one at a time in the same turn of the loop, or while the
batches in flight run, are run as one batch; each caller gets its own key's outcome.

The runner is a purpose-built async function that records batches and waits on a gate, so every
interleaving is explicit; no sleeps decide an outcome.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from vitalcast.telemetry.keys import ComputeOutcome, Resolution, ScheduleReason, TelemetryKey
from vitalcast.telemetry.run.batcher import MAX_BATCHES_IN_FLIGHT, ComputeBatcher

UPDATE = ScheduleReason.LIVE_UPDATE


def key(n: int) -> TelemetryKey:
    return TelemetryKey(f"session-{n}", 60, Resolution.ONE_MINUTE)


class Runner:
    """Records each batch; holds them while ``gate`` is clear; key 13 fails alone."""

    def __init__(self) -> None:
        self.batches: list[list[TelemetryKey]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.broken = False

    async def __call__(
        self, items: Sequence[tuple[TelemetryKey, ScheduleReason]]
    ) -> dict[TelemetryKey, ComputeOutcome]:
        self.batches.append([k for k, _reason in items])
        await self.gate.wait()
        if self.broken:
            raise RuntimeError("the database is down")
        return {
            k: ComputeOutcome.FAILED if k == key(13) else ComputeOutcome.COMPUTED
            for k, _reason in items
        }


async def turns(n: int) -> None:
    """Let the loop run ``n`` turns (tasks started, flushes scheduled with call_soon, run)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def test_jobs_of_one_turn_run_as_one_batch_each_with_its_own_outcome():
    runner = Runner()
    batcher = ComputeBatcher(runner, max_batch=4)
    outcomes = await asyncio.gather(
        *(batcher.compute(key(n), reason=UPDATE) for n in (10, 11, 12, 13, 14, 15))
    )
    assert runner.batches == [[key(10), key(11), key(12), key(13)], [key(14), key(15)]]
    assert (
        outcomes
        == [ComputeOutcome.COMPUTED] * 3 + [ComputeOutcome.FAILED] + [ComputeOutcome.COMPUTED] * 2
    )


async def test_what_arrives_while_the_batches_run_waits_and_leaves_together():
    runner = Runner()
    runner.gate.clear()
    batcher = ComputeBatcher(runner, max_batch=32)
    running = [asyncio.create_task(batcher.compute(key(0), reason=UPDATE))]
    await turns(3)
    running.append(asyncio.create_task(batcher.compute(key(1), reason=UPDATE)))
    await turns(3)
    assert len(runner.batches) == MAX_BATCHES_IN_FLIGHT
    later = [asyncio.create_task(batcher.compute(key(n), reason=UPDATE)) for n in (2, 3, 4)]
    cancelled = asyncio.create_task(batcher.compute(key(5), reason=UPDATE))
    await turns(5)
    cancelled.cancel()
    assert runner.batches == [[key(0)], [key(1)]]
    runner.gate.set()
    assert await asyncio.gather(*running, *later) == [ComputeOutcome.COMPUTED] * 5
    assert runner.batches[2] == [key(2), key(3), key(4)]
    with pytest.raises(asyncio.CancelledError):
        await cancelled


async def test_a_batch_that_raises_fails_every_caller_of_it():
    runner = Runner()
    runner.broken = True
    batcher = ComputeBatcher(runner, max_batch=8)
    results = await asyncio.gather(
        *(batcher.compute(key(n), reason=UPDATE) for n in range(3)), return_exceptions=True
    )
    assert [type(r) for r in results] == [RuntimeError] * 3
    runner.broken = False
    assert await batcher.compute(key(7), reason=UPDATE) is ComputeOutcome.COMPUTED
