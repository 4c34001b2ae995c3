"""How a view is computed: incremental when the change log proves which buckets changed since its
stored partials (and the window kept its bounds), otherwise full, with the reason."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from operator import itemgetter

from vitalcast.sessions import changelog
from vitalcast.telemetry.compute.aggregate import scan_end_ms
from vitalcast.telemetry.compute.downsample import AHEAD, BUCKET, FIRST_MS, PHASE
from vitalcast.telemetry.compute.partials import Partials
from vitalcast.telemetry.compute.results import ComputePath
from vitalcast.telemetry.grid import TelemetryWindow

_BUCKET = itemgetter(1)


def _same_bounds(old: TelemetryWindow, new: TelemetryWindow) -> bool:
    """The rows of ``old`` stay valid for ``new``: same start, phases and width, and the same end
    unless both are live and the end only grew."""
    if (old.start_ms, old.session_start_ms, old.session_end_ms, old.window_minutes) != (
        new.start_ms,
        new.session_start_ms,
        new.session_end_ms,
        new.window_minutes,
    ):
        return False
    return new.end_ms >= old.end_ms if new.live else new.end_ms == old.end_ms


def _buckets(
    ranges: Iterable[tuple[int, int]], window: TelemetryWindow, bucket_ms: int
) -> set[int]:
    """The buckets of ``window``'s scan that intersect any of the ``[lo, hi)`` time ranges."""
    start, end = window.start_ms, scan_end_ms(window)
    buckets: set[int] = set()
    for lo, hi in ranges:
        lo, hi = max(lo, start), min(hi, end)
        if lo < hi:
            buckets.update(range((lo - start) // bucket_ms, (hi - 1 - start) // bucket_ms + 1))
    return buckets


def _ahead_reached(previous: Partials, end_ms: int) -> set[int]:
    """Buckets of AHEAD rows (samples at or after ``previous``'s end) that ``end_ms`` reached."""
    window = previous.window
    first = (window.end_ms - window.start_ms) // previous.bucket_ms
    buckets: set[int] = set()
    for metric in previous.metrics.values():
        rows = metric.rows
        for row in rows[bisect_left(rows, first, key=_BUCKET) :]:
            if row[PHASE] == AHEAD and row[FIRST_MS] < end_ms:
                buckets.add(row[BUCKET])
    return buckets


def plan(
    window: TelemetryWindow,
    bucket_ms: int,
    previous: Partials | None,
    entries: Sequence[changelog.LogEntry] | None,
) -> tuple[ComputePath, set[int]]:
    """How to compute, and for an incremental compute the buckets to aggregate again, from the
    view's stored ``previous`` partials and the change-log ``entries`` since their watermark
    (``changelog.chains``; None: the chain is broken)."""
    if previous is None:
        return ComputePath.FULL_NO_PARTIALS, set()
    if entries is None:
        return ComputePath.FULL_LOG_HOLE, set()
    if any(entry.whole for entry in entries):
        return ComputePath.FULL_WHOLE_SESSION, set()
    if previous.bucket_ms != bucket_ms or not _same_bounds(previous.window, window):
        return ComputePath.FULL_BOUNDS_MOVED, set()
    dirty: set[int] = set()
    for entry in entries:
        dirty |= _buckets(entry.ranges or (), window, bucket_ms)
    if window.live and window.end_ms > previous.window.end_ms:
        # Samples sent ahead of their time were aggregated as AHEAD rows; those the end reached
        # now belong to the window (no new change says so: they were logged long ago).
        dirty.update(_ahead_reached(previous, window.end_ms))
    return ComputePath.INCREMENTAL, dirty
