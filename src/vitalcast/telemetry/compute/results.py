"""What a compute starts from (``StoredView``) and what it hands to the save (``ComputedTelemetry``),
with the path it took."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from vitalcast.sessions import changelog
from vitalcast.telemetry.compute.downsample import Row
from vitalcast.telemetry.grid import TelemetryWindow
from vitalcast.telemetry.keys import CacheState
from vitalcast.telemetry.ports import AlertEpisode


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
    #: the session's change-log entries after ``source_watermark`` up to its watermark, read
    #: with the claim (PostgreSQL), as ``changelog.walk`` takes them; None: the read asks for them
    log: changelog.Entries | None = None
    #: the tail this process guessed for the view and its GROUP BY rows, read with the claim
    #: (PostgreSQL, ``incremental.guess_tails``); None: no guess
    tail: TailRows | None = None


@dataclass(frozen=True, slots=True)
class Tail:
    """What a live view's incremental compute at a given time will most likely aggregate,
    guessed before its claim (``incremental.guess_tails``): the window it will have and the
    bucket-aligned time range ``[lo, hi)`` from a little before its last live edge on."""

    window: TelemetryWindow
    bucket_ms: int
    lo: int
    hi: int


@dataclass(frozen=True, slots=True)
class TailRows:
    """A guessed ``tail`` and the GROUP BY rows of its range (``downsample.Row`` tuples)."""

    tail: Tail
    rows: tuple[Row, ...]


@dataclass(frozen=True, slots=True)
class ComputedTelemetry:
    """A finished compute, ready to be saved under the lease."""

    state: CacheState
    blob: bytes
    source_watermark: int
    computed_at_ms: int
    raw_sample_count: int
    window: TelemetryWindow
    #: the bucket rows behind ``blob`` (telemetry/compute/partials.py)
    partials: bytes
    #: the view's saves including this one (telemetry/compute/history.py)
    history: bytes
    path: ComputePath
    #: [from, to) of the buckets whose series changed since the previous save (empty: none)
    changed_from_ms: int
    changed_to_ms: int
    #: the previous save's watermark; None when there is none to build a delta from
    base_watermark: int | None
    #: what to do once this result is saved (remember it for the view's next compute)
    on_saved: Callable[[], None] | None = None
    #: the alert episodes of the payload, every metric's (for the post-save hooks)
    episodes: tuple[AlertEpisode, ...] = ()
