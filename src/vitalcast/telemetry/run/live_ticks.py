"""``LiveTicker``: live views move with time, also when no sample arrives.

A live payload is fresh only while "now" is in the bucket it was computed in (its live edge).
While a live session has subscribers on this process, the ticker asks for a recompute (reason
``live_tick``) of each of its cached views once the live edge has crossed a bucket boundary;
the save pushes ``session.updated``. So a watch that stops sending shows as a trailing gap that
grows within one bucket after the gap threshold, and a sample sent ahead of its time appears
once its time has come, without anyone calling GET.

The ticker looks ``TICK_GRACE_MS`` after the boundary, not at it: while samples flow, the next
ingest recomputes the view on the new edge anyway, and a view already on the current edge is
not ticked. Ticking at the boundary itself recomputed every subscribed view at the same instant,
in front of the ingests that would have done it a moment later (the soak's p99 doubled).

The looks are coalesced on a grid of ``LOOK_GRID_MS`` of the clock: a session is looked at on
the last grid point at or before its boundary + ``TICK_GRACE_MS`` (still seconds after the
boundary), so sessions whose boundaries fall within one grid step share one read. Sessions
started within seconds of each other (a class, a team, the capacity benchmark's 1,000) cross
their boundaries together but a few milliseconds apart; looked at one by one, each woke the
ticker for a read unit of its own on a database thread: at 1,000 sessions about 170 reads a
second for 6 s of every minute, one per second on the grid (``bench/capacity`` at 1,000
sessions, same-run pairs against one read per session: p99 288 against 347 ms and 141 against
172 ms).

At most one compute per view per bucket across the cluster: each process asks once per boundary
and only for views whose payload is on an older edge; the scheduler coalesces per key (the
coordinator, the queue's per-key deduplication), and a compute that finds the payload already
on the current edge at the current watermark is skipped as fresh under the lease. So 50 clients
on two servers cost one compute per view per bucket, not 50.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from vitalcast.clock import Clock, sleep_to_tick
from vitalcast.db.engine import Database
from vitalcast.observability import Metrics, get_logger
from vitalcast.telemetry.grid import live_edge_moved, next_boundary_ms
from vitalcast.telemetry.keys import COMPUTE_VERSION, Resolution, ScheduleReason, TelemetryKey
from vitalcast.telemetry.ports import Subscriptions
from vitalcast.telemetry.scheduling import Scheduler, Submission, schedule_many
from vitalcast.telemetry.store import queries

log = get_logger(__name__)

#: every resolution's boundaries are boundaries of the session's 1-minute grid
GRID_MS = Resolution.ONE_MINUTE.bucket_ms
#: how long after a boundary the ticker looks: an ingest in this time makes the tick needless
TICK_GRACE_MS = 10_000
#: the looks' grid (milliseconds of the clock): the sessions due within one step, one read
LOOK_GRID_MS = 1_000
#: the ticker looks at the clock at least this often (milliseconds), so a clock that is stepped
#: (NTP) or a session subscribed meanwhile is noticed soon
MAX_SLEEP_MS = 1_000
MIN_SLEEP_MS = 5
#: a subscribed session that is not live (ended, or gone) is not looked at again
_NEVER = sys.maxsize


class LiveTicker:
    """Recomputes the subscribed live views of this process at each bucket boundary."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        subscriptions: Subscriptions,
        scheduler: Scheduler,
        metrics: Metrics,
    ) -> None:
        self._db = db
        self._clock = clock
        self._subscriptions = subscriptions
        self._scheduler = scheduler
        #: session id → when to look at its views next (its next 1-minute boundary)
        self._next_check: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._scheduled = metrics.live_ticks.labels(outcome="scheduled")
        self._current = metrics.live_ticks.labels(outcome="current")

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="live-ticker")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception as exc:
                # The next wake tries again; a session's check time only moves once it was read.
                log.warning("live_tick_failed", error_type=type(exc).__name__)
            sleep_ms = self._sleep_ms()
            if sleep_ms < MAX_SLEEP_MS:
                await asyncio.sleep(sleep_ms / 1000)
            else:
                # nothing due within a second (an idle server): look again on the loop's next
                # second, where the server's other periodic tasks wake too (one wake-up)
                await sleep_to_tick(MAX_SLEEP_MS / 1000)

    def _sleep_ms(self) -> int:
        now = self._clock.now_ms()
        soonest = min(self._next_check.values(), default=_NEVER)
        return max(MIN_SLEEP_MS, min(MAX_SLEEP_MS, soonest - now))

    async def tick(self) -> int:
        """Ask for a recompute of every subscribed live view whose payload lies on an older
        live edge; the number of views asked for."""
        subscribed = set(self._subscriptions.subscribed_sessions())
        for session_id in self._next_check.keys() - subscribed:
            del self._next_check[session_id]
        now = self._clock.now_ms()
        due = [sid for sid in subscribed if self._next_check.get(sid, now) <= now]
        if not due:
            return 0
        views = await self._db.unit(
            lambda conn: queries.live_views(conn, due, compute_version=COMPUTE_VERSION)
        )
        for session_id in due:
            self._next_check[session_id] = _NEVER
        asking: list[Submission] = []
        for view in views:
            self._next_check[view.session_id] = look_at_ms(
                next_boundary_ms(view.session_start_ms, GRID_MS, now)
            )
            if view.resolution is None or view.window_minutes is None:
                continue
            if view.computed_at_ms is None:
                continue  # nothing cached yet: the compute on its way is on the current edge
            if not live_edge_moved(
                session_start_ms=view.session_start_ms,
                bucket_ms=view.resolution.bucket_ms,
                computed_at_ms=view.computed_at_ms,
                now_ms=now,
            ):
                self._current.inc()
                continue
            key = TelemetryKey(
                view.session_id,
                view.window_minutes,
                view.resolution,
                COMPUTE_VERSION,
                view.user_id,
            )
            asking.append((key, view.session_watermark, ScheduleReason.LIVE_TICK))
        # at once: every subscribed live session crosses its bucket at about the same time
        await schedule_many(self._scheduler, asking)
        self._scheduled.inc(len(asking))
        return len(asking)


def look_at_ms(boundary_ms: int) -> int:
    """When the ticker looks at a session whose next boundary is ``boundary_ms``: the grid
    point at or before its grace's end, so sessions due within one grid step are read together
    (and never before the boundary: the grace is longer than a step)."""
    return (boundary_ms + TICK_GRACE_MS) // LOOK_GRID_MS * LOOK_GRID_MS
