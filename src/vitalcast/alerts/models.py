"""An announced alert and the ``session.alert`` event that carries it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from vitalcast.clock import MINUTE_MS
from vitalcast.json_types import JsonObject

EVENT_VERSION = 1
SESSION_ALERT = "session.alert"
#: an episode is known by the slot of its start on this grid (anchored at the session start):
#: the coarsest resolution's bucket, so every resolution's view of one crossing shares it
SLOT_MS = 5 * MINUTE_MS


@dataclass(frozen=True, slots=True)
class Alert:
    """One announced episode and rule of a session. ``source_watermark`` is the watermark of
    the save that announced it (what a reconnecting client resumes from)."""

    session_id: str
    user_id: str
    metric: str
    rule: str
    level: str
    slot_ms: int
    start_ms: int
    extreme: float
    source_watermark: int
    announced_at_ms: int

    def event(self) -> JsonObject:
        """The ``session.alert`` envelope: the rule and the episode's extreme are the only
        health facts it carries."""
        return {
            "v": EVENT_VERSION,
            "type": SESSION_ALERT,
            "session_id": self.session_id,
            "metric": self.metric,
            "rule": self.rule,
            "level": self.level,
            "start_ms": self.start_ms,
            "extreme": self.extreme,
            "source_watermark": self.source_watermark,
        }


class AlertListener(Protocol):
    """Told of every alert this process announced (the broadcaster implements it). Must not
    raise."""

    async def session_alert(self, alert: Alert) -> None: ...
