"""``SessionTelemetryService``: answers telemetry requests (the seed's one entry point for
reads; computing lives in ``run/computer``, triggers in ``run/triggers``).

``get`` answers a request from the cache with one hot read (ownership, session watermark and
cache row together) and decides the state of docs/design.md "Request states"; a miss or a stale read
schedules a compute and never waits for it. A fresh answer to a client that says which payload it
holds (``since_watermark``) is a delta when the view's save history can express one.
The payload of an answer is the process's kept copy when the hot read says it is still the
stored one (``kept.KeptPayloads``), so its bytes are read once per save, not once per GET.
The realtime server's subscribe is served by ``subscribe.SubscribeSupport``.
"""

from __future__ import annotations

from collections.abc import Sequence

from vitalcast.clock import Clock
from vitalcast.db.engine import Database
from vitalcast.errors import Gone, InvalidInput, NotFound
from vitalcast.observability import Metrics, get_logger
from vitalcast.telemetry.compute import deltas, history
from vitalcast.telemetry.compute.payload import PackedPayload, unpack
from vitalcast.telemetry.keys import (
    COMPUTE_VERSION,
    CacheState,
    Resolution,
    TelemetryKey,
    check_window_minutes,
    resolve_resolution,
)
from vitalcast.telemetry.ports import SavedView
from vitalcast.telemetry.read.answer import (
    DATABASE_UNAVAILABLE,
    RETRY_READ_FAILED_S,
    RETRY_SHED_S,
    TelemetryAnswer,
    decide,
    etag_matches,
    holds_payload,
    make_etag,
    select_metrics,
)
from vitalcast.telemetry.read.delta_cache import DeltaCache
from vitalcast.telemetry.read.kept import KeptPayloads, ViewOf
from vitalcast.telemetry.read.reader import CacheReader
from vitalcast.telemetry.scheduling import Scheduler, schedule
from vitalcast.telemetry.store.rows import HotRow

log = get_logger(__name__)

_RESOLUTIONS = ("1m", "5m", "auto")
#: answers a client holding a payload gets as a delta: a stale answer carries the last payload,
#: so a dashboard that drew one keeps asking for deltas while the recompute runs
_DELTA_STATES = (CacheState.READY, CacheState.STALE)


class SessionTelemetryService:
    """Answers telemetry requests from the cache and schedules the computes they call for."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        metrics: Metrics,
        scheduler: Scheduler,
        reader: CacheReader,
        *,
        default_window_minutes: int,
    ) -> None:
        self._db = db
        self._clock = clock
        self._scheduler = scheduler
        self._reader = reader
        self.default_window_minutes = default_window_minutes
        self._deltas = DeltaCache()
        self._kept = KeptPayloads()
        self._responses = {
            state: metrics.telemetry_responses.labels(state.value) for state in CacheState
        }

    async def close(self) -> None:
        await self._reader.close()

    def forget(self, *, user_id: str | None = None, session_id: str | None = None) -> int:
        """Drop what this process keeps of ``user_id``'s sessions or of session ``session_id``
        (kept payloads, built deltas) when it is deleted or its user erased; how many entries."""
        return self._kept.forget(user_id=user_id, session_id=session_id) + self._deltas.forget(
            user_id=user_id, session_id=session_id
        )

    def entries_of(self, *, user_id: str | None = None, session_id: str | None = None) -> int:
        """How many kept payloads and built deltas of ``user_id`` or ``session_id`` remain."""
        return self._kept.entries_of(user_id=user_id, session_id=session_id) + (
            self._deltas.entries_of(user_id=user_id, session_id=session_id)
        )

    # -- the request path ---------------------------------------------------------------------

    async def get(
        self,
        user_id: str,
        session_id: str,
        *,
        window_minutes: int,
        resolution: str,
        metrics: Sequence[str] | None,
        if_none_match: str | None = None,
        since_watermark: int | None = None,
    ) -> TelemetryAnswer:
        """The answer for one GET; raises NotFound for a session that is not the caller's and
        InvalidInput for a bad window, resolution or metric code. With ``since_watermark`` (the
        watermark of the payload the client holds) a ready answer is a delta when it can be."""
        codes = select_metrics(metrics)
        check_window_minutes(window_minutes)
        if resolution not in _RESOLUTIONS:
            raise InvalidInput("resolution must be 1m, 5m or auto.", code="INVALID_RESOLUTION")
        requested = None if resolution == "auto" else resolution
        now = self._clock.now_ms()
        # A client that holds a payload gets a delta: the session's other clients usually had it
        # built already (the first read brings no blob), else it is built from the payload and
        # its history, read together. One that only revalidates (ETag) gets no body at all.
        # A payload this process keeps is not read again (the read names it), for a delta to
        # build either: that read brings the history alone.
        view: ViewOf = (session_id, window_minutes, requested)
        with_history = since_watermark is not None and not self._deltas.may_have(
            session_id, window_minutes, since_watermark, codes
        )
        with_payload = with_history or (since_watermark is None and not if_none_match)
        payload: PackedPayload | None = None
        delta: bytes | None = None
        while True:
            try:
                row = await self._reader.read(
                    user_id=user_id,
                    session_id=session_id,
                    window_minutes=window_minutes,
                    resolution=requested,
                    now_ms=now,
                    with_payload=with_payload,
                    with_history=with_history,
                    kept=self._kept.held(view) if with_payload else None,
                )
            except Exception as exc:
                log.warning(
                    "telemetry_read_failed", session_id=session_id, error_type=type(exc).__name__
                )
                return self._count(
                    TelemetryAnswer(
                        CacheState.FAILED,
                        codes,
                        retry_after_s=RETRY_READ_FAILED_S,
                        error_code=DATABASE_UNAVAILABLE,
                    )
                )
            if row is None:
                raise NotFound("Session not found.", code="SESSION_NOT_FOUND")
            if row.archived_at_ms is not None:
                key = self._key_of(row, user_id, session_id, window_minutes, requested, now)
                archived = self._archived(view, row, codes, if_none_match, key)
                if archived is not None:
                    return self._count(archived)
                with_payload = True
                continue
            decision = decide(row, now)
            kept_delta = None
            if since_watermark is not None and not with_history:
                if decision.state in _DELTA_STATES:
                    kept_delta = self._deltas.get(
                        user_id, session_id, window_minutes, row, since_watermark, codes
                    )
                    if kept_delta is None:
                        # no kept delta leads to this save: read its history and build one
                        with_payload = with_history = True
                        continue
                ready = None if kept_delta is None else kept_delta.ready
                if ready is not None and decision.state is CacheState.READY:
                    # the delta every client of this update asks, answered as it was
                    return self._count(self._revalidated(ready, if_none_match))
            key = self._key_of(row, user_id, session_id, window_minutes, requested, now)
            etag = None
            if decision.state.has_payload:
                live_at = row.computed_at_ms if row.live else None
                etag = make_etag(key, row.source_watermark or 0, codes, live_at_ms=live_at)
                if etag_matches(if_none_match, etag):
                    return self._count(
                        TelemetryAnswer(decision.state, codes, etag=etag, not_modified=True)
                    )
            if kept_delta is not None:
                delta = kept_delta.delta
                if decision.state is CacheState.READY:
                    kept_delta.ready = TelemetryAnswer(
                        decision.state, codes, etag=etag, delta=delta
                    )
                    return self._count(kept_delta.ready)
                break
            if since_watermark is not None and decision.state in _DELTA_STATES:
                payload = self._payload(view, row, user_id)
                if payload is None:
                    continue  # the kept copy was replaced while the read ran: read it
                delta = self._delta(key, row, payload, since_watermark, codes)
                if delta is not None:
                    payload = None
                break  # a delta, or (history too short) the payload just read
            if holds_payload(row):
                payload = self._payload(view, row, user_id)
                if payload is None:
                    # not read yet, or the kept copy was replaced while the read ran: read it
                    with_payload = True
                    continue
            break
        retry_after = decision.retry_after_s
        if decision.reason is not None:
            accepted = await schedule(
                self._scheduler, key, watermark=row.session_watermark, reason=decision.reason
            )
            if decision.state is CacheState.COMPUTING and not accepted:
                retry_after = RETRY_SHED_S
        return self._count(
            TelemetryAnswer(
                decision.state,
                codes,
                payload=payload,
                retry_after_s=retry_after,
                error_code=decision.error_code,
                etag=etag,
                delta=delta,
            )
        )

    @staticmethod
    def _revalidated(ready: TelemetryAnswer, if_none_match: str | None) -> TelemetryAnswer:
        """``ready`` (a kept delta's answer), or its 304 when ``If-None-Match`` names its ETag."""
        if ready.etag is not None and etag_matches(if_none_match, ready.etag):
            return TelemetryAnswer(ready.state, ready.codes, etag=ready.etag, not_modified=True)
        return ready

    def _archived(
        self,
        view: ViewOf,
        row: HotRow,
        codes: tuple[str, ...],
        if_none_match: str | None,
        key: TelemetryKey,
    ) -> TelemetryAnswer | None:
        """An archived session's view: the kept payload as it is (its ETag unchanged), never a
        compute; a view it never had cannot be made any more (RAW_EXPIRED). None: read the
        payload first."""
        if row.source_watermark is None or row.status not in ("ready", "no_data"):
            raise Gone(
                "The raw samples of this session have expired and this view was never kept.",
                code="RAW_EXPIRED",
            )
        state = CacheState(row.status)
        live_at = row.computed_at_ms if row.live else None
        etag = make_etag(key, row.source_watermark, codes, live_at_ms=live_at)
        if etag_matches(if_none_match, etag):
            return TelemetryAnswer(state, codes, etag=etag, not_modified=True, archived=True)
        payload = self._payload(view, row, key.user_id)
        if payload is None:
            return None
        return TelemetryAnswer(state, codes, payload=payload, etag=etag, archived=True)

    def _payload(self, view: ViewOf, row: HotRow, user_id: str) -> PackedPayload | None:
        """The payload ``row`` holds: read with it (then kept for the next GETs) or the kept
        copy the read left out; None when neither (not read, or the kept copy moved on)."""
        if row.payload is not None:
            payload = unpack(row.payload)
            self._kept.put(view, row, payload, user_id=user_id)
            return payload
        return self._kept.get(view, row)

    def _delta(
        self,
        key: TelemetryKey,
        row: HotRow,
        payload: PackedPayload,
        since_watermark: int,
        codes: tuple[str, ...],
    ) -> bytes | None:
        """The delta from ``since_watermark`` to ``payload`` (the row's), or None when the
        history of that payload (read with the row) does not reach back that far. The clients
        watching one session all ask for the same delta after an update, so built deltas are
        kept a while."""
        self._deltas.remember(key, codes)
        if row.source_watermark is None:
            return None
        try:
            changes = history.since(history.decode(row.history), since_watermark)
        except ValueError:
            return None
        if changes is None:
            return None
        delta = deltas.build_delta(payload, changes, since_watermark, codes)
        self._deltas.put(key, row, since_watermark, codes, delta)
        return delta

    async def saved(self, saved: SavedView) -> None:
        """A post-save hook of this process's computes: the delta from the save before to this
        one is built now, once, for each metric selection its clients asked deltas of. The
        clients that follow the update with ``since_watermark`` (``session.updated`` carries
        that base) then all find it built, the first one included, with a read that brings
        neither the payload nor its history. Views nobody asked deltas of cost nothing."""
        base = saved.base_watermark
        selections = self._deltas.selections(saved.key) if base is not None else []
        if base is None or not selections:
            return
        changes = history.since(history.decode(saved.history), base)
        if changes is None:
            return
        payload = unpack(saved.payload)
        for codes in selections:
            delta = deltas.build_delta(payload, changes, base, codes)
            self._deltas.put_saved(
                saved.key, saved.source_watermark, saved.computed_at_ms, base, codes, delta
            )

    def _count(self, answer: TelemetryAnswer) -> TelemetryAnswer:
        self._responses[answer.state].inc()
        return answer

    @staticmethod
    def _key_of(
        row: HotRow,
        user_id: str,
        session_id: str,
        window_minutes: int,
        requested: str | None,
        now_ms: int,
    ) -> TelemetryKey:
        if row.resolution is not None:
            resolution = Resolution(row.resolution)
        else:
            resolution = resolve_resolution(
                requested,
                start_ms=row.session_start_ms,
                end_ms=row.session_end_ms,
                live=row.live,
                window_minutes=window_minutes,
                now_ms=now_ms,
            )
        return TelemetryKey(session_id, window_minutes, resolution, COMPUTE_VERSION, user_id)
