"""``ViewMemo``: what this process saved last for each of its recent views, kept decoded."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vitalcast.telemetry.compute import history
from vitalcast.telemetry.compute.downsample import MetricSeries
from vitalcast.telemetry.compute.partials import Partials
from vitalcast.telemetry.compute.results import StoredView
from vitalcast.telemetry.keys import TelemetryKey

#: views a process keeps decoded (``ViewMemo``): a live 24-hour view takes about 1 MB, a 1-hour
#: one a few hundred kB
MEMO_VIEWS = 256


@dataclass(frozen=True, slots=True)
class RememberedView:
    blob: bytes
    partials: Partials
    series: Mapping[str, MetricSeries]
    history_blob: bytes
    #: each record of the history with its stored bytes
    history: Sequence[tuple[history.SaveRecord, bytes]]


class ViewMemo:
    """What this process saved last for each of its recent views (a result enters once its save
    succeeded, see ``ComputedTelemetry.on_saved``): the partials and save history decoded, and
    each metric's series. The next compute of the view then decodes nothing and walks only the
    rows of the metrics it changed. An entry serves only when the view's stored partials and
    history are byte for byte the ones it was made from, so a save by another process or a crash
    simply misses it and the compute decodes what is stored. One compute per view at a time (the
    lease) is all it relies on. Each process builds one (``wiring``) and hands it to its
    computes.

    Computes on SQLite run on database threads (``db.units``) while saves enter entries from
    the server's loop, so every change of the order holds a lock."""

    def __init__(self, capacity: int = MEMO_VIEWS) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._entries: OrderedDict[TelemetryKey, RememberedView] = OrderedDict()

    def get(self, key: TelemetryKey, stored: StoredView) -> RememberedView | None:
        entry = self._entries.get(key)
        if entry is None or entry.blob != stored.partials or entry.history_blob != stored.history:
            return None
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
        return entry

    def last_partials(self, key: TelemetryKey) -> Partials | None:
        """The partials of the last save this process made of ``key``, not checked against what
        is stored: a guess made before the view's row is read (``incremental.guess_tails``)."""
        entry = self._entries.get(key)
        return None if entry is None else entry.partials

    def put(self, key: TelemetryKey, entry: RememberedView) -> None:
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)

    def forget(self, *, user_id: str | None = None, session_id: str | None = None) -> int:
        """Drop the views of ``user_id`` or of session ``session_id`` (deleted, erased); how many."""
        with self._lock:
            dropped = self._of(user_id, session_id)
            for key in dropped:
                del self._entries[key]
        return len(dropped)

    def entries_of(self, *, user_id: str | None = None, session_id: str | None = None) -> int:
        """How many views of ``user_id`` or of session ``session_id`` are remembered."""
        with self._lock:
            return len(self._of(user_id, session_id))

    def _of(self, user_id: str | None, session_id: str | None) -> list[TelemetryKey]:
        return [k for k in self._entries if k.user_id == user_id or k.session_id == session_id]
