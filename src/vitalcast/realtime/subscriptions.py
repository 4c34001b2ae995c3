"""``SubscriptionRegistry``: which sessions have subscribed sockets on this process.

The Socket.IO server writes it (subscribe, unsubscribe, disconnect); telemetry reads it through
the ``telemetry.models.Subscriptions`` protocol: the live ticker recomputes the views of
subscribed live sessions at each bucket boundary, and the coordinator keeps retrying a failed
compute while its session has a subscriber. It knows nothing of other nodes: each server ticks
for its own subscribers, and a second server's tick of a view that is already current costs no
compute.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable


class SubscriptionRegistry:
    """Subscribed sockets per session on this process (only sessions with at least one)."""

    def __init__(self) -> None:
        self._sockets: Counter[str] = Counter()

    def subscribed_sessions(self) -> Collection[str]:
        """The sessions with at least one subscribed socket here (a live view: copy to keep)."""
        return self._sockets.keys()

    def added(self, session_id: str) -> None:
        """One more socket subscribed to ``session_id``."""
        self._sockets[session_id] += 1

    def removed(self, session_ids: Iterable[str]) -> None:
        """One socket fewer for each of ``session_ids`` (unsubscribed or disconnected)."""
        for session_id in session_ids:
            self._sockets[session_id] -= 1
            if self._sockets[session_id] <= 0:
                del self._sockets[session_id]
