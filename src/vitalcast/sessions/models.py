"""The session as the domain sees it."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from vitalcast.clock import MINUTE_MS

# A session's widest telemetry window reaches this far around it (window_minutes ≤ 180).
WIDEST_PAD_MS = 180 * MINUTE_MS


class SessionStatus(enum.StrEnum):
    """Lifecycle of a consumption session."""

    #: running now; its telemetry window ends at "now" (live)
    ACTIVE = "active"
    #: ended normally; end_ms is set and telemetry is historical
    COMPLETED = "completed"
    #: abandoned; end_ms is the cancel time, telemetry stays available
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    user_id: str
    client_session_id: str | None
    status: SessionStatus
    start_ms: int
    end_ms: int | None
    notes: str | None
    source_watermark: int
    #: when retention archived it (its raw samples expired); None: not archived
    archived_at_ms: int | None = None

    @property
    def live(self) -> bool:
        return self.status is SessionStatus.ACTIVE

    def widest_window(self, now_ms: int) -> tuple[int, int]:
        """[lo, hi) of every window any telemetry request may ask for, now or later."""
        end = self.end_ms if self.end_ms is not None else now_ms
        return self.start_ms - WIDEST_PAD_MS, end + WIDEST_PAD_MS

    @classmethod
    def from_row(cls, row: Any) -> Session:  # Any: any row carrying the session columns by name
        return cls(
            id=row.id,
            user_id=row.user_id,
            client_session_id=row.client_session_id,
            status=SessionStatus(row.status),
            start_ms=row.start_ms,
            end_ms=row.end_ms,
            notes=row.notes,
            source_watermark=row.source_watermark,
            archived_at_ms=getattr(row, "archived_at_ms", None),
        )
