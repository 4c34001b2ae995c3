"""What names a view and what it can be: versions, window limits, resolutions, states, reasons and
the ``TelemetryKey`` of one cache row (with the ``auto`` resolution rule that picks it)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from vitalcast.clock import MINUTE_MS
from vitalcast.errors import InvalidInput
from vitalcast.sessions.models import WIDEST_PAD_MS, Session
from vitalcast.telemetry.grid import TelemetryWindow

# Bump when the payload's meaning changes: old cache rows are then simply never read again.
# 2: the grid anchored at the session start, live windows fresh per bucket, coverage as time.
# 3: every metric carries its insights.
# 4: sums and means exact over values rounded to micro-units (order-independent, so that an
# incremental compute is byte-identical to a full one).
COMPUTE_VERSION = 4
SCHEMA_VERSION = 3
MIN_WINDOW_MINUTES = 15
MAX_WINDOW_MINUTES = WIDEST_PAD_MS // MINUTE_MS
# `auto` picks 1m up to this window span, 5m beyond it.
AUTO_1M_MAX_SPAN_MS = 6 * 3_600_000


def check_window_minutes(window_minutes: int) -> None:
    """Refuse a window outside ``MIN_WINDOW_MINUTES``…``MAX_WINDOW_MINUTES`` (a GET, an export
    and the insights ask for windows the same way)."""
    if not MIN_WINDOW_MINUTES <= window_minutes <= MAX_WINDOW_MINUTES:
        raise InvalidInput(
            f"window_minutes must be {MIN_WINDOW_MINUTES}…{MAX_WINDOW_MINUTES}.",
            code="WINDOW_OUT_OF_RANGE",
        )


class Resolution(enum.StrEnum):
    """Bucket width of a payload."""

    #: 60 000 ms buckets
    ONE_MINUTE = "1m"
    #: 300 000 ms buckets
    FIVE_MINUTES = "5m"

    @property
    def bucket_ms(self) -> int:
        return MINUTE_MS if self is Resolution.ONE_MINUTE else 5 * MINUTE_MS


class CacheState(enum.StrEnum):
    """What a telemetry request answers (docs/design.md, "Request states")."""

    #: cache fresh: the payload matches the session's current watermark
    READY = "ready"
    #: the watermark moved; the last payload is served and a recompute is scheduled
    STALE = "stale"
    #: nothing cached yet; a compute is scheduled
    COMPUTING = "computing"
    #: the window holds no samples (fresh); the empty payload is served
    NO_DATA = "no_data"
    #: freshness unknown or the compute keeps failing; last payload (if any) and an error code
    FAILED = "failed"

    @property
    def has_payload(self) -> bool:
        """A row in this state holds a payload that was current at its watermark."""
        return self in (CacheState.READY, CacheState.NO_DATA)


class ScheduleReason(enum.StrEnum):
    """Why a compute was asked for; carried into jobs and logs."""

    #: a GET found nothing cached
    CACHE_MISS = "cache_miss"
    #: a GET found an older watermark
    STALE_READ = "stale_read"
    #: ingest touched an active session
    LIVE_UPDATE = "live_update"
    #: ingest touched an ended session
    LATE_INGEST = "late_ingest"
    #: the session ended; precompute the default window
    SESSION_COMPLETED = "session_completed"
    #: `vitalcast backfill`
    BACKFILL = "backfill"
    #: the live edge of a subscribed live session crossed a bucket boundary
    LIVE_TICK = "live_tick"


@dataclass(frozen=True, slots=True, order=True)
class TelemetryKey:
    """Identity of one cache row. ``user_id`` rides along so a worker needs no extra lookup."""

    session_id: str
    window_minutes: int
    resolution: Resolution
    compute_version: int = COMPUTE_VERSION
    user_id: str = ""

    @classmethod
    def default_for(
        cls,
        session: Session,
        *,
        window_minutes: int,
        now_ms: int,
        resolution: Resolution | None = None,
    ) -> TelemetryKey:
        """The key of ``session``'s default view: ``window_minutes`` at ``resolution``, or at the
        resolution ``auto`` picks for its window now."""
        if resolution is None:
            resolution = resolve_resolution(
                None,
                start_ms=session.start_ms,
                end_ms=session.end_ms,
                live=session.live,
                window_minutes=window_minutes,
                now_ms=now_ms,
            )
        return cls(session.id, window_minutes, resolution, COMPUTE_VERSION, session.user_id)

    @property
    def dedupe_id(self) -> str:
        """Portable id of the key (BullMQ rejects ``:``)."""
        return f"{self.session_id}_{self.window_minutes}_{self.resolution.value}_v{self.compute_version}"


class ComputeOutcome(enum.StrEnum):
    """What one call of ``TelemetryComputer.compute`` did; only COMPUTED ran a compute."""

    #: the payload was aggregated and saved under our lease (state ready or no_data)
    COMPUTED = "computed"
    #: after taking the lease the cache was already fresh: nothing aggregated, nothing counted
    SKIPPED_FRESH = "skipped_fresh"
    #: another holder's unexpired lease: it computes, we do nothing
    LEASE_BUSY = "lease_busy"
    #: the last compute failed and its backoff has not elapsed
    BACKING_OFF = "backing_off"
    #: our lease expired and was taken over mid-compute; our result was discarded
    LEASE_LOST = "lease_lost"
    #: the session no longer exists (or is not the key's user's)
    SESSION_GONE = "session_gone"
    #: the compute raised; the failure and its backoff were recorded on the row
    FAILED = "failed"


def resolve_resolution(
    requested: str | None,
    *,
    start_ms: int,
    end_ms: int | None,
    live: bool,
    window_minutes: int,
    now_ms: int,
) -> Resolution:
    """``1m`` / ``5m`` as asked, or for ``auto`` (None) 1m up to a 6 h window span, else 5m.

    ``auto`` decides on the window of the 1m grid (whose pad is exactly ``window_minutes``).
    ``AUTO_RESOLUTION_SQL`` below is this rule for the hot read; change both together.
    """
    if requested is not None and requested != "auto":
        return Resolution(requested)
    window = TelemetryWindow.of(
        start_ms=start_ms,
        end_ms=end_ms,
        live=live,
        window_minutes=window_minutes,
        bucket_ms=Resolution.ONE_MINUTE.bucket_ms,
        now_ms=now_ms,
    )
    span_ms = window.end_ms - window.start_ms
    return Resolution.ONE_MINUTE if span_ms <= AUTO_1M_MAX_SPAN_MS else Resolution.FIVE_MINUTES


#: ``resolve_resolution``'s ``auto`` rule as the hot read's SQL (``read/reader.py``), which picks
#: the cache row in the same statement that reads the session ``s``. Its parameters: ``now_ms``,
#: ``pad_ms`` (the 1m grid's pad: ``window_minutes`` minutes) and ``auto_max_ms``
#: (``AUTO_1M_MAX_SPAN_MS``). The span is that of ``TelemetryWindow.of`` on the 1m grid.
AUTO_RESOLUTION_SQL = """CASE WHEN (CASE WHEN s.status = 'active' OR s.end_ms IS NULL
                       THEN CAST(:now_ms AS BIGINT) - s.start_ms + CAST(:pad_ms AS BIGINT)
                       ELSE s.end_ms - s.start_ms + 2 * CAST(:pad_ms AS BIGINT) END)
                 <= CAST(:auto_max_ms AS BIGINT)
            THEN '1m' ELSE '5m' END"""
