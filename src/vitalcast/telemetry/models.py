"""Telemetry keys, states, the window grid and the values shared by the telemetry modules."""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Protocol

from vitalcast.sessions.models import WIDEST_PAD_MS, Session, SessionStatus

# Bump when the payload's meaning changes: old cache rows are then simply never read again.
# 2: the grid anchored at the session start, live windows fresh per bucket, coverage as time.
# 3: every metric carries its insights.
# 4: sums and means exact over values rounded to micro-units (order-independent, so that an
# incremental compute is byte-identical to a full one).
COMPUTE_VERSION = 4
SCHEMA_VERSION = 3
MIN_WINDOW_MINUTES = 15
MAX_WINDOW_MINUTES = WIDEST_PAD_MS // 60_000
# `auto` picks 1m up to this window span, 5m beyond it.
AUTO_1M_MAX_SPAN_MS = 6 * 3_600_000


class Resolution(enum.StrEnum):
    """Bucket width of a payload."""

    #: 60 000 ms buckets
    ONE_MINUTE = "1m"
    #: 300 000 ms buckets
    FIVE_MINUTES = "5m"

    @property
    def bucket_ms(self) -> int:
        return 60_000 if self is Resolution.ONE_MINUTE else 300_000


class CacheState(enum.StrEnum):
    """What a telemetry request answers (DESIGN.md, request states)."""

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


@dataclass(frozen=True, slots=True)
class TelemetryUpdate:
    """What a save tells the listeners (``session.updated``): ids, watermark, state and times,
    never a health value. ``changed_*`` bound the buckets whose series changed since the view's
    previous save (an empty range when none did; None: unknown); ``base_watermark`` is that
    previous save's watermark (None: no previous save a delta could start from)."""

    session_id: str
    source_watermark: int
    state: str
    window_minutes: int
    resolution: str
    computed_at_ms: int
    live: bool
    changed_from_ms: int | None
    changed_to_ms: int | None
    base_watermark: int | None = None


class Subscriptions(Protocol):
    """Which sessions have subscribed clients on this process (the realtime server knows)."""

    def subscribed_sessions(self) -> Collection[str]: ...


class TelemetryListener(Protocol):
    """Told after every cache save (the WebSocketBroadcaster implements it).

    Implementations must not raise into the compute path.
    """

    async def session_updated(self, update: TelemetryUpdate) -> None: ...


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


def grid_pad_ms(window_minutes: int, bucket_ms: int) -> int:
    """The window's padding: ``window_minutes`` rounded *up* to whole buckets, so the session
    start is a bucket edge whatever the window and resolution."""
    return -(-window_minutes * 60_000 // bucket_ms) * bucket_ms


def live_edge_ms(session_start_ms: int, bucket_ms: int, at_ms: int) -> int:
    """Start of the grid bucket that holds ``at_ms`` (the grid is anchored at the session start):
    the live edge of a payload computed at ``at_ms``."""
    return at_ms - (at_ms - session_start_ms) % bucket_ms


def next_boundary_ms(session_start_ms: int, bucket_ms: int, after_ms: int) -> int:
    """The first bucket boundary of the session's grid strictly after ``after_ms``."""
    return live_edge_ms(session_start_ms, bucket_ms, after_ms) + bucket_ms


def live_edge_moved(
    *, session_start_ms: int, bucket_ms: int, computed_at_ms: int | None, now_ms: int
) -> bool:
    """True when a live payload computed at ``computed_at_ms`` is no longer on the current live
    edge: time moved it out of its bucket, so the window it shows ends too early."""
    if computed_at_ms is None:
        return False
    return live_edge_ms(session_start_ms, bucket_ms, computed_at_ms) != live_edge_ms(
        session_start_ms, bucket_ms, now_ms
    )


def payload_current(
    *,
    payload_watermark: int | None,
    session_watermark: int,
    live: bool,
    session_start_ms: int,
    bucket_ms: int,
    computed_at_ms: int | None,
    now_ms: int,
) -> bool:
    """A cached payload answers for its session now: it was computed at the session's current
    watermark and, while the session is live, on the current live edge."""
    if payload_watermark != session_watermark:
        return False
    return not (
        live
        and live_edge_moved(
            session_start_ms=session_start_ms,
            bucket_ms=bucket_ms,
            computed_at_ms=computed_at_ms,
            now_ms=now_ms,
        )
    )


@dataclass(frozen=True, slots=True)
class TelemetryWindow:
    """The half-open time range ``[start_ms, end_ms)`` of one payload and the session inside it."""

    start_ms: int
    end_ms: int
    session_start_ms: int
    #: None while the session is live (its window ends at "now")
    session_end_ms: int | None
    window_minutes: int

    @property
    def live(self) -> bool:
        return self.session_end_ms is None

    @classmethod
    def of(
        cls,
        *,
        start_ms: int,
        end_ms: int | None,
        live: bool,
        window_minutes: int,
        bucket_ms: int,
        now_ms: int,
    ) -> TelemetryWindow:
        """The window of a session on the grid of ``bucket_ms``: ``[start − P, end + P)``, or
        ``[start − P, now)`` while it is live, with the pad ``P`` of ``grid_pad_ms``."""
        pad_ms = grid_pad_ms(window_minutes, bucket_ms)
        if live or end_ms is None:
            return cls(start_ms - pad_ms, now_ms, start_ms, None, window_minutes)
        return cls(start_ms - pad_ms, end_ms + pad_ms, start_ms, end_ms, window_minutes)


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

    ``auto`` decides on the window of the 1m grid (whose pad is exactly ``window_minutes``). The
    hot read in ``telemetry/reader.py`` repeats this rule in SQL; keep them in step.
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


class ComputePath(enum.StrEnum):
    """How a compute got its bucket rows (``vitalcast_compute_paths_total{path}``)."""

    #: stored partials plus a re-aggregation of the dirty and newly reached buckets only
    INCREMENTAL = "incremental"
    #: full: the view had no usable partials (first compute, failed or older row)
    FULL_NO_PARTIALS = "full_no_partials"
    #: full: the window or its phases moved other than a live end growing
    FULL_BOUNDS_MOVED = "full_bounds_moved"
    #: full: the change log could not prove it holds every change since the partials
    FULL_LOG_HOLE = "full_log_hole"
    #: full: the log says the whole session changed (ended, cancelled, edited)
    FULL_WHOLE_SESSION = "full_whole_session"


@dataclass(frozen=True, slots=True)
class StoredView:
    """What a view's cache row held when its lease was taken: the base of the next compute."""

    source_watermark: int | None
    partials: bytes | None
    history: bytes | None


@dataclass(frozen=True, slots=True)
class ComputedTelemetry:
    """A finished compute, ready to be saved under the lease."""

    state: CacheState
    blob: bytes
    source_watermark: int
    computed_at_ms: int
    raw_sample_count: int
    window: TelemetryWindow
    #: the bucket rows behind ``blob`` (telemetry/partials.py)
    partials: bytes
    #: the view's saves including this one (telemetry/history.py)
    history: bytes
    path: ComputePath
    #: [from, to) of the buckets whose series changed since the previous save (empty: none)
    changed_from_ms: int
    changed_to_ms: int
    #: the previous save's watermark; None when there is none to build a delta from
    base_watermark: int | None
    #: what to do once this result is saved (remember it for the view's next compute)
    on_saved: Callable[[], None] | None = None


@dataclass(frozen=True, slots=True)
class HotRow:
    """The session (owned by the caller) and, when there is one, the matching cache row."""

    session_status: str
    session_start_ms: int
    session_end_ms: int | None
    session_watermark: int
    #: None when no cache row exists for the key
    resolution: str | None
    status: str | None
    source_watermark: int | None
    #: when the cached payload was computed; a live payload's live edge is its bucket
    computed_at_ms: int | None
    error_code: str | None
    next_attempt_ms: int | None
    #: None when there is none, or when it was not asked for
    payload: bytes | None
    #: the payload's save history (``history``); None unless asked for (or none is kept)
    history: bytes | None = None

    @property
    def live(self) -> bool:
        return self.session_status == SessionStatus.ACTIVE
