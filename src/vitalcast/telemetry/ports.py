"""What telemetry tells the rest of the process, and what it asks of it: the update a save
announces, the listener told of it, and which sessions have subscribers (the realtime server
implements both protocols); the post-save hooks (live alerts register one) and what they are
told of each save."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

from vitalcast.observability import get_logger
from vitalcast.sessions.models import Session
from vitalcast.telemetry.keys import TelemetryKey

log = get_logger(__name__)


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


@dataclass(frozen=True, slots=True)
class AlertEpisode:
    """One alert episode of a saved payload (a metric's ``insights.episodes`` item): a run of
    buckets crossing one catalog rule, ``[start_ms, end_ms)``, and its most extreme bucket
    value."""

    metric: str
    rule: str
    level: str
    start_ms: int
    end_ms: int
    extreme: float


@dataclass(frozen=True, slots=True)
class SavedView:
    """What a post-save hook is told: the session as the compute read it, the view, the saved
    payload's watermark and the alert episodes it holds (every phase; the hook filters), and
    the saved row itself: its packed payload, compute time, save history and the watermark of
    the save before (None: no delta leads here)."""

    session: Session
    key: TelemetryKey
    source_watermark: int
    live: bool
    episodes: tuple[AlertEpisode, ...]
    payload: bytes
    computed_at_ms: int
    history: bytes
    base_watermark: int | None


class PostSaveHook(Protocol):
    """Called once per successfully saved view, after the save's transaction committed. Must
    not raise into the compute path (``PostSaveHooks`` logs and swallows what does)."""

    async def __call__(self, saved: SavedView) -> None: ...


class PostSaveHooks:
    """The registry the compute pipeline calls after every save (single or batched compute).
    Hooks run one after the other in registration order; one failing does not stop the rest."""

    def __init__(self) -> None:
        self._hooks: list[PostSaveHook] = []

    def register(self, hook: PostSaveHook) -> None:
        self._hooks.append(hook)

    def __bool__(self) -> bool:
        return bool(self._hooks)

    async def run(self, saved: SavedView) -> None:
        for hook in self._hooks:
            try:
                await hook(saved)
            except Exception as exc:
                log.warning(
                    "post_save_hook_failed",
                    session_id=saved.key.session_id,
                    hook=type(hook).__name__,
                    error_type=type(exc).__name__,
                )
