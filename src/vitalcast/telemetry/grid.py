"""The window grid: a session's buckets are anchored at its start, its window is padded to whole
buckets, and a live payload is current while "now" stays in the bucket it was computed in. Plain
integer maths, below everything else in telemetry."""

from __future__ import annotations

from dataclasses import dataclass

from vitalcast.clock import MINUTE_MS


def grid_pad_ms(window_minutes: int, bucket_ms: int) -> int:
    """The window's padding: ``window_minutes`` rounded *up* to whole buckets, so the session
    start is a bucket edge whatever the window and resolution."""
    return -(-window_minutes * MINUTE_MS // bucket_ms) * bucket_ms


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
