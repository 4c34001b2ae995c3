"""``KeptPayloads``: the last payload this process served for each view, so that the hot read
sends a payload's bytes only when the process does not hold them already.

A cached GET used to bring the whole stored payload (tens of KiB) with every read, and unpack
it, although every client of a view asks for the same one until the next save. The hot read now
names the payload the process holds (``PayloadId``) and gets NULL back in its place when the row
still holds that one; the answer is then joined from the kept copy. The read stays one
statement, and a payload crosses from the database once per save and process.

A payload is identified by its view row's resolution, watermark and compute time: a save writes
all three, and the same view at the same watermark computed at the same moment is the same
payload (its ETag already says so). Entries are dropped least recently served first, beyond
``MAX_KEPT_BYTES``, and at once when their session is deleted or their user erased (``forget``):
a quiet process must not hold an erased person's health data until eviction.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from vitalcast.telemetry.compute.payload import PackedPayload
from vitalcast.telemetry.store.rows import HotRow

#: bytes of kept payloads per process (a 4 h view at 1m buckets is about 50 KiB)
MAX_KEPT_BYTES = 64 * 1024 * 1024

#: (session id, window minutes, requested resolution or None for auto): one view of a GET
ViewOf = tuple[str, int, str | None]


@dataclass(frozen=True, slots=True)
class PayloadId:
    """Which stored payload: the one a view row held at this watermark and compute time."""

    resolution: str
    source_watermark: int
    computed_at_ms: int

    @classmethod
    def of(cls, row: HotRow) -> PayloadId | None:
        if row.resolution is None or row.source_watermark is None or row.computed_at_ms is None:
            return None
        return cls(row.resolution, row.source_watermark, row.computed_at_ms)


@dataclass(frozen=True, slots=True)
class _Kept:
    id: PayloadId
    payload: PackedPayload
    size: int
    #: the session's owner, so that an erasure finds the user's entries
    user_id: str


class KeptPayloads:
    """The last payload served per view, least recently served dropped first."""

    def __init__(self, max_bytes: int = MAX_KEPT_BYTES) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        self._kept: OrderedDict[ViewOf, _Kept] = OrderedDict()

    def held(self, view: ViewOf) -> PayloadId | None:
        """Which payload of ``view`` is kept (what the hot read may leave out)."""
        kept = self._kept.get(view)
        return None if kept is None else kept.id

    def get(self, view: ViewOf, row: HotRow) -> PackedPayload | None:
        """The kept payload of ``view`` if it is the one ``row`` holds."""
        kept = self._kept.get(view)
        if kept is None or kept.id != PayloadId.of(row):
            return None
        self._kept.move_to_end(view)
        return kept.payload

    def put(self, view: ViewOf, row: HotRow, payload: PackedPayload, *, user_id: str) -> None:
        """Keep ``payload``, read with ``row``, as ``view``'s (a session of ``user_id``)."""
        payload_id = PayloadId.of(row)
        if payload_id is None:
            return
        self._drop(view)
        size = len(payload.head) + sum(len(fragment) for fragment in payload.fragments.values())
        if size > self._max_bytes:
            return
        self._kept[view] = _Kept(payload_id, payload, size, user_id)
        self._bytes += size
        while self._bytes > self._max_bytes:
            _view, oldest = self._kept.popitem(last=False)
            self._bytes -= oldest.size

    def forget(self, *, user_id: str | None = None, session_id: str | None = None) -> int:
        """Drop every payload of ``user_id``'s sessions or of session ``session_id``; how many."""
        dropped = self._of(user_id, session_id)
        for view in dropped:
            self._drop(view)
        return len(dropped)

    def entries_of(self, *, user_id: str | None = None, session_id: str | None = None) -> int:
        """How many payloads of ``user_id``'s sessions or of session ``session_id`` are kept."""
        return len(self._of(user_id, session_id))

    def _of(self, user_id: str | None, session_id: str | None) -> list[ViewOf]:
        return [
            view
            for view, kept in self._kept.items()
            if kept.user_id == user_id or view[0] == session_id
        ]

    def _drop(self, view: ViewOf) -> None:
        kept = self._kept.pop(view, None)
        if kept is not None:
            self._bytes -= kept.size
