"""``DeltaCache``: built deltas kept a while, because the clients watching one session all ask
for the same delta after an update. The first of them to get it ``ready`` leaves its answer
(the ETag made) with it, and the others get that answer as it is: a delta fetch is then the hot
read, the freshness decision and a lookup, less work than a full fetch, whose payload is joined
per request. It also remembers which metric selections clients asked deltas of, per view, so
that a save of this process builds those deltas at once (``SessionTelemetryService.saved``), and
where kept deltas start (``may_have``). A deleted session's or an erased user's entries are
dropped at once (``forget``), not left to eviction."""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass

from vitalcast.telemetry.keys import TelemetryKey
from vitalcast.telemetry.read.answer import TelemetryAnswer
from vitalcast.telemetry.store.rows import HotRow

#: built deltas kept in memory (a few KiB each at most), least recently served dropped first
MAX_KEPT_DELTAS = 1024
#: views whose asked metric selections are remembered, and selections per view
MAX_ASKING_VIEWS = 4096
MAX_SELECTIONS = 4

#: a view, as the metric selections asked of it are remembered
_View = tuple[str, int, str]
#: a built delta's key (``_delta_key``)
_Built = tuple[str, int, str, int | None, int | None, int, tuple[str, ...]]
#: where built deltas start: (session id, window minutes, since watermark, metric codes)
_Start = tuple[str, int, int, tuple[str, ...]]


def _delta_key(
    view: _View,
    watermark: int | None,
    computed_at_ms: int | None,
    since_watermark: int,
    codes: tuple[str, ...],
) -> _Built:
    """A built delta is the same for every client: it depends on the save it leads to (its
    watermark and compute time), the watermark it starts from and the metrics asked for."""
    session_id, window_minutes, resolution = view
    return (
        session_id,
        window_minutes,
        resolution,
        watermark,
        computed_at_ms,
        since_watermark,
        codes,
    )


def _view_of(key: TelemetryKey) -> _View:
    return (key.session_id, key.window_minutes, key.resolution.value)


@dataclass(slots=True)
class KeptDelta:
    """A built delta and the session's owner (so that an erasure finds it)."""

    user_id: str
    delta: bytes
    #: the ``ready`` answer that serves it (its ETag made), made by the first ready request
    #: and then answered as it is: every client of the update asks the same delta
    ready: TelemetryAnswer | None = None


def _start_of(built: _Built) -> _Start:
    """Where the delta of a ``_delta_key`` starts (``DeltaCache.may_have``)."""
    session_id, window_minutes, _resolution, _watermark, _at, since_watermark, codes = built
    return (session_id, window_minutes, since_watermark, codes)


class DeltaCache:
    """The last ``MAX_KEPT_DELTAS`` built deltas, least recently served dropped first."""

    def __init__(self) -> None:
        #: built deltas by their key
        self._kept: OrderedDict[_Built, KeptDelta] = OrderedDict()
        #: per view, its owner and the metric selections clients asked deltas of
        self._asked: OrderedDict[_View, tuple[str, list[tuple[str, ...]]]] = OrderedDict()
        #: how many kept deltas start where (any resolution, any save they lead to)
        self._starts: Counter[_Start] = Counter()

    def may_have(
        self, session_id: str, window_minutes: int, since_watermark: int, codes: tuple[str, ...]
    ) -> bool:
        """Whether a delta from ``since_watermark`` of this window is kept, to whichever save:
        asked before the read (its save is not known yet), so that a request no kept delta can
        answer reads the history at once instead of a second time. It only guesses: a kept
        delta may lead to an older save than the one the read finds."""
        return (session_id, window_minutes, since_watermark, codes) in self._starts

    def get(
        self,
        user_id: str,
        session_id: str,
        window_minutes: int,
        row: HotRow,
        since_watermark: int,
        codes: tuple[str, ...],
    ) -> KeptDelta | None:
        """The delta built for this request (``row`` is the view's, read for it), if any; the
        request's metric selection is remembered for the view's next saves. Takes the view's
        parts, not its ``TelemetryKey``: a hit needs none made."""
        view = (session_id, window_minutes, str(row.resolution))
        self._remember(view, user_id, codes)
        built = _delta_key(view, row.source_watermark, row.computed_at_ms, since_watermark, codes)
        kept = self._kept.get(built)
        if kept is None:
            return None
        self._kept.move_to_end(built)
        return kept

    def put(
        self,
        key: TelemetryKey,
        row: HotRow,
        since_watermark: int,
        codes: tuple[str, ...],
        delta: bytes,
    ) -> None:
        self.put_saved(key, row.source_watermark, row.computed_at_ms, since_watermark, codes, delta)

    def put_saved(
        self,
        key: TelemetryKey,
        watermark: int | None,
        computed_at_ms: int | None,
        since_watermark: int,
        codes: tuple[str, ...],
        delta: bytes,
    ) -> None:
        """Keep a delta built for the save at ``watermark``, computed at ``computed_at_ms``."""
        built = _delta_key(_view_of(key), watermark, computed_at_ms, since_watermark, codes)
        if built not in self._kept:
            self._starts[_start_of(built)] += 1
        self._kept[built] = KeptDelta(key.user_id, delta)
        if len(self._kept) > MAX_KEPT_DELTAS:
            oldest, _kept = self._kept.popitem(last=False)
            self._unstart(oldest)

    def selections(self, key: TelemetryKey) -> list[tuple[str, ...]]:
        """The metric selections clients asked deltas of for this view, latest last."""
        asked = self._asked.get(_view_of(key))
        return [] if asked is None else list(asked[1])

    def remember(self, key: TelemetryKey, codes: tuple[str, ...]) -> None:
        """Remember that clients of ``key``'s view ask deltas of ``codes`` (``get`` does)."""
        self._remember(_view_of(key), key.user_id, codes)

    def _remember(self, view: _View, user_id: str, codes: tuple[str, ...]) -> None:
        asked = self._asked.get(view)
        if asked is None:
            self._asked[view] = (user_id, [codes])
            if len(self._asked) > MAX_ASKING_VIEWS:
                self._asked.popitem(last=False)
            return
        self._asked.move_to_end(view)
        selections = asked[1]
        if codes in selections:
            return
        selections.append(codes)
        if len(selections) > MAX_SELECTIONS:
            del selections[0]

    def forget(self, *, user_id: str | None = None, session_id: str | None = None) -> int:
        """Drop every delta of ``user_id``'s sessions or of session ``session_id``; how many
        (what was asked of their views is dropped too)."""
        dropped = self._of(user_id, session_id)
        for built in dropped:
            del self._kept[built]
            self._unstart(built)
        for view in [
            v
            for v, (owner, _codes) in self._asked.items()
            if owner == user_id or v[0] == session_id
        ]:
            del self._asked[view]
        return len(dropped)

    def _unstart(self, built: _Built) -> None:
        start = _start_of(built)
        self._starts[start] -= 1
        if self._starts[start] <= 0:
            del self._starts[start]

    def entries_of(self, *, user_id: str | None = None, session_id: str | None = None) -> int:
        """How many deltas of ``user_id``'s sessions or of session ``session_id`` are kept."""
        return len(self._of(user_id, session_id))

    def _of(self, user_id: str | None, session_id: str | None) -> list[_Built]:
        return [
            built
            for built, kept in self._kept.items()
            if kept.user_id == user_id or built[0] == session_id
        ]
