"""The row classes of ``telemetry_cache``: what its reads return, named by use."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

from vitalcast.sessions.models import Session, SessionStatus
from vitalcast.telemetry.compute.results import StoredView
from vitalcast.telemetry.keys import CacheState, Resolution, TelemetryKey


class HotRow(NamedTuple):
    """The session (owned by the caller) and, when there is one, the matching cache row.

    A named tuple, not a frozen dataclass: every cached GET makes one from the driver's row,
    and a frozen dataclass's ``__init__`` (an ``object.__setattr__`` per field) cost five times
    as much as the tuple, a few per cent of the whole GET."""

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
    #: retention archived the session: its views are served as kept, never recomputed
    archived_at_ms: int | None = None

    @property
    def live(self) -> bool:
        return self.session_status == SessionStatus.ACTIVE


class LeaseRefusal(enum.StrEnum):
    """Why the lease was not taken."""

    #: another owner holds an unexpired lease
    BUSY = "busy"
    #: the last compute failed and ``next_attempt_ms`` is still ahead
    BACKING_OFF = "backing_off"
    #: the session does not exist (or is not the key's user's), so no row could be made
    NO_SESSION = "no_session"


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease we hold, with what the row held when we took it."""

    owner: str
    expires_ms: int
    status: CacheState
    has_payload: bool
    source_watermark: int | None
    #: when the payload we may replace was computed (its live edge, for a live session)
    computed_at_ms: int | None
    attempts: int


@dataclass(frozen=True, slots=True)
class Claim:
    """A lease we took with the claim, and everything the view's compute starts from, read by
    the same statement: the session (its watermark), what the row holds, and since when the row
    is stale (``stale_since_ms``, for the freshness lag of the save)."""

    key: TelemetryKey
    lease: Lease
    session: Session
    stored: StoredView | None
    stale_since_ms: int | None


@dataclass(frozen=True, slots=True)
class CacheRow:
    """A whole cache row (diagnostics and tests; the hot read lives in ``read/reader``)."""

    status: CacheState
    payload: bytes | None
    source_watermark: int | None
    computed_at_ms: int | None
    compute_ms: int | None
    raw_sample_count: int | None
    lease_owner: str | None
    lease_expires_ms: int | None
    attempts: int
    next_attempt_ms: int | None
    error_code: str | None
    stale_since_ms: int | None


@dataclass(frozen=True, slots=True)
class LiveView:
    """A live session and, when it has one, a cached view of it (what the live ticker needs)."""

    session_id: str
    user_id: str
    session_start_ms: int
    session_watermark: int
    #: None for a session without any cached view at this compute version
    window_minutes: int | None
    resolution: Resolution | None
    computed_at_ms: int | None
