"""When a compute that could not run may run again: the coordinator's ``RetryDelay``, read from
the key's cache row (its failure backoff, or the lease of another holder)."""

from __future__ import annotations

from vitalcast.clock import Clock
from vitalcast.db.engine import Database
from vitalcast.telemetry.cache import SessionTelemetryCacheRepository
from vitalcast.telemetry.models import TelemetryKey

#: a live holder usually finishes long before its lease runs out (and its save releases it):
#: look again at least this often instead of waiting out the whole lease (milliseconds)
LEASE_POLL_MS = 1_000


class RetryDelays:
    """``coordinator.RetryDelay`` over the cache rows."""

    def __init__(self, db: Database, clock: Clock, cache: SessionTelemetryCacheRepository) -> None:
        self._db = db
        self._clock = clock
        self._cache = cache

    async def __call__(self, key: TelemetryKey) -> int | None:
        """Milliseconds until the row's backoff has elapsed and no other holder's lease blocks
        it (0 when nothing does), or None when the row is gone."""
        async with self._db.read() as conn:
            row = await self._cache.get(conn, key)
        if row is None:
            return None
        now = self._clock.now_ms()
        backoff = (row.next_attempt_ms or now) - now
        lease = 0
        if row.lease_owner is not None and row.lease_expires_ms is not None:
            lease = min(row.lease_expires_ms - now, LEASE_POLL_MS)
        return max(backoff, lease, 0)
