"""``BoundedComputeCoordinator``: the in-process pool that runs telemetry computes.

At most ``max_concurrency`` costly computes run at once (live updates are bounded by their
batches, see below) and at most ``max_pending`` wait, in FIFO order.
Requests coalesce per key (the full ``TelemetryKey``: session, window, resolution, version): a
key has at most one compute running and one waiting, and the waiting one takes the newest
watermark. A request-path submit (cache miss, stale read) beyond the bound is shed and says so by
returning False; nobody waits on it, the client sees ``computing`` and retries. A background
trigger (ingest, session end, backfill) has no client to retry it, so beyond the bound its key is
parked in a set of dirty keys (bounded, coalesced per key) that refills the queue as it drains:
a burst delays a live session's update but never loses it.

A compute that failed, found its failure backoff still running, or found another holder's lease
is submitted again once that backoff or lease runs out (``retry_delay`` reads when), as long as
somebody still needs it: the background trigger that asked for it (for ``TRIGGER_RETRIES``
retries), a subscriber of the session on this process, or a GET of the key in the last
``RECENT_READ_S``. So a failure heals without anyone calling GET again. Nothing here is durable:
after a restart the cache rows' leases and the next read or ingest trigger the compute again.

The bound is shared fairly between users (``TelemetryKey.user_id``): a free slot goes to the
waiting compute of the user with the fewest running (first come among equals), and when the
queue is full a user with fewer waiting computes than the heaviest one takes the heaviest one's
newest place (that compute is shed, or parked when a trigger asked for it). One user asking for
a hundred uncached views at once therefore delays another user's view by about one compute,
not by the hundred (it slowed every other user's fresh views 8×).

A scaled-out server also runs the live updates of its own ingests here (``offer``, from
``telemetry.run.inline``): taken only while the bound has room (never parked, never making room
by displacing another user's compute), and handed back (``Handoff``) instead of retried here
when they fail or find a lease busy, or when the coordinator stops before they ran: the queue's
workers then do them, as they do every compute this process did not take.

Computes run through ``TelemetryComputer.compute_batch`` (one claim, one read, one save for all
of a batch). Live updates run in at most ``max_batches`` batches at once; when one ends, the
waiting live updates (at most ``max_batch``, in the fair order above) start together as the next
batch. A lone update on an idle process starts at once, and a burst gathers in the queue while
the batches in flight run and leaves as one batch.

Only live updates are batched. A view computed for a reader, a late ingest, a session's end or
a backfill may be cold (a full aggregate over the whole session): such a costly compute holds one
of the ``max_concurrency`` slots and runs alone, so a reader's cold view never waits for another
user's cold views to be aggregated in the same statement (batched together they did: the
flooding-user test's fresh views took 3x their quiet time). A live session's update or tick
(``LIGHT_REASONS``) merges a few new buckets into a warm view: it holds no slot, and live updates
run in at most ``max_batches`` batches of at most ``max_batch`` views, so a burst of them costs
one claim, one read and one save per batch.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from vitalcast.clock import MINUTE_MS
from vitalcast.observability import Metrics, get_logger
from vitalcast.telemetry.keys import ComputeOutcome, ScheduleReason, TelemetryKey
from vitalcast.telemetry.ports import Subscriptions

log = get_logger(__name__)

#: how many enqueue → saved latencies ``stats`` keeps for its percentiles
LATENCY_WINDOW = 1_000
#: dirty keys parked beyond the bound, per pending slot; past that even triggers are shed
DEFERRED_PER_PENDING_SLOT = 100
#: reasons that have a client who retries on ``computing``; every other reason is parked instead
REQUEST_REASONS = frozenset({ScheduleReason.CACHE_MISS, ScheduleReason.STALE_READ})
#: computes of a live session's warm view (a few new buckets merged): they hold no slot
LIGHT_REASONS = frozenset({ScheduleReason.LIVE_UPDATE, ScheduleReason.LIVE_TICK})
#: outcomes after which the key is submitted again once whatever blocked it has run out
RETRY_OUTCOMES = frozenset(
    {ComputeOutcome.FAILED, ComputeOutcome.BACKING_OFF, ComputeOutcome.LEASE_BUSY}
)
#: a background trigger keeps wanting its compute through this many retries (backoff doubles
#: from 1 s: about four minutes); subscribers and recent reads keep wanting it beyond that
TRIGGER_RETRIES = 8
#: a GET keeps its key wanted this long (seconds)
RECENT_READ_S = 60.0
#: never retry sooner than this (milliseconds): clock skew, a backoff that just ran out
MIN_RETRY_MS = 50
#: when ``retry_delay`` itself fails (database down): wait this long, doubled per retry, capped
FALLBACK_RETRY_MS = 1_000
MAX_FALLBACK_RETRY_MS = MINUTE_MS


#: views one batch holds at most (``TelemetryComputer.compute_batch``)
MAX_BATCH = 32


def _holds_slot(entry: _Entry) -> bool:
    return entry.reason not in LIGHT_REASONS


class ComputeRunner(Protocol):
    """What the coordinator runs: ``TelemetryComputer.compute_batch``, the outcome per key."""

    async def __call__(
        self, items: Sequence[tuple[TelemetryKey, ScheduleReason]]
    ) -> Mapping[TelemetryKey, ComputeOutcome]: ...


class Handoff(Protocol):
    """Where a compute taken by ``offer`` goes when it cannot finish here (it failed, found its
    backoff or another holder's lease, or the coordinator stopped before it ran): the queue.
    Synchronous, never raises: it starts whatever hand-over it needs."""

    def __call__(self, key: TelemetryKey, watermark: int, reason: ScheduleReason) -> None: ...


class RetryDelay(Protocol):
    """Milliseconds until a key that could not run may run again (0: nothing blocks it now),
    None when there is nothing left to compute (the session is gone). ``retries.RetryDelays``
    reads it from the cache row."""

    async def __call__(self, key: TelemetryKey) -> int | None: ...


@dataclass(slots=True)
class _Entry:
    key: TelemetryKey
    reason: ScheduleReason
    watermark: int
    #: a background trigger (not a GET) asked for this compute, possibly coalesced into it
    triggered: bool
    #: how many times this compute was already submitted again after failing or being blocked
    retries: int = 0
    enqueued_at: float = field(default_factory=time.perf_counter)
    #: taken by ``offer``: where it goes instead of a retry here (None: retried here)
    handoff: Handoff | None = None

    def absorb(self, other: _Entry) -> None:
        """Coalesce a later request for the same key: the newest watermark, any trigger. A
        compute this process was asked to own (no hand-off) stays owned here."""
        self.watermark = max(self.watermark, other.watermark)
        self.triggered = self.triggered or other.triggered
        if other.handoff is None:
            self.handoff = None


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
    #: computes submitted again after failing or being blocked
    retries: int
    #: keys waiting for their backoff or a blocking lease to run out before a retry
    retrying: int
    #: computes that saved a payload (outcome computed)
    completed: int
    #: computes that failed (outcome failed, or the runner raised)
    failed: int
    #: runs by outcome, including the ones that had nothing to do (skipped_fresh, lease_busy …)
    outcomes: dict[str, int]
    #: enqueue → saved of completed computes, most recent last (milliseconds)
    latencies_ms: tuple[float, ...]


class BoundedComputeCoordinator:
    """N running, M waiting, one per key; implements the ``Scheduler`` protocol."""

    def __init__(
        self,
        run: ComputeRunner,
        *,
        max_concurrency: int = 3,
        max_pending: int = 50,
        metrics: Metrics | None = None,
        retry_delay: RetryDelay | None = None,
        subscriptions: Subscriptions | None = None,
        recent_read_s: float = RECENT_READ_S,
        max_batch: int = MAX_BATCH,
        max_batches: int | None = None,
    ) -> None:
        if max_concurrency < 1 or max_pending < 0 or max_batch < 1 or (max_batches or 1) < 1:
            raise ValueError(
                "max_concurrency, max_batch and max_batches must be ≥ 1 and max_pending ≥ 0"
            )
        self._run = run
        self.max_concurrency = max_concurrency
        self.max_batch = max_batch
        #: batches running at once (None: as many as there are slots, one view each at worst)
        self.max_batches = max_batches or max_concurrency
        self.max_pending = max_pending
        self._metrics = metrics
        self._pending: OrderedDict[TelemetryKey, _Entry] = OrderedDict()
        self._deferred: OrderedDict[TelemetryKey, _Entry] = OrderedDict()
        self._max_deferred = max(1, max_pending) * DEFERRED_PER_PENDING_SLOT
        self._running: dict[TelemetryKey, asyncio.Task[None]] = {}
        #: the running keys that hold one of the ``max_concurrency`` slots (not light ones)
        self._slot_holders: set[TelemetryKey] = set()
        self._retry_delay = retry_delay
        self._subscriptions = subscriptions
        self._recent_read_s = recent_read_s
        #: per key the compute that waits to be retried, and the task that waits for it
        self._retrying: dict[TelemetryKey, tuple[_Entry, asyncio.Task[None]]] = {}
        #: key → monotonic time of its last GET-path submit, oldest first
        self._read_at: OrderedDict[TelemetryKey, float] = OrderedDict()
        self._retries = 0
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
        # offered computes that never ran belong to the queue (usually released already)
        for key, watermark, reason, handoff in self.release_offered():
            handoff(key, watermark, reason)
        self._pending.clear()
        self._deferred.clear()
        retrying = [task for _entry, task in self._retrying.values()]
        for task in retrying:
            task.cancel()
        await asyncio.gather(*retrying, return_exceptions=True)
        self._retrying.clear()
        running = list(set(self._running.values()))
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
        triggered = reason not in REQUEST_REASONS
        if not triggered:
            self._note_read(key)
        return self._admit(_Entry(key, reason, watermark, triggered), parkable=triggered)

    def offer(
        self, key: TelemetryKey, *, watermark: int, reason: ScheduleReason, handoff: Handoff
    ) -> bool:
        """Take a compute of ``key`` only if the bound has room for it now (or it coalesces
        with one waiting); False otherwise, with nothing counted as shed, parked or displaced:
        the caller sends it elsewhere. A taken compute that cannot finish here goes to
        ``handoff`` (see ``Handoff``), never into a retry of this process."""
        if self._closed:
            return False
        waiting = self._pending.get(key)
        entry = _Entry(key, reason, watermark, triggered=True, handoff=handoff)
        full = waiting is None and len(self._pending) >= self.max_pending
        if full and not (self._can_start(entry) and key not in self._running):
            return False
        self._submitted += 1
        return self._admit(entry, parkable=False)

    def release_offered(self) -> list[tuple[TelemetryKey, int, ScheduleReason, Handoff]]:
        """Remove the offered computes that wait (not yet running) and return them, so that a
        server that drains hands them to the queue before it closes it."""
        released: list[tuple[TelemetryKey, int, ScheduleReason, Handoff]] = []
        for waiting in (self._pending, self._deferred):
            for key, entry in list(waiting.items()):
                if entry.handoff is not None:
                    del waiting[key]
                    released.append((key, entry.watermark, entry.reason, entry.handoff))
        self._update_gauges()
        if not self._running and not self._pending and not self._deferred:
            self._idle.set()
        return released

    def _admit(self, entry: _Entry, *, parkable: bool) -> bool:
        """Queue ``entry`` (or coalesce it); beyond the bound park it when ``parkable``, else
        shed it (False)."""
        key, reason = entry.key, entry.reason
        waiting = self._pending.get(key)
        if waiting is not None:
            self._deduped += 1
            waiting.absorb(entry)
            return True
        slot_free = self._can_start(entry) and key not in self._running
        if len(self._pending) >= self.max_pending and not slot_free:
            if self._make_room_for(key.user_id):
                return self._admit(entry, parkable=parkable)
            if parkable and self._defer(entry):
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
        self._pending[key] = entry
        self._idle.clear()
        self._drain()
        return True

    def _make_room_for(self, user_id: str) -> bool:
        """Free a waiting place for ``user_id`` from the user with the most waiting computes,
        if that user holds more than one place beyond ``user_id``'s; True when one was freed."""
        waiting = Counter(k.user_id for k in self._pending)
        if not waiting:
            return False
        heaviest, most = waiting.most_common(1)[0]
        if heaviest == user_id or most <= waiting[user_id] + 1:
            return False
        newest = next(e for k, e in reversed(self._pending.items()) if k.user_id == heaviest)
        del self._pending[newest.key]
        if not (newest.triggered and self._defer(newest)):
            self._shed += 1
            if self._metrics is not None:
                self._metrics.coordinator_shed.inc()
            log.info("telemetry_compute_yielded", session_id=newest.key.session_id)
        return True

    def _defer(self, entry: _Entry) -> bool:
        parked = self._deferred.get(entry.key)
        if parked is not None:
            self._deduped += 1
            parked.absorb(entry)
            return True
        if len(self._deferred) >= self._max_deferred:
            return False
        self._deferred[entry.key] = entry
        self._idle.clear()
        return True

    def _note_read(self, key: TelemetryKey) -> None:
        now = time.monotonic()
        self._read_at[key] = now
        self._read_at.move_to_end(key)
        while self._read_at:
            oldest_key, at = next(iter(self._read_at.items()))
            if now - at <= self._recent_read_s:
                break
            del self._read_at[oldest_key]

    def _wanted(self, entry: _Entry) -> bool:
        """Somebody still needs ``entry``'s compute (see the module docstring)."""
        if entry.triggered and entry.retries < TRIGGER_RETRIES:
            return True
        subscriptions = self._subscriptions
        if subscriptions is not None and entry.key.session_id in (
            subscriptions.subscribed_sessions()
        ):
            return True
        read_at = self._read_at.get(entry.key)
        return read_at is not None and time.monotonic() - read_at <= self._recent_read_s

    def _plan_retry(self, entry: _Entry) -> None:
        if entry.handoff is not None:
            entry.handoff(entry.key, entry.watermark, entry.reason)
            return
        retry_delay = self._retry_delay
        if retry_delay is None or self._closed:
            return
        planned = self._retrying.get(entry.key)
        if planned is not None:
            planned[0].absorb(entry)
            return
        task = asyncio.create_task(
            self._retry_later(retry_delay, entry.key),
            name=f"telemetry-retry-{entry.key.dedupe_id}",
        )
        self._retrying[entry.key] = (entry, task)

    async def _retry_later(self, retry_delay: RetryDelay, key: TelemetryKey) -> None:
        """Wait out the backoff or lease that stopped the key's compute, then submit it again
        if it is still wanted."""
        entry = self._retrying[key][0]
        try:
            delay_ms = await self._delay_of(retry_delay, entry)
            if delay_ms is None:
                return
            await asyncio.sleep(max(delay_ms, MIN_RETRY_MS) / 1000)
        finally:
            planned = self._retrying.pop(key, None)
            if planned is not None:
                entry = planned[0]
        if self._closed or not self._wanted(entry):
            log.info(
                "telemetry_retry_dropped",
                session_id=entry.key.session_id,
                reason=entry.reason.value,
                retries=entry.retries,
            )
            return
        self._retries += 1
        if self._metrics is not None:
            self._metrics.coordinator_retries.inc()
        log.info(
            "telemetry_compute_retry",
            session_id=entry.key.session_id,
            reason=entry.reason.value,
            retries=entry.retries + 1,
        )
        retry = _Entry(entry.key, entry.reason, entry.watermark, entry.triggered, entry.retries + 1)
        self._admit(retry, parkable=True)

    async def _delay_of(self, retry_delay: RetryDelay, entry: _Entry) -> int | None:
        try:
            return await retry_delay(entry.key)
        except Exception as exc:
            log.warning(
                "telemetry_retry_delay_failed",
                session_id=entry.key.session_id,
                error_type=type(exc).__name__,
            )
            return min(FALLBACK_RETRY_MS << min(entry.retries, 16), MAX_FALLBACK_RETRY_MS)

    def _refill(self) -> None:
        """Move parked keys into free pending slots, oldest first."""
        while self._deferred and len(self._pending) < self.max_pending:
            key, entry = self._deferred.popitem(last=False)
            waiting = self._pending.get(key)
            if waiting is not None:
                waiting.absorb(entry)
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
            retries=self._retries,
            retrying=len(self._retrying),
            completed=self._completed,
            failed=self._failed,
            outcomes=dict(self._outcomes),
            latencies_ms=tuple(self._latencies),
        )

    async def refresh_metrics(self) -> None:
        """Bring the Prometheus gauges up to date (called by /metrics)."""
        self._update_gauges()

    def _next_pending(
        self, picked: Mapping[TelemetryKey, _Entry], *, costly: bool
    ) -> _Entry | None:
        """The waiting compute to start next, costly or light as asked: of the user with the
        fewest running (those ``picked`` for the batch being formed count as running), first
        come; a parked trigger when nothing waits."""
        running = Counter(k.user_id for k in self._running)
        running.update(k.user_id for k in picked)
        best: _Entry | None = None
        for k, e in self._pending.items():
            if k in self._running or k in picked or _holds_slot(e) is not costly:
                continue
            if best is None or running[k.user_id] < running[best.key.user_id]:
                best = e
                if not running[k.user_id]:
                    break
        if best is not None:
            del self._pending[best.key]
            return best
        parked = next(
            (
                e
                for k, e in self._deferred.items()
                if k not in self._running and k not in picked and _holds_slot(e) is costly
            ),
            None,
        )
        if parked is not None:
            del self._deferred[parked.key]
        return parked

    def _free_slots(self) -> int:
        return self.max_concurrency - len(self._slot_holders)

    def _light_batches(self) -> int:
        return len({t for k, t in self._running.items() if k not in self._slot_holders})

    def _can_start(self, entry: _Entry) -> bool:
        """``entry`` may start now: a slot is free for a costly one, a batch for a light one."""
        if _holds_slot(entry):
            return self._free_slots() > 0
        return self._light_batches() < self.max_batches

    def _drain(self) -> None:
        # Costly computes run one per slot, each alone: a reader's cold view never waits for
        # another user's cold views to be aggregated in the same statement.
        while self._free_slots() > 0:
            entry = self._next_pending({}, costly=True)
            if entry is None:
                break
            self._start({entry.key: entry})
        while self._light_batches() < self.max_batches:
            batch: dict[TelemetryKey, _Entry] = {}
            while len(batch) < self.max_batch:
                entry = self._next_pending(batch, costly=False)
                if entry is None:
                    break
                batch[entry.key] = entry
            if not batch:
                break
            self._start(batch)
        self._refill()
        self._update_gauges()
        if not self._running and not self._pending and not self._deferred:
            self._idle.set()

    def _start(self, batch: Mapping[TelemetryKey, _Entry]) -> None:
        first = next(iter(batch))
        task = asyncio.create_task(
            self._execute(list(batch.values())),
            name=f"telemetry-compute-{first.dedupe_id}+{len(batch) - 1}",
        )
        for k, e in batch.items():
            self._running[k] = task
            if _holds_slot(e):
                self._slot_holders.add(k)
        self._peak = max(self._peak, len(self._running))

    async def _execute(self, entries: list[_Entry]) -> None:
        started = time.perf_counter()
        try:
            outcomes = await self._run([(e.key, e.reason) for e in entries])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            for entry in entries:
                self._failed += 1
                self._outcomes[ComputeOutcome.FAILED.value] += 1
                log.error(
                    "telemetry_compute_crashed",
                    session_id=entry.key.session_id,
                    error_type=type(exc).__name__,
                )
                self._plan_retry(entry)
        else:
            finished = time.perf_counter()
            for entry in entries:
                self._account(entry, outcomes[entry.key], started, finished)
        finally:
            for entry in entries:
                self._running.pop(entry.key, None)
                self._slot_holders.discard(entry.key)
            if not self._closed:
                self._drain()
            else:
                self._update_gauges()
                if not self._running:
                    self._idle.set()

    def _account(
        self, entry: _Entry, outcome: ComputeOutcome, started: float, finished: float
    ) -> None:
        self._outcomes[outcome.value] += 1
        if outcome is ComputeOutcome.COMPUTED:
            self._completed += 1
            self._latencies.append((finished - entry.enqueued_at) * 1000)
        elif outcome is ComputeOutcome.FAILED:
            self._failed += 1
        if outcome in RETRY_OUTCOMES:
            self._plan_retry(entry)
        # Routine, one per compute: at debug, so a terminal stays readable at the default
        # level (failures and retries are logged where they happen).
        log.debug(
            "telemetry_compute_finished",
            session_id=entry.key.session_id,
            window_minutes=entry.key.window_minutes,
            resolution=entry.key.resolution.value,
            reason=entry.reason.value,
            outcome=outcome.value,
            queue_ms=round((started - entry.enqueued_at) * 1000, 2),
            total_ms=round((finished - entry.enqueued_at) * 1000, 2),
        )

    def _update_gauges(self) -> None:
        if self._metrics is not None:
            self._metrics.coordinator_inflight.set(len(self._running))
            self._metrics.coordinator_pending.set(len(self._pending))
