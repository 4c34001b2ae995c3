"""``TelemetryTriggers``: turns session changes into scheduled computes (a ``ChangeListener``).

- Ingest moved sessions' watermarks: recompute every cached view of them and the default one
  (``live_update`` while active, ``late_ingest`` once ended). On a scaled-out server the live
  updates of views already cached are offered to the server's own coordinator first
  (``inline``, see ``telemetry.run.inline``); what it does not take goes to the scheduler.
- A session ended or was cancelled: precompute the default window at 1m and 5m, and refresh any
  other cached view (``session_completed``). Starting a session schedules nothing.

The ingest and session services call these after their transaction committed, whoever their
caller is (route, demo, CLI, importer), so every path gets the same recomputes.
"""

from __future__ import annotations

from collections.abc import Sequence

from vitalcast.clock import Clock
from vitalcast.db.engine import Database
from vitalcast.observability import get_logger
from vitalcast.sessions.changes import CachedView
from vitalcast.sessions.models import Session
from vitalcast.telemetry.keys import COMPUTE_VERSION, Resolution, ScheduleReason, TelemetryKey
from vitalcast.telemetry.run.inline import InlineLiveUpdates
from vitalcast.telemetry.scheduling import Scheduler, Submission, schedule_many
from vitalcast.telemetry.store import queries

log = get_logger(__name__)


class TelemetryTriggers:
    """Schedules the recomputes a session change calls for; never raises into its caller."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        scheduler: Scheduler,
        *,
        default_window_minutes: int,
        inline: InlineLiveUpdates | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._scheduler = scheduler
        self._inline = inline
        self._window_minutes = default_window_minutes

    async def sessions_changed(
        self, sessions: Sequence[Session], views: Sequence[CachedView]
    ) -> None:
        """Ingest moved these sessions' watermarks; ``views`` are their cached views, as the
        ingest's transaction read them."""
        by_id = {session.id: session for session in sessions}
        cached = {
            TelemetryKey(
                view.session_id,
                view.window_minutes,
                Resolution(view.resolution),
                COMPUTE_VERSION,
                by_id[view.session_id].user_id,
            )
            for view in views
            if view.compute_version == COMPUTE_VERSION and view.session_id in by_id
        }
        keys = set(cached)
        now_ms = self._clock.now_ms()
        for session in by_id.values():
            keys.add(
                TelemetryKey.default_for(
                    session, window_minutes=self._window_minutes, now_ms=now_ms
                )
            )
        submissions: list[Submission] = [
            (
                key,
                by_id[key.session_id].source_watermark,
                ScheduleReason.LIVE_UPDATE
                if by_id[key.session_id].live
                else ScheduleReason.LATE_INGEST,
            )
            for key in sorted(keys)
        ]
        if self._inline is not None:
            warm = [s for s in submissions if s[2] is ScheduleReason.LIVE_UPDATE and s[0] in cached]
            if warm:
                taken = {
                    s[0] for s, took in zip(warm, self._inline.offer(warm), strict=True) if took
                }
                submissions = [s for s in submissions if s[0] not in taken]
        await schedule_many(self._scheduler, submissions)

    async def session_status(self, session: Session) -> None:
        """A session started, ended or was cancelled."""
        if session.live:
            return
        keys = await self._cached_keys({session.id: session})
        now_ms = self._clock.now_ms()
        for resolution in Resolution:
            keys.add(
                TelemetryKey.default_for(
                    session,
                    window_minutes=self._window_minutes,
                    now_ms=now_ms,
                    resolution=resolution,
                )
            )
        await schedule_many(
            self._scheduler,
            [
                (key, session.source_watermark, ScheduleReason.SESSION_COMPLETED)
                for key in sorted(keys)
            ],
        )

    async def _cached_keys(self, by_id: dict[str, Session]) -> set[TelemetryKey]:
        try:
            ids = list(by_id)
            rows = await self._db.unit(
                lambda conn: queries.keys_of(conn, ids, compute_version=COMPUTE_VERSION)
            )
        except Exception as exc:
            log.error("telemetry_cache_keys_failed", error_type=type(exc).__name__)
            return set()
        return {
            TelemetryKey(sid, window, res, COMPUTE_VERSION, by_id[sid].user_id)
            for sid, window, res in rows
        }
