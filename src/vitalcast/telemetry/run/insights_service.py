"""``InsightsService``: one metric's insights across the caller's last completed sessions, and
where the newest session falls among them ("was this session unusual for me?").

Served from cached payloads: one read of the sessions and one of their views' cache rows, each
session's state decided as a telemetry GET would decide it (``answer.decide``). A view that is
missing or stale is handed to the scheduler with the request's reason, so computes go through the
normal bounded path (the coordinator's N running and M waiting, or the queue) and never all at
once; the first refusal stops the scheduling (the bound is full, every further key would be shed
as well), and those sessions answer ``computing`` until a later request finds them ready.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from vitalcast import catalog
from vitalcast.catalog import Metric, MetricKind
from vitalcast.clock import Clock
from vitalcast.db.engine import Database
from vitalcast.errors import InvalidInput
from vitalcast.json_types import JsonObject
from vitalcast.sessions import repository as session_repository
from vitalcast.sessions.models import Session, SessionStatus
from vitalcast.telemetry.compute.payload import unpack
from vitalcast.telemetry.keys import (
    CacheState,
    TelemetryKey,
    check_window_minutes,
)
from vitalcast.telemetry.read.answer import RETRY_COMPUTING_S, RETRY_SHED_S, decide
from vitalcast.telemetry.scheduling import Scheduler, schedule
from vitalcast.telemetry.store import queries
from vitalcast.telemetry.store.rows import CacheRow, HotRow

#: how many sessions one request may compare
MAX_SESSIONS = 100

#: the insight sessions are compared by: the change of a scalar, the total of a cumulative metric
Compared = Literal["delta", "during_total"]


@dataclass(frozen=True, slots=True)
class SessionInsights:
    """One session's line: its request state and, when a payload is cached, its insights."""

    session_id: str
    start_ms: int
    end_ms: int | None
    state: CacheState
    #: the metric's insights from the cached payload (stale ones included); None without one
    insights: JsonObject | None
    #: the figure sessions are compared by (``compared``), None when unknown
    value: float | None


@dataclass(frozen=True, slots=True)
class Place:
    """Where the newest session falls among the others.

    ``percentile`` is the mid-rank percentile: the share of the others whose value is below the
    newest one's, counting ties as half, times 100 (50 = typical, 100 = above every other)."""

    session_id: str
    value: float
    #: median of the others' values (None when no other session has one)
    median: float | None
    percentile: float | None
    #: how many other sessions have a value
    compared_with: int


@dataclass(frozen=True, slots=True)
class CrossSessionInsights:
    metric: Metric
    window_minutes: int
    #: ``delta`` (scalar metrics) or ``during_total`` (cumulative ones)
    compared: Compared
    #: newest first
    sessions: tuple[SessionInsights, ...]
    place: Place | None
    #: seconds until the soonest of the sessions not ready may be (None: complete)
    retry_after_s: int | None

    @property
    def complete(self) -> bool:
        """Every session's payload is current (ready or no_data)."""
        return all(line.state.has_payload for line in self.sessions)


class InsightsService:
    """Compares a metric's insights across a user's sessions; schedules what is missing."""

    def __init__(
        self, db: Database, clock: Clock, scheduler: Scheduler, *, default_window_minutes: int
    ) -> None:
        self._db = db
        self._clock = clock
        self._scheduler = scheduler
        self.default_window_minutes = default_window_minutes

    async def across_sessions(
        self, user_id: str, *, metric: str, last: int, window_minutes: int
    ) -> CrossSessionInsights:
        """``metric``'s insights in the default view (``window_minutes``, auto resolution) of
        ``user_id``'s ``last`` completed sessions, newest first. Raises InvalidInput for an
        unknown metric, a window or a count out of range."""
        entry = catalog.BY_CODE.get(metric.strip().lower())
        if entry is None:
            raise InvalidInput(f"Unknown metric code: {metric}.", code="UNKNOWN_METRIC")
        check_window_minutes(window_minutes)
        if not 1 <= last <= MAX_SESSIONS:
            raise InvalidInput(f"last must be 1…{MAX_SESSIONS}.", code="LAST_OUT_OF_RANGE")
        now = self._clock.now_ms()
        async with self._db.read() as conn:
            sessions = await session_repository.list_page(
                conn, user_id, status=SessionStatus.COMPLETED, limit=last, after=None
            )
            keys = [
                TelemetryKey.default_for(s, window_minutes=window_minutes, now_ms=now)
                for s in sessions
            ]
            rows = await queries.rows_of(conn, keys)
        compared: Compared = "during_total" if entry.kind is MetricKind.CUMULATIVE else "delta"
        lines: list[SessionInsights] = []
        retry_after: int | None = None
        scheduling = True
        for session, key in zip(sessions, keys, strict=True):
            row = rows.get(key)
            decision = decide(_hot_row(session, key, row), now)
            if decision.reason is not None and scheduling:
                scheduling = await schedule(
                    self._scheduler, key, watermark=session.source_watermark, reason=decision.reason
                )
            if not decision.state.has_payload:
                wait = (decision.retry_after_s or RETRY_COMPUTING_S) if scheduling else RETRY_SHED_S
                retry_after = wait if retry_after is None else min(retry_after, wait)
            found = _insights(row, entry.code)
            lines.append(
                SessionInsights(
                    session_id=session.id,
                    start_ms=session.start_ms,
                    end_ms=session.end_ms,
                    state=decision.state,
                    insights=found,
                    value=None if found is None else found[compared],
                )
            )
        return CrossSessionInsights(
            metric=entry,
            window_minutes=window_minutes,
            compared=compared,
            sessions=tuple(lines),
            place=place_of(lines),
            retry_after_s=retry_after,
        )


def place_of(lines: Sequence[SessionInsights]) -> Place | None:
    """The newest (first) session's place among the rest; None when it has no value."""
    if not lines or lines[0].value is None:
        return None
    newest = lines[0].value
    others = [line.value for line in lines[1:] if line.value is not None]
    if not others:
        return Place(lines[0].session_id, newest, None, None, 0)
    below = sum(value < newest for value in others)
    ties = sum(value == newest for value in others)
    return Place(
        session_id=lines[0].session_id,
        value=newest,
        median=statistics.median(others),
        percentile=100 * (below + ties / 2) / len(others),
        compared_with=len(others),
    )


def _hot_row(session: Session, key: TelemetryKey, row: CacheRow | None) -> HotRow:
    """What a telemetry GET of ``key`` would read, so its state is decided the same way."""
    return HotRow(
        session_status=session.status.value,
        session_start_ms=session.start_ms,
        session_end_ms=session.end_ms,
        session_watermark=session.source_watermark,
        resolution=key.resolution.value,
        status=None if row is None else row.status.value,
        source_watermark=None if row is None else row.source_watermark,
        computed_at_ms=None if row is None else row.computed_at_ms,
        error_code=None if row is None else row.error_code,
        next_attempt_ms=None if row is None else row.next_attempt_ms,
        payload=None if row is None else row.payload,
    )


def _insights(row: CacheRow | None, code: str) -> JsonObject | None:
    """The metric's insights in the row's payload, if it keeps one (also while stale)."""
    if row is None or row.payload is None or not row.status.has_payload:
        return None
    metric = unpack(row.payload).metric(code)
    return None if metric is None else metric.get("insights")
