"""``SubscribeSupport``: what the realtime server's subscribe asks of telemetry — the state a
subscriber starts from, and the update it missed — answered from the cache, never scheduling."""

from __future__ import annotations

from vitalcast.clock import Clock
from vitalcast.db.engine import Database
from vitalcast.errors import NotFound
from vitalcast.observability import get_logger
from vitalcast.sessions.models import Session
from vitalcast.telemetry.keys import CacheState, TelemetryKey
from vitalcast.telemetry.ports import TelemetryUpdate
from vitalcast.telemetry.read.answer import decide, holds_payload
from vitalcast.telemetry.read.reader import CacheReader
from vitalcast.telemetry.store import queries

log = get_logger(__name__)


class SubscribeSupport:
    """The default view of a session, as a subscribe needs it (the reader is the GET's own)."""

    def __init__(
        self, db: Database, clock: Clock, reader: CacheReader, *, default_window_minutes: int
    ) -> None:
        self._db = db
        self._clock = clock
        self._reader = reader
        self.default_window_minutes = default_window_minutes

    async def subscription_state(self, session: Session) -> tuple[str, int | None]:
        """(state the default-window GET would answer, watermark of the cached payload or None);
        schedules nothing."""
        now = self._clock.now_ms()
        try:
            row = await self._reader.read(
                user_id=session.user_id,
                session_id=session.id,
                window_minutes=self.default_window_minutes,
                resolution=None,
                now_ms=now,
                with_payload=False,
            )
        except Exception as exc:
            log.warning(
                "telemetry_read_failed", session_id=session.id, error_type=type(exc).__name__
            )
            return CacheState.FAILED.value, None
        if row is None:
            raise NotFound("Session not found.", code="SESSION_NOT_FOUND")
        decision = decide(row, now)
        return decision.state.value, row.source_watermark if holds_payload(row) else None

    async def catch_up(self, session: Session, watermark: int) -> TelemetryUpdate | None:
        """The ``session.updated`` a subscriber that missed the default view's save at
        ``watermark`` should get now; None when that payload was replaced meanwhile (the newer
        save's own event reaches the room). What changed since the client's watermark is
        unknown, so ``changed`` is null-bounded."""
        key = TelemetryKey.default_for(
            session, window_minutes=self.default_window_minutes, now_ms=self._clock.now_ms()
        )
        row = await self._db.unit(lambda conn: queries.row_of(conn, key))
        if (
            row is None
            or not row.status.has_payload
            or row.source_watermark != watermark
            or row.computed_at_ms is None
        ):
            return None
        return TelemetryUpdate(
            session_id=session.id,
            source_watermark=watermark,
            state=row.status.value,
            window_minutes=key.window_minutes,
            resolution=key.resolution.value,
            computed_at_ms=row.computed_at_ms,
            live=session.live,
            changed_from_ms=None,
            changed_to_ms=None,
        )
