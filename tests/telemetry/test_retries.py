"""BoundedComputeCoordinator retries: a compute that failed or was blocked is submitted again once
its backoff or the blocking lease runs out, as long as somebody still needs it.

The runner plays a script of outcomes and the delay double answers at once, so every retry
happens within milliseconds; waits are on the runner's calls and the coordinator's stats.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Sequence

from vitalcast.telemetry.keys import ComputeOutcome, Resolution, ScheduleReason, TelemetryKey
from vitalcast.telemetry.run.coordinator import TRIGGER_RETRIES, BoundedComputeCoordinator

KEY = TelemetryKey("session-1", 60, Resolution.ONE_MINUTE)
FAILED, BUSY, BACKING_OFF, COMPUTED = (
    ComputeOutcome.FAILED,
    ComputeOutcome.LEASE_BUSY,
    ComputeOutcome.BACKING_OFF,
    ComputeOutcome.COMPUTED,
)


class ScriptedRunner:
    """Returns the scripted outcomes in order (the last one forever) and records each run."""

    def __init__(self, *outcomes: ComputeOutcome) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[ScheduleReason] = []
        self._changed = asyncio.Condition()

    async def __call__(
        self, items: Sequence[tuple[TelemetryKey, ScheduleReason]]
    ) -> dict[TelemetryKey, ComputeOutcome]:
        """A batch: each key plays the next scripted outcome."""
        return {key: await self.run(reason) for key, reason in items}

    async def run(self, reason: ScheduleReason) -> ComputeOutcome:
        self.calls.append(reason)
        async with self._changed:
            self._changed.notify_all()
        return self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(5), self._changed:
            await self._changed.wait_for(predicate)


class NoDelay:
    """A RetryDelay whose backoff has always just run out (or, with ``gone``, no row left)."""

    def __init__(self, *, gone: bool = False) -> None:
        self.asked = 0
        self.gone = gone

    async def __call__(self, key: TelemetryKey) -> int | None:
        self.asked += 1
        return None if self.gone else 0


class Subscribed:
    def __init__(self, *session_ids: str) -> None:
        self.ids = set(session_ids)

    def subscribed_sessions(self) -> Collection[str]:
        return self.ids


async def settled(coordinator: BoundedComputeCoordinator) -> None:
    """Until nothing runs, waits or waits for a retry."""
    async with asyncio.timeout(5):
        while True:
            await coordinator.wait_idle()
            if coordinator.stats.retrying == 0 and coordinator.stats.inflight == 0:
                return
            await asyncio.sleep(0.01)


async def test_failed_trigger_is_retried_until_it_succeeds():
    """An ingest trigger that fails twice runs a third time with nobody asking again."""
    runner = ScriptedRunner(FAILED, FAILED, COMPUTED)
    coordinator = BoundedComputeCoordinator(runner, retry_delay=NoDelay())
    await coordinator.submit(KEY, watermark=3, reason=ScheduleReason.LIVE_UPDATE)
    await runner.wait_for(lambda: len(runner.calls) == 3)
    await settled(coordinator)
    assert runner.calls == [ScheduleReason.LIVE_UPDATE] * 3
    stats = coordinator.stats
    assert (stats.retries, stats.completed, stats.failed) == (2, 1, 2)


async def test_lease_blocked_and_backing_off_keys_are_retried_too():
    """Another holder's lease, then a backoff still running: both end in a compute."""
    runner = ScriptedRunner(BUSY, BACKING_OFF, COMPUTED)
    coordinator = BoundedComputeCoordinator(runner, retry_delay=NoDelay())
    await coordinator.submit(KEY, watermark=1, reason=ScheduleReason.SESSION_COMPLETED)
    await runner.wait_for(lambda: len(runner.calls) == 3)
    await settled(coordinator)
    assert coordinator.stats.outcomes == {"lease_busy": 1, "backing_off": 1, "computed": 1}


async def test_a_get_nobody_repeats_is_not_retried_unless_a_subscriber_needs_it():
    """A failed cache-miss compute whose GET is no longer recent is dropped; the same failure
    is retried while the session has a subscriber on this process."""
    runner = ScriptedRunner(FAILED, COMPUTED)
    delay = NoDelay()
    coordinator = BoundedComputeCoordinator(runner, retry_delay=delay, recent_read_s=0.0)
    await coordinator.submit(KEY, watermark=1, reason=ScheduleReason.CACHE_MISS)
    await settled(coordinator)
    assert delay.asked == 1 and len(runner.calls) == 1 and coordinator.stats.retries == 0

    runner = ScriptedRunner(FAILED, COMPUTED)
    coordinator = BoundedComputeCoordinator(
        runner, retry_delay=NoDelay(), recent_read_s=0.0, subscriptions=Subscribed("session-1")
    )
    await coordinator.submit(KEY, watermark=1, reason=ScheduleReason.CACHE_MISS)
    await runner.wait_for(lambda: len(runner.calls) == 2)
    await settled(coordinator)
    assert coordinator.stats.retries == 1 and coordinator.stats.completed == 1


async def test_a_recent_get_keeps_its_key_wanted():
    """With the default read window a failed cache miss is retried without another GET."""
    runner = ScriptedRunner(FAILED, COMPUTED)
    coordinator = BoundedComputeCoordinator(runner, retry_delay=NoDelay())
    await coordinator.submit(KEY, watermark=1, reason=ScheduleReason.CACHE_MISS)
    await runner.wait_for(lambda: len(runner.calls) == 2)
    await settled(coordinator)
    assert coordinator.stats.completed == 1


async def test_a_trigger_that_keeps_failing_gives_up_after_its_retries():
    """Without subscribers or reads a trigger is retried TRIGGER_RETRIES times, then left to the
    next trigger or read."""
    runner = ScriptedRunner(FAILED)
    coordinator = BoundedComputeCoordinator(runner, retry_delay=NoDelay())
    await coordinator.submit(KEY, watermark=1, reason=ScheduleReason.LIVE_TICK)
    await runner.wait_for(lambda: len(runner.calls) == 1 + TRIGGER_RETRIES)
    await settled(coordinator)
    assert len(runner.calls) == 1 + TRIGGER_RETRIES
    assert coordinator.stats.retries == TRIGGER_RETRIES


async def test_nothing_is_retried_for_a_row_that_is_gone_or_after_stop():
    """A RetryDelay of None (the session is gone) ends it; stop() cancels planned retries."""
    runner = ScriptedRunner(FAILED)
    coordinator = BoundedComputeCoordinator(runner, retry_delay=NoDelay(gone=True))
    await coordinator.submit(KEY, watermark=1, reason=ScheduleReason.LIVE_UPDATE)
    await settled(coordinator)
    assert len(runner.calls) == 1 and coordinator.stats.retries == 0

    class Later(NoDelay):
        async def __call__(self, key: TelemetryKey) -> int | None:
            return 60_000

    runner = ScriptedRunner(FAILED)
    coordinator = BoundedComputeCoordinator(runner, retry_delay=Later())
    await coordinator.submit(KEY, watermark=1, reason=ScheduleReason.LIVE_UPDATE)
    await runner.wait_for(lambda: len(runner.calls) == 1)
    await coordinator.wait_idle()
    assert coordinator.stats.retrying == 1
    await coordinator.stop()
    assert coordinator.stats.retrying == 0 and len(runner.calls) == 1
