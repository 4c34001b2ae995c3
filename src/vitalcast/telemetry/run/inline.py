"""``InlineLiveUpdates``: a scaled-out server computes the live updates of its own ingests.

A live update queued for a worker cost about sixteen exchanges over two processes (the job's
add; the worker's wake, fetch, claim, change-log read, GROUP BY, save, completion and publish;
the event back to the server), and on a machine that sleeps between updates each exchange that
wakes a process costs about 0.6 ms of CPU, whatever the Python behind it. The server that took
the ingest already holds the view's session, runs a computer and a bounded coordinator (its
Redis-down fallback), and its own subscribers are on its own sockets: computing there drops the
job and the worker's exchanges, and its own watchers get the event without Redis (python-socketio's
pub/sub manager delivers an emit on its own node first, then publishes it for the others).

The rule (``TelemetryTriggers.sessions_changed``): a live update of a view that was already
cached (a warm, incremental compute) is offered here; the coordinator takes it while its bound
has room (``BoundedComputeCoordinator.offer``). Everything else goes to the queue as before:
uncached views (a cold compute), late ingests, a session's end, backfills, imports, reads'
misses, live ticks, and the live updates this process refused (bound full, draining). A taken
compute that fails or finds the view's lease held elsewhere is handed to the queue, never retried
here, and so are the taken ones that still wait when the server drains. Guarantees are the
computer's, wherever it runs: one compute per view at a time across the cluster (the lease), the
compare-and-set save (newest watermark wins), the bound per process.

A server killed between an ingest's commit and its inline compute leaves the view stale, with
the change log committed: the next ingest of the session, the next live tick of a subscribed
view, or the next read (``stale_read``) recomputes it, incrementally and exactly, as after the
same crash of an embedded server (``tests/hardening/test_crash_incremental.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from vitalcast.observability import Metrics, get_logger
from vitalcast.telemetry.keys import ScheduleReason, TelemetryKey
from vitalcast.telemetry.run.coordinator import BoundedComputeCoordinator
from vitalcast.telemetry.scheduling import Scheduler, Submission, schedule_many

log = get_logger(__name__)


class InlineLiveUpdates:
    """Offers warm live updates to this process's coordinator; hands to ``queue`` what it took
    and could not finish."""

    def __init__(
        self, coordinator: BoundedComputeCoordinator, queue: Scheduler, metrics: Metrics
    ) -> None:
        self._coordinator = coordinator
        self._queue = queue
        self._draining = False
        #: hand-overs to the queue still running (``drain`` waits for them)
        self._handing: set[asyncio.Task[list[bool]]] = set()
        self._inline = metrics.live_update_routes.labels(route="inline")
        self._queued = metrics.live_update_routes.labels(route="queued")
        self._handed_off = metrics.live_update_routes.labels(route="handed_off")

    def offer(self, submissions: Sequence[Submission]) -> list[bool]:
        """Per submission, True when this process took its compute; the caller queues the rest."""
        if self._draining:
            taken = [False] * len(submissions)
        else:
            taken = [
                self._coordinator.offer(
                    key, watermark=watermark, reason=reason, handoff=self._hand_off
                )
                for key, watermark, reason in submissions
            ]
        inline = sum(taken)
        if inline:
            self._inline.inc(inline)
        if len(taken) > inline:
            self._queued.inc(len(taken) - inline)
        return taken

    def _hand_off(self, key: TelemetryKey, watermark: int, reason: ScheduleReason) -> None:
        self._handed_off.inc()
        log.info("telemetry_inline_handed_off", session_id=key.session_id, reason=reason.value)
        task = asyncio.create_task(
            schedule_many(self._queue, [(key, watermark, reason)]),
            name=f"telemetry-handoff-{key.dedupe_id}",
        )
        self._handing.add(task)
        task.add_done_callback(self._handing.discard)

    async def drain(self) -> None:
        """Take no more, and hand the taken computes that have not started to the queue (the
        server is stopping; call before the queue closes)."""
        self._draining = True
        for key, watermark, reason, handoff in self._coordinator.release_offered():
            handoff(key, watermark, reason)
        if self._handing:
            await asyncio.gather(*self._handing, return_exceptions=True)
