"""``BoundedComputeCoordinator``: the in-process pool that runs telemetry computes.

At most ``max_concurrency`` computes run at once and at most ``max_pending`` wait, in FIFO order.
Requests coalesce per key (the full ``TelemetryKey``: session, window, resolution, version): a
key has at most one compute running and one waiting, and the waiting one takes the newest
watermark. A request-path submit (cache miss, stale read) beyond the bound is shed and says so by
returning False; nobody waits on it, the client sees ``computing`` and retries. A background
trigger (ingest, session end, backfill) has no client to retry it, so beyond the bound its key is
parked in a set of dirty keys (bounded, coalesced per key) that refills the queue as it drains:
a burst delays a live session's update but never loses it. Nothing here is durable: after a
restart the cache rows' leases and the next read or ingest trigger the compute again.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Protocol

from vitalcast.observability import Metrics, get_logger
from vitalcast.telemetry.models import ComputeOutcome, ScheduleReason, TelemetryKey

log = get_logger(__name__)

#: how many enqueue → saved latencies ``stats`` keeps for its percentiles
LATENCY_WINDOW = 1_000
#: dirty keys parked beyond the bound, per pending slot; past that even triggers are shed
DEFERRED_PER_PENDING_SLOT = 100
#: reasons that have a client who retries on ``computing``; every other reason is parked instead
REQUEST_REASONS = frozenset({ScheduleReason.CACHE_MISS, ScheduleReason.STALE_READ})


class ComputeRunner(Protocol):
    """What the coordinator runs: ``TelemetryComputer.compute``."""

    async def __call__(self, key: TelemetryKey, *, reason: ScheduleReason) -> ComputeOutcome: ...


@dataclass(slots=True)
class _Entry:
    key: TelemetryKey
    reason: ScheduleReason
    watermark: int
    enqueued_at: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True, slots=True)
class CoordinatorStats:
    """A snapshot of the coordinator for /metrics, logs and tests."""

    max_concurrency: int
    max_pending: int
    inflight: int
    pending: int
    #: the most computes ever running at once
    peak_inflight: int
    submitted: int
    deduped: int
    shed: int
    #: background triggers parked beyond the bound, waiting for a pending slot
    deferred: int
    #: computes that saved a payload (outcome computed)
    completed: int
    #: computes that failed (outcome failed, or the runner raised)
    failed: int
    #: runs by outcome, including the ones that had nothing to do (skipped_fresh, lease_busy …)
    outcomes: dict[str, int]
    #: enqueue → saved of completed computes, most recent last (milliseconds)
    latencies_ms: tuple[float, ...]

    def latency_percentile_ms(self, q: float) -> float | None:
        """The ``q`` quantile (0..1) of the kept enqueue → saved latencies."""
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


class BoundedComputeCoordinator:
    """N running, M waiting, one per key; implements the ``Scheduler`` protocol."""

    def __init__(
        self,
        run: ComputeRunner,
        *,
        max_concurrency: int = 3,
        max_pending: int = 50,
        metrics: Metrics | None = None,
    ) -> None:
        if max_concurrency < 1 or max_pending < 0:
            raise ValueError("max_concurrency must be ≥ 1 and max_pending ≥ 0")
        self._run = run
        self.max_concurrency = max_concurrency
        self.max_pending = max_pending
        self._metrics = metrics
        self._pending: OrderedDict[TelemetryKey, _Entry] = OrderedDict()
        self._deferred: OrderedDict[TelemetryKey, _Entry] = OrderedDict()
        self._max_deferred = max(1, max_pending) * DEFERRED_PER_PENDING_SLOT
        self._running: dict[TelemetryKey, asyncio.Task[None]] = {}
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._peak = 0
        self._submitted = 0
        self._deduped = 0
        self._shed = 0
        self._completed = 0
        self._failed = 0
        self._outcomes: Counter[str] = Counter()
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)

    async def start(self) -> None:
        """Accept submissions (a new coordinator already does; this undoes ``stop``)."""
        self._closed = False

    async def stop(self, *, timeout_s: float = 5.0) -> None:
        """Refuse new work, drop what waits, give running computes ``timeout_s`` to finish and
        cancel the rest (their leases expire and the computes are retried elsewhere)."""
        self._closed = True
        self._pending.clear()
        self._deferred.clear()
        running = list(self._running.values())
        if running:
            _done, late = await asyncio.wait(running, timeout=timeout_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        self._update_gauges()

    async def submit(self, key: TelemetryKey, *, watermark: int, reason: ScheduleReason) -> bool:
        """Queue a compute of ``key``; True when queued or coalesced, False when shed."""
        if self._closed:
            return False
        self._submitted += 1
        waiting = self._pending.get(key)
        if waiting is not None:
            self._deduped += 1
            waiting.watermark = max(waiting.watermark, watermark)
            return True
        slot_free = len(self._running) < self.max_concurrency and key not in self._running
        if len(self._pending) >= self.max_pending and not slot_free:
            if reason not in REQUEST_REASONS and self._defer(key, watermark, reason):
                return True
            self._shed += 1
            if self._metrics is not None:
                self._metrics.coordinator_shed.inc()
            log.warning(
                "telemetry_compute_shed",
                session_id=key.session_id,
                reason=reason.value,
                pending=len(self._pending),
                inflight=len(self._running),
            )
            return False
        self._pending[key] = _Entry(key, reason, watermark)
        self._idle.clear()
        self._drain()
        return True

    def _defer(self, key: TelemetryKey, watermark: int, reason: ScheduleReason) -> bool:
        parked = self._deferred.get(key)
        if parked is not None:
            self._deduped += 1
            parked.watermark = max(parked.watermark, watermark)
            return True
        if len(self._deferred) >= self._max_deferred:
            return False
        self._deferred[key] = _Entry(key, reason, watermark)
        self._idle.clear()
        return True

    def _refill(self) -> None:
        """Move parked keys into free pending slots, oldest first."""
        while self._deferred and len(self._pending) < self.max_pending:
            key, entry = self._deferred.popitem(last=False)
            waiting = self._pending.get(key)
            if waiting is not None:
                waiting.watermark = max(waiting.watermark, entry.watermark)
            else:
                self._pending[key] = entry

    async def wait_idle(self) -> None:
        """Return once nothing runs and nothing waits."""
        await self._idle.wait()

    @property
    def stats(self) -> CoordinatorStats:
        return CoordinatorStats(
            max_concurrency=self.max_concurrency,
            max_pending=self.max_pending,
            inflight=len(self._running),
            pending=len(self._pending),
            peak_inflight=self._peak,
            submitted=self._submitted,
            deduped=self._deduped,
            shed=self._shed,
            deferred=len(self._deferred),
            completed=self._completed,
            failed=self._failed,
            outcomes=dict(self._outcomes),
            latencies_ms=tuple(self._latencies),
        )

    async def refresh_metrics(self) -> None:
        """Bring the Prometheus gauges up to date (called by /metrics)."""
        self._update_gauges()

    def _drain(self) -> None:
        while len(self._running) < self.max_concurrency:
            entry = next((e for k, e in self._pending.items() if k not in self._running), None)
            if entry is not None:
                del self._pending[entry.key]
            else:
                entry = next((e for k, e in self._deferred.items() if k not in self._running), None)
                if entry is None:
                    break
                del self._deferred[entry.key]
            self._running[entry.key] = asyncio.create_task(
                self._execute(entry), name=f"telemetry-compute-{entry.key.dedupe_id}"
            )
            self._peak = max(self._peak, len(self._running))
        self._refill()
        self._update_gauges()
        if not self._running and not self._pending and not self._deferred:
            self._idle.set()

    async def _execute(self, entry: _Entry) -> None:
        started = time.perf_counter()
        try:
            outcome = await self._run(entry.key, reason=entry.reason)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed += 1
            self._outcomes[ComputeOutcome.FAILED.value] += 1
            log.error(
                "telemetry_compute_crashed",
                session_id=entry.key.session_id,
                error_type=type(exc).__name__,
            )
        else:
            self._outcomes[outcome.value] += 1
            finished = time.perf_counter()
            if outcome is ComputeOutcome.COMPUTED:
                self._completed += 1
                self._latencies.append((finished - entry.enqueued_at) * 1000)
            elif outcome is ComputeOutcome.FAILED:
                self._failed += 1
            log.info(
                "telemetry_compute_finished",
                session_id=entry.key.session_id,
                window_minutes=entry.key.window_minutes,
                resolution=entry.key.resolution.value,
                reason=entry.reason.value,
                outcome=outcome.value,
                queue_ms=round((started - entry.enqueued_at) * 1000, 2),
                total_ms=round((finished - entry.enqueued_at) * 1000, 2),
            )
        finally:
            self._running.pop(entry.key, None)
            if not self._closed:
                self._drain()
            else:
                self._update_gauges()
                if not self._running:
                    self._idle.set()

    def _update_gauges(self) -> None:
        if self._metrics is not None:
            self._metrics.coordinator_inflight.set(len(self._running))
            self._metrics.coordinator_pending.set(len(self._pending))
