"""``DeltaCache``: built deltas kept a while, because the clients watching one session all ask
for the same delta after an update."""

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
        self._kept: OrderedDict[tuple[object, ...], bytes] = OrderedDict()

    def get(
        self, key: TelemetryKey, row: HotRow, since_watermark: int, codes: tuple[str, ...]
    ) -> bytes | None:
        built = _delta_key(key, row, since_watermark, codes)
        kept = self._kept.get(built)
        if kept is not None:
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
        self._kept[_delta_key(key, row, since_watermark, codes)] = delta
        if len(self._kept) > MAX_KEPT_DELTAS:
            self._kept.popitem(last=False)
