"""``ChangeListener``: what the ingest and session services tell after a change has committed.

Telemetry triggers (schedule recomputes) and the realtime broadcaster (push ``session.status``)
listen; the services call the listener themselves, so every caller of a service (HTTP route, demo,
CLI, importer) gets the same recomputes and pushes. A listener never fails the change it is told
about: it has committed already, and the next read or trigger repairs a missed effect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from vitalcast.observability import get_logger
from vitalcast.sessions.models import Session

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class CachedView:
    """A cached telemetry view of a changed session, read by the change's own transaction: told
    with the change, so the listener that recomputes views reads nothing more (a read of its
    own was a second transaction per ingest)."""

    session_id: str
    window_minutes: int
    resolution: str
    compute_version: int


class ChangeListener(Protocol):
    """Told after commit; implementations must not raise (``ChangeFanout`` guards them anyway)."""

    async def sessions_changed(
        self, sessions: Sequence[Session], views: Sequence[CachedView]
    ) -> None:
        """An ingest moved these sessions' watermarks (their telemetry is stale); ``views`` are
        their cached views."""
        ...

    async def session_status(self, session: Session) -> None:
        """``session`` started, ended or was cancelled."""
        ...


class ChangeFanout:
    """Tells every listener in order; one that raises is logged and the rest still hear."""

    def __init__(self, *listeners: ChangeListener) -> None:
        self._listeners = listeners

    async def sessions_changed(
        self, sessions: Sequence[Session], views: Sequence[CachedView]
    ) -> None:
        if not sessions:
            return
        for listener in self._listeners:
            try:
                await listener.sessions_changed(sessions, views)
            except Exception as exc:
                log.error(
                    "change_listener_failed", change="sessions", error_type=type(exc).__name__
                )

    async def session_status(self, session: Session) -> None:
        for listener in self._listeners:
            try:
                await listener.session_status(session)
            except Exception as exc:
                log.error(
                    "change_listener_failed",
                    change="status",
                    session_id=session.id,
                    error_type=type(exc).__name__,
                )


class DeletionListener(Protocol):
    """Told after a session's deletion committed; must not raise."""

    async def session_deleted(self, session: Session) -> None:
        """``session`` is gone: its subscribers are told and their subscriptions end."""
        ...


class _NoDeletionListener:
    async def session_deleted(self, session: Session) -> None:
        return None


#: nobody hears about deletions (a process with no subscribers to tell)
NO_DELETION_LISTENER: DeletionListener = _NoDeletionListener()

#: a listener that hears nothing: for processes with no telemetry to refresh and no one to push to
NO_LISTENER = ChangeFanout()
