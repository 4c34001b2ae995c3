"""``AlertService``: the post-save hook that announces alert episodes.

A save of a live view holding a during-phase episode that no earlier save of the session
announced writes it to ``session_alerts`` (insert-if-absent on session, metric, rule and the
episode's start slot), together with one webhook delivery per endpoint of the owner that asked
for ``session.alert``, in one transaction; only the writer of the row then pushes
``session.alert``. So two servers, two workers, recomputes, restarts and views of several
resolutions announce an episode once: whoever inserts first.

An episode is the one announced before when its slots (``SLOT_MS`` grid from the session start,
from its start to its end) hold an announced slot of its metric and rule: an episode that grew,
or that a coarser view sees starting a few minutes earlier, is the same episode. A crossing of
the same rule again within the same five minutes therefore stays part of the episode announced
before (a run that flaps around a threshold is announced once). An escalation is a crossing of
a stricter rule (elevated → critical), so it is a new alert. Announcements of one session are
serialised by a lock, so two concurrent saves cannot both miss each other's slot.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence

import orjson

from vitalcast.alerts import repository
from vitalcast.alerts.models import SESSION_ALERT, SLOT_MS, Alert, AlertListener
from vitalcast.clock import Clock, iso_ms
from vitalcast.db.engine import Database
from vitalcast.observability import Metrics, get_logger
from vitalcast.telemetry.ports import AlertEpisode, SavedView
from vitalcast.webhooks import repository as webhooks

log = get_logger(__name__)

#: sessions whose announced slots this process remembers (a save whose episodes are all known
#: costs no statement)
KNOWN_SESSIONS_MAX = 10_000

Slots = dict[tuple[str, str], set[int]]


def slot_of(at_ms: int, session_start_ms: int) -> int:
    return session_start_ms + (at_ms - session_start_ms) // SLOT_MS * SLOT_MS


def covered(slots: Slots, episode: AlertEpisode, session_start_ms: int) -> bool:
    """True when an announced slot of the episode's metric and rule lies within it."""
    announced = slots.get((episode.metric, episode.rule))
    if not announced:
        return False
    first = slot_of(episode.start_ms, session_start_ms)
    last = slot_of(max(episode.end_ms - 1, episode.start_ms), session_start_ms)
    return any(first <= slot <= last for slot in announced)


def webhook_body(alert: Alert, now_ms: int) -> bytes:
    """The Standard Webhooks payload shape: ``{type, timestamp, data}``."""
    return orjson.dumps({"type": SESSION_ALERT, "timestamp": iso_ms(now_ms), "data": alert.event()})


class AlertService:
    """Announces alert episodes; registered as a post-save hook. ``deliveries_committed`` is
    told the ids of the webhook deliveries each announcement committed (the dispatcher: it
    sends them now when embedded, queues their jobs when scaled out)."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        metrics: Metrics,
        listener: AlertListener,
        *,
        deliveries_committed: Callable[[Sequence[str]], Awaitable[None]] | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._metrics = metrics
        self._listener = listener
        self._deliveries_committed = deliveries_committed
        self._known: OrderedDict[str, Slots] = OrderedDict()

    async def __call__(self, saved: SavedView) -> None:
        session = saved.session
        if not saved.live or not saved.episodes:
            return
        during = [
            e
            for e in saved.episodes
            if e.start_ms >= session.start_ms
            and (session.end_ms is None or e.start_ms < session.end_ms)
        ]
        known = self._known.get(session.id, {})
        if not [e for e in during if not covered(known, e, session.start_ms)]:
            return
        now_ms = self._clock.now_ms()
        deliveries: list[str] = []
        async with self._db.write() as conn:
            await repository.lock_session(conn, session.id)
            slots = await repository.announced_slots(conn, session.id)
            candidates = self._candidates(saved, during, slots, now_ms)
            written = await repository.insert_if_absent(conn, candidates)
            for alert in written:
                deliveries += await webhooks.enqueue(
                    conn,
                    user_id=alert.user_id,
                    event_type=SESSION_ALERT,
                    body=webhook_body(alert, now_ms),
                    now_ms=now_ms,
                )
        for alert in written:
            slots.setdefault((alert.metric, alert.rule), set()).add(alert.slot_ms)
        self._remember(session.id, slots)
        for alert in written:
            self._metrics.alerts_emitted.labels(level=alert.level).inc()
            log.info(
                "alert_announced",
                session_id=alert.session_id,
                metric=alert.metric,
                rule=alert.rule,
                level=alert.level,
                source_watermark=alert.source_watermark,
            )
            await self._listener.session_alert(alert)
        if deliveries and self._deliveries_committed is not None:
            await self._deliveries_committed(deliveries)

    @staticmethod
    def _candidates(
        saved: SavedView, during: Iterable[AlertEpisode], slots: Slots, now_ms: int
    ) -> list[Alert]:
        session = saved.session
        candidates: dict[tuple[str, str, int], Alert] = {}
        for episode in during:
            if covered(slots, episode, session.start_ms):
                continue
            slot = slot_of(episode.start_ms, session.start_ms)
            candidates.setdefault(
                (episode.metric, episode.rule, slot),
                Alert(
                    session_id=session.id,
                    user_id=session.user_id,
                    metric=episode.metric,
                    rule=episode.rule,
                    level=episode.level,
                    slot_ms=slot,
                    start_ms=episode.start_ms,
                    extreme=episode.extreme,
                    source_watermark=saved.source_watermark,
                    announced_at_ms=now_ms,
                ),
            )
        return list(candidates.values())

    def _remember(self, session_id: str, slots: Slots) -> None:
        self._known[session_id] = slots
        self._known.move_to_end(session_id)
        while len(self._known) > KNOWN_SESSIONS_MAX:
            self._known.popitem(last=False)

    async def since(self, session_id: str, watermark: int) -> list[Alert]:
        """The session's alerts announced after ``watermark`` (what a reconnecting client
        missed)."""
        async with self._db.read() as conn:
            return await repository.since(conn, session_id, watermark)
