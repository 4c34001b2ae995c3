"""``SampleDeletionService``: the caller's raw samples of a time range removed for good.

A deletion is a change like an ingest's and takes the same path: under the user's row lock it
takes the next ``change_seq``, moves the watermark of every session whose widest window holds a
removed sample's time and logs those times in the session's change log
(``sessions.repository.bump_watermarks``), so each cached view recomputes incrementally, only
the buckets that lost samples, and exactly as a full recompute would. Sessions with no removed
time in their window keep their watermark, and so their ``ready`` views.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vitalcast import timerange
from vitalcast.catalog import ALL_CODES
from vitalcast.clock import Clock
from vitalcast.db.engine import Database
from vitalcast.errors import InvalidInput, Unauthenticated
from vitalcast.ingest import repository as ingest_repository
from vitalcast.lifecycle import repository
from vitalcast.observability import get_logger
from vitalcast.sessions import repository as session_repository
from vitalcast.sessions.changes import CachedView, ChangeListener
from vitalcast.sessions.models import Session

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class RangeDeletion:
    """The answer: rows removed, the user's change_seq after it, the sessions it staled."""

    deleted: int
    change_seq: int
    touched: list[Session]


def _check(from_ms: int, to_ms: int, metrics: Sequence[str] | None, *, now_ms: int) -> None:
    for field, moment in (("from", from_ms), ("to", to_ms)):
        out_of_range = timerange.check(field, moment, now_ms=now_ms)
        if out_of_range is not None:
            raise InvalidInput(out_of_range.message, code=out_of_range.code)
    if to_ms <= from_ms:
        raise InvalidInput("to must be after from.", code="EMPTY_RANGE")
    if metrics is not None:
        unknown = sorted(set(metrics) - set(ALL_CODES))
        if unknown:
            raise InvalidInput(f"Unknown metric code: {', '.join(unknown)}.", code="UNKNOWN_METRIC")


class SampleDeletionService:
    """Deletes ranges of a user's samples and tells ``listener`` which sessions went stale."""

    def __init__(self, db: Database, clock: Clock, listener: ChangeListener) -> None:
        self._db = db
        self._clock = clock
        self._listener = listener

    async def delete_range(
        self, user_id: str, *, from_ms: int, to_ms: int, metrics: Sequence[str] | None
    ) -> RangeDeletion:
        """Remove the samples starting in ``[from_ms, to_ms)``; validation fails before any
        write, and the removal and every watermark move commit together."""
        now_ms = self._clock.now_ms()
        _check(from_ms, to_ms, metrics, now_ms=now_ms)
        async with self._db.write() as conn:
            seq = await session_repository.lock_user(conn, user_id)
            if seq is None:
                raise Unauthenticated("The token's user does not exist.", code="TOKEN_INVALID")
            removed = await repository.delete_range(
                conn, user_id, from_ms=from_ms, to_ms=to_ms, metrics=metrics
            )
            touched: list[Session] = []
            views: list[CachedView] = []
            if removed.changed_times_ms:
                seq += 1
                touched, views = await ingest_repository.record_change(
                    conn, user_id, seq, removed.changed_times_ms, now_ms=now_ms
                )
        log.info(
            "samples_range_deleted",
            user_id=user_id,
            deleted=removed.rows,
            sessions_touched=len(touched),
            change_seq=seq,
        )
        await self._listener.sessions_changed(touched, views)
        return RangeDeletion(removed.rows, seq, touched)
