"""The objects one process wires together, built once by ``create_app`` (or a worker) and passed
down; nothing here is a module-level singleton."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vitalcast.auth import Authenticator
from vitalcast.clock import Clock
from vitalcast.db.engine import Database
from vitalcast.ingest.service import IngestService
from vitalcast.observability import Metrics, get_logger
from vitalcast.sessions.models import Session
from vitalcast.sessions.service import SessionService
from vitalcast.settings import Settings

log = get_logger(__name__)


@dataclass
class Container:
    """Collaborators of one process. Optional parts are attached by ``create_app`` as they start."""

    settings: Settings
    db: Database
    clock: Clock
    metrics: Metrics
    secret: str
    authenticator: Authenticator
    sessions: SessionService
    ingest: IngestService
    # Attached when the telemetry, realtime and queue parts start.
    telemetry: Any = None
    broadcaster: Any = None
    queue: Any = None
    extras: dict[str, Any] = field(default_factory=dict)

    async def after_ingest(self, touched: Sequence[Session]) -> None:
        """Sessions whose widest window an ingest changed: schedule their recompute."""
        if self.telemetry is not None and touched:
            await self.telemetry.on_sessions_changed(touched)

    async def after_session_change(self, session: Session) -> None:
        """A session started, ended or was cancelled: precompute and tell its subscribers."""
        if self.telemetry is not None:
            await self.telemetry.on_session_status(session)
        if self.broadcaster is not None:
            await self.broadcaster.session_status(session)
