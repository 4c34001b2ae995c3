"""``Forgetting``: what a process keeps in memory of a deleted session or an erased user goes at
once, not at eviction.

Each process keeps health data of recent views: the hot read's kept payloads and built deltas
(``SessionTelemetryService``) and the compute's decoded last saves (``ViewMemo``). On a quiet
process nothing would evict them for days, and a health product must not hold an erased person's
data that long. Deletion and erasure already reach every process as revocations (a ``SESSION``
one after ``DELETE /api/v1/sessions/{id}``, a ``USER`` one for an erasure, in process when
embedded and over Redis when scaled out, see ``revocations``); ``wiring`` subscribes this to
them, so every process drops the session's or the user's entries as the revocation arrives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from vitalcast.observability import get_logger
from vitalcast.revocations import Revocation, RevocationKind

log = get_logger(__name__)


class Forgets(Protocol):
    """Something that keeps entries of sessions and can drop those of a user or a session."""

    def forget(self, *, user_id: str | None = None, session_id: str | None = None) -> int: ...


class Forgetting:
    """A revocation handler: drops the revoked user's or deleted session's entries from every
    holder of this process (a share's revocation names no kept data)."""

    def __init__(self, holders: Sequence[Forgets]) -> None:
        self._holders = tuple(holders)

    async def __call__(self, revocation: Revocation) -> None:
        if revocation.kind is RevocationKind.USER:
            dropped = sum(holder.forget(user_id=revocation.id) for holder in self._holders)
        elif revocation.kind is RevocationKind.SESSION:
            dropped = sum(holder.forget(session_id=revocation.id) for holder in self._holders)
        else:
            return
        if dropped:
            # counts only: the id names a person or a session
            log.info("kept_entries_forgotten", kind=revocation.kind.value, entries=dropped)
