"""What telemetry tells the rest of the process, and what it asks of it: the update a save
announces, the listener told of it, and which sessions have subscribers (the realtime server
implements both protocols)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class TelemetryUpdate:
    """What a save tells the listeners (``session.updated``): ids, watermark, state and times,
    never a health value. ``changed_*`` bound the buckets whose series changed since the view's
    previous save (an empty range when none did; None: unknown); ``base_watermark`` is that
    previous save's watermark (None: no previous save a delta could start from)."""

    session_id: str
    source_watermark: int
    state: str
    window_minutes: int
    resolution: str
    computed_at_ms: int
    live: bool
    changed_from_ms: int | None
    changed_to_ms: int | None
    base_watermark: int | None = None


class Subscriptions(Protocol):
    """Which sessions have subscribed clients on this process (the realtime server knows)."""

    def subscribed_sessions(self) -> Collection[str]: ...


class TelemetryListener(Protocol):
    """Told after every cache save (the WebSocketBroadcaster implements it).

    Implementations must not raise into the compute path.
    """

    async def session_updated(self, update: TelemetryUpdate) -> None: ...
