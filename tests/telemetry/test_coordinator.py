"""BoundedComputeCoordinator: bound, FIFO, per-key coalescing, shedding, stats and metrics.

The runner here is a purpose-built async function that records calls and waits on gates, so
every interleaving is explicit; no sleeps decide an outcome.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import pytest
from prometheus_client import generate_latest

from vitalcast.observability import Metrics
from vitalcast.telemetry.keys import ComputeOutcome, Resolution, ScheduleReason, TelemetryKey
from vitalcast.telemetry.run.coordinator import BoundedComputeCoordinator

MISS = ScheduleReason.CACHE_MISS


def key(n: int, window: int = 60, resolution: Resolution = Resolution.ONE_MINUTE) -> TelemetryKey:
    return TelemetryKey(f"session-{n}", window, resolution)


class GatedRunner:
    """Records each run and holds it until ``release(key)``; returns the outcome it is told."""

    def __init__(self) -> None:
        self.started: list[TelemetryKey] = []
        self.batches: list[list[TelemetryKey]] = []
        self.running = 0
        self.peak = 0
        self._gates: dict[TelemetryKey, asyncio.Event] = {}
        self.outcome = ComputeOutcome.COMPUTED
        self.fail_with: Exception | None = None
        self._changed = asyncio.Condition()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait (at most 5 s) until ``predicate`` holds after a run started."""
        async with asyncio.timeout(5), self._changed:
            await self._changed.wait_for(predicate)

    def gate(self, k: TelemetryKey) -> asyncio.Event:
        return self._gates.setdefault(k, asyncio.Event())

    async def __call__(
        self, items: Sequence[tuple[TelemetryKey, ScheduleReason]]
    ) -> dict[TelemetryKey, ComputeOutcome]:
        """A batch: each of its keys runs as alone (the coordinator sees one outcome per key)."""
        self.batches.append([k for k, _reason in items])
        outcomes = await asyncio.gather(*(self.run(k) for k, _reason in items))
        return {k: outcome for (k, _reason), outcome in zip(items, outcomes, strict=True)}

    async def run(self, k: TelemetryKey) -> ComputeOutcome:
        self.started.append(k)
        self.running += 1
        self.peak = max(self.peak, self.running)
        async with self._changed:
            self._changed.notify_all()
        try:
            await self.gate(k).wait()
            self.gate(k).clear()
            if self.fail_with is not None:
                raise self.fail_with
            return self.outcome
        finally:
            self.running -= 1

    def release(self, k: TelemetryKey) -> None:
        self.gate(k).set()

    def release_all(self) -> None:
        for gate in self._gates.values():
            gate.set()


async def test_never_more_than_max_concurrency_run_and_waiting_ones_start_fifo():
    """With 2 slots and 6 keys: 2 run, 4 wait, and they start in submission order."""
    runner = GatedRunner()
    coordinator = BoundedComputeCoordinator(runner, max_concurrency=2, max_pending=10)
    keys = [key(n) for n in range(6)]
    for k in keys:
        assert await coordinator.submit(k, watermark=1, reason=MISS) is True
    await runner.wait_for(lambda: len(runner.started) == 2)
    assert (coordinator.stats.inflight, coordinator.stats.pending) == (2, 4)
    for k in keys:
        runner.release(k)
    await coordinator.wait_idle()
    assert runner.started == keys
    assert runner.peak == 2 and coordinator.stats.peak_inflight == 2
    assert coordinator.stats.completed == 6


async def test_same_key_coalesces_to_one_running_and_one_waiting():
    """Submits of a waiting key dedupe; a submit while it runs queues exactly one rerun."""
    runner = GatedRunner()
    coordinator = BoundedComputeCoordinator(runner, max_concurrency=1, max_pending=10)
    blocker, target = key(0), key(1)
    await coordinator.submit(blocker, watermark=1, reason=MISS)
    for watermark in (1, 2, 3):
        await coordinator.submit(target, watermark=watermark, reason=MISS)
    assert coordinator.stats.deduped == 2
    runner.release(blocker)
    await runner.wait_for(lambda: runner.started == [blocker, target])
    for watermark in (4, 5, 6):
        assert await coordinator.submit(target, watermark=watermark, reason=MISS) is True
    assert (coordinator.stats.inflight, coordinator.stats.pending) == (1, 1)
    assert coordinator._pending[target].watermark == 6
    runner.release(target)
    await runner.wait_for(lambda: runner.started.count(target) == 2)
    runner.release(target)
    await coordinator.wait_idle()
    assert runner.started == [blocker, target, target]
    assert coordinator.stats.deduped == 4


async def test_keys_differing_only_in_window_or_resolution_are_distinct():
    """Dedupe uses the whole key: another window or resolution of one session is its own compute."""
    runner = GatedRunner()
    coordinator = BoundedComputeCoordinator(runner, max_concurrency=3, max_pending=10)
    variants = [key(0), key(0, window=90), key(0, resolution=Resolution.FIVE_MINUTES)]
    for k in variants:
        await coordinator.submit(k, watermark=1, reason=MISS)
    await runner.wait_for(lambda: len(runner.started) == 3)
    assert coordinator.stats.deduped == 0
    runner.release_all()
    await coordinator.wait_idle()


async def test_beyond_max_pending_is_shed_as_a_value_and_counted():
    """The submit past the bound returns False, counts as shed and reaches the Prometheus counter."""
    metrics = Metrics()
    runner = GatedRunner()
    coordinator = BoundedComputeCoordinator(
        runner, max_concurrency=1, max_pending=2, metrics=metrics
    )
    results = [await coordinator.submit(key(n), watermark=1, reason=MISS) for n in range(5)]
    assert results == [True, True, True, False, False]
    assert coordinator.stats.shed == 2
    text = generate_latest(metrics.registry).decode()
    assert "vitalcast_coordinator_shed_total 2.0" in text
    assert "vitalcast_coordinator_inflight 1.0" in text
    assert "vitalcast_coordinator_pending 2.0" in text
    for n in range(3):
        runner.release(key(n))
    await coordinator.wait_idle()
    assert runner.started == [key(0), key(1), key(2)]
    await coordinator.refresh_metrics()
    text = generate_latest(metrics.registry).decode()
    assert "vitalcast_coordinator_inflight 0.0" in text
    assert "vitalcast_coordinator_pending 0.0" in text


async def test_outcomes_failures_and_latencies_are_counted():
    """Computed runs record enqueue→saved latency; failures (returned or raised) count as failed;
    runs that had nothing to do count by outcome only."""
    runner = GatedRunner()
    coordinator = BoundedComputeCoordinator(runner, max_concurrency=1, max_pending=10)
    submitted = time.perf_counter()
    await coordinator.submit(key(0), watermark=1, reason=MISS)
    await runner.wait_for(lambda: runner.started == [key(0)])
    await asyncio.sleep(0.05)  # the compute takes at least this long: a floor for its latency
    runner.release(key(0))
    await coordinator.wait_idle()
    elapsed_ms = (time.perf_counter() - submitted) * 1000
    runner.outcome = ComputeOutcome.SKIPPED_FRESH
    await coordinator.submit(key(1), watermark=1, reason=MISS)
    runner.release(key(1))
    await coordinator.wait_idle()
    runner.fail_with = RuntimeError("boom")
    await coordinator.submit(key(2), watermark=1, reason=MISS)
    runner.release(key(2))
    await coordinator.wait_idle()
    stats = coordinator.stats
    assert (stats.completed, stats.failed) == (1, 1)
    assert stats.outcomes == {"computed": 1, "skipped_fresh": 1, "failed": 1}
    # the one computed run's enqueue → saved latency, within the test's own stopwatch
    [latency_ms] = stats.latencies_ms
    assert 50 <= latency_ms <= elapsed_ms
    # the coordinator keeps working after a runner raised
    runner.fail_with = None
    runner.outcome = ComputeOutcome.COMPUTED
    await coordinator.submit(key(3), watermark=1, reason=MISS)
    runner.release(key(3))
    await coordinator.wait_idle()
    assert coordinator.stats.completed == 2


async def test_stop_drops_waiting_cancels_stragglers_and_refuses_new_work():
    """stop() drops what waits, cancels runs that outlive the grace period, refuses submits."""
    runner = GatedRunner()
    coordinator = BoundedComputeCoordinator(runner, max_concurrency=1, max_pending=10)
    await coordinator.submit(key(0), watermark=1, reason=MISS)
    await coordinator.submit(key(1), watermark=1, reason=MISS)
    await runner.wait_for(lambda: runner.started == [key(0)])
    await coordinator.stop(timeout_s=0.05)
    assert (coordinator.stats.inflight, coordinator.stats.pending) == (0, 0)
    assert await coordinator.submit(key(2), watermark=1, reason=MISS) is False
    assert runner.started == [key(0)]
    await coordinator.start()
    assert await coordinator.submit(key(3), watermark=1, reason=MISS) is True
    runner.release(key(3))
    await coordinator.wait_idle()
    assert runner.started == [key(0), key(3)]


def test_bounds_are_validated():
    """A coordinator needs at least one slot and a non-negative queue."""
    with pytest.raises(ValueError):
        BoundedComputeCoordinator(GatedRunner(), max_concurrency=0, max_pending=1)
    with pytest.raises(ValueError):
        BoundedComputeCoordinator(GatedRunner(), max_concurrency=1, max_pending=-1)
    with pytest.raises(ValueError):
        BoundedComputeCoordinator(GatedRunner(), max_concurrency=1, max_pending=1, max_batch=0)


async def test_background_triggers_beyond_the_bound_are_parked_not_lost():
    """Ingest triggers past the bound wait as dirty keys (newest watermark kept) and all run;
    request-path submits past the bound are still shed. (Batches of one: live updates hold no
    slot, the batch bound is what parks them here.)"""
    runner = GatedRunner()
    coordinator = BoundedComputeCoordinator(runner, max_concurrency=1, max_pending=1, max_batch=1)
    live = ScheduleReason.LIVE_UPDATE
    holder = key(100)
    assert await coordinator.submit(holder, watermark=1, reason=MISS) is True
    accepted = [await coordinator.submit(key(n), watermark=1, reason=live) for n in range(5)]
    assert accepted == [True] * 5
    assert await coordinator.submit(key(3), watermark=7, reason=live) is True
    assert await coordinator.submit(key(9), watermark=1, reason=MISS) is False
    stats = coordinator.stats
    assert (stats.inflight, stats.pending, stats.deferred, stats.shed) == (2, 1, 3, 1)
    runner.release(holder)
    for n in range(5):
        await runner.wait_for(lambda n=n: len(runner.started) == n + 2)
        runner.release(key(n))
    await coordinator.wait_idle()
    assert runner.started == [holder, *(key(n) for n in range(5))]
    assert coordinator.stats.deferred == 0 and coordinator.stats.completed == 6


async def test_no_pending_slots_still_runs_when_a_slot_is_free():
    """max_pending=0 means nothing waits, not that nothing runs."""
    runner = GatedRunner()
    coordinator = BoundedComputeCoordinator(runner, max_concurrency=1, max_pending=0)
    assert await coordinator.submit(key(0), watermark=1, reason=MISS) is True
    assert await coordinator.submit(key(1), watermark=1, reason=MISS) is False
    runner.release(key(0))
    await coordinator.wait_idle()
    assert runner.started == [key(0)]


def user_key(user: str, n: int) -> TelemetryKey:
    return TelemetryKey(f"{user}-session-{n}", 60, Resolution.ONE_MINUTE, user_id=user)


async def test_one_users_flood_delays_another_users_view_by_one_compute_not_the_flood():
    """The bound is fair per user: with 2 slots and 4 places, a user asking for 10 uncached
    views holds both slots and every place; another user's view still takes a place (the
    flooder's newest is shed) and starts at the next free slot, before the flooder's older
    waiting computes. FIFO, it would have been shed, and queued behind all of them."""
    runner = GatedRunner()
    coordinator = BoundedComputeCoordinator(runner, max_concurrency=2, max_pending=4)
    flood = [user_key("flooder", n) for n in range(10)]
    admitted = [await coordinator.submit(k, watermark=1, reason=MISS) for k in flood]
    assert admitted == [True] * 6 + [False] * 4
    await runner.wait_for(lambda: len(runner.started) == 2)
    other = user_key("other", 0)
    assert await coordinator.submit(other, watermark=1, reason=MISS) is True
    assert coordinator.stats.shed == 5
    runner.release(flood[0])
    await runner.wait_for(lambda: len(runner.started) == 3)
    assert runner.started[2] == other
    for k in [*flood, other]:
        runner.release(k)
    await asyncio.wait_for(coordinator.wait_idle(), 5)
    assert runner.started[:3] == [flood[0], flood[1], other]
    assert set(runner.started[3:]) == set(flood[2:5])


async def test_what_waits_while_the_batches_run_leaves_as_one_fair_batch():
    """One live batch at a time, of at most four: a lone update starts at once; what is
    submitted while it runs waits and then starts as one batch, shared fairly between users
    (the light user's one update is in it, not behind the heavy user's); the rest follows as
    the next batch."""
    runner = GatedRunner()
    coordinator = BoundedComputeCoordinator(
        runner, max_concurrency=1, max_pending=20, max_batch=4, max_batches=1
    )
    first = user_key("heavy", 0)
    await coordinator.submit(first, watermark=1, reason=ScheduleReason.LIVE_UPDATE)
    await runner.wait_for(lambda: runner.started == [first])
    heavy = [user_key("heavy", n) for n in range(1, 6)]
    for k in heavy:
        await coordinator.submit(k, watermark=1, reason=ScheduleReason.LIVE_UPDATE)
    light = user_key("light", 0)
    await coordinator.submit(light, watermark=1, reason=ScheduleReason.LIVE_UPDATE)
    assert runner.batches == [[first]] and coordinator.stats.pending == 6
    runner.release(first)
    await runner.wait_for(lambda: len(runner.batches) == 2)
    second = runner.batches[1]
    assert len(second) == 4 and light in second
    assert second == [heavy[0], light, heavy[1], heavy[2]]
    assert coordinator.stats.inflight == 4
    for k in second:
        runner.release(k)
    await runner.wait_for(lambda: len(runner.batches) == 3)
    assert runner.batches[2] == heavy[3:]
    runner.release_all()
    await coordinator.wait_idle()
    assert coordinator.stats.completed == 7 and coordinator.stats.peak_inflight == 4


async def test_live_updates_hold_no_slot_and_costly_computes_run_alone():
    """One slot and one live batch at a time: while a cold compute holds the slot, live updates
    of twelve sessions run as batches of at most ``max_batch`` beside it, never mixed with a
    cold compute; the two other cold misses wait for the slot and then run alone, one at a
    time (the slots bound the costly computes: never two in flight)."""
    runner = GatedRunner()
    coordinator = BoundedComputeCoordinator(
        runner, max_concurrency=1, max_pending=50, max_batch=10, max_batches=1
    )
    live = ScheduleReason.LIVE_UPDATE
    first = key(0)
    await coordinator.submit(first, watermark=1, reason=MISS)
    await runner.wait_for(lambda: runner.started == [first])
    cold = [key(1), key(2)]
    for k in cold:
        await coordinator.submit(k, watermark=1, reason=MISS)
    updates = [key(n) for n in range(10, 22)]
    for k in updates:
        assert await coordinator.submit(k, watermark=2, reason=live) is True
    # the first update started a batch of its own at once; the rest wait for it
    await runner.wait_for(lambda: len(runner.batches) == 2)
    assert runner.batches[1] == [updates[0]]
    runner.release(updates[0])
    await runner.wait_for(lambda: len(runner.batches) == 3)
    assert runner.batches[2] == updates[1:11]
    assert coordinator.stats.inflight == 11
    runner.release(first)
    await runner.wait_for(lambda: len(runner.batches) == 4)
    assert runner.batches[3] == [cold[0]]
    runner.release_all()
    await runner.wait_for(lambda: cold[1] in runner.started and updates[11] in runner.started)
    runner.release_all()
    await coordinator.wait_idle()
    assert sorted(runner.started) == sorted([first, *cold, *updates])
    assert [b for b in runner.batches if set(b) & {first, *cold}] == [[first], [cold[0]], [cold[1]]]
