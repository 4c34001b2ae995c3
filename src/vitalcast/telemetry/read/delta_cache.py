"""``DeltaCache``: built deltas kept a while, because the clients watching one session all ask
for the same delta after an update. A deleted session's or an erased user's deltas are dropped at
once (``forget``), not left to eviction."""

from __future__ import annotations

from collections import OrderedDict

from vitalcast.telemetry.keys import TelemetryKey
from vitalcast.telemetry.store.rows import HotRow

#: built deltas kept in memory (a few KiB each at most), least recently served dropped first
MAX_KEPT_DELTAS = 1024


def _delta_key(
    key: TelemetryKey, row: HotRow, since_watermark: int, codes: tuple[str, ...]
) -> tuple[object, ...]:
    """A built delta is the same for every client: it depends on the save it leads to (its
    watermark and compute time), the watermark it starts from and the metrics asked for."""
    return (
        key.session_id,
        key.window_minutes,
        key.resolution,
        row.source_watermark,
        row.computed_at_ms,
        since_watermark,
        codes,
    )


class DeltaCache:
    """The last ``MAX_KEPT_DELTAS`` built deltas, least recently served dropped first."""

    def __init__(self) -> None:
        #: built delta by its key, with the session's owner (so that an erasure finds it)
        self._kept: OrderedDict[tuple[object, ...], tuple[str, bytes]] = OrderedDict()

    def get(
        self, key: TelemetryKey, row: HotRow, since_watermark: int, codes: tuple[str, ...]
    ) -> bytes | None:
        built = _delta_key(key, row, since_watermark, codes)
        kept = self._kept.get(built)
        if kept is None:
            return None
        self._kept.move_to_end(built)
        return kept[1]

    def put(
        self,
        key: TelemetryKey,
        row: HotRow,
        since_watermark: int,
        codes: tuple[str, ...],
        delta: bytes,
    ) -> None:
        self._kept[_delta_key(key, row, since_watermark, codes)] = (key.user_id, delta)
        if len(self._kept) > MAX_KEPT_DELTAS:
            self._kept.popitem(last=False)

    def forget(self, *, user_id: str | None = None, session_id: str | None = None) -> int:
        """Drop every delta of ``user_id``'s sessions or of session ``session_id``; how many."""
        dropped = self._of(user_id, session_id)
        for built in dropped:
            del self._kept[built]
        return len(dropped)

    def entries_of(self, *, user_id: str | None = None, session_id: str | None = None) -> int:
        """How many deltas of ``user_id``'s sessions or of session ``session_id`` are kept."""
        return len(self._of(user_id, session_id))

    def _of(self, user_id: str | None, session_id: str | None) -> list[tuple[object, ...]]:
        return [
            built
            for built, (owner, _delta) in self._kept.items()
            if owner == user_id or built[0] == session_id
        ]
