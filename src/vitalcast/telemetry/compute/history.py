"""A view's save history: its records, how they are stored, and what the saves since one changed.

Every save of a view records what it changed since the save before: per metric the range of
buckets whose series columns changed (from the bucket rows, exactly) and the names of the other
parts that changed (from digests of their JSON), plus the head fields that changed. A client that
holds the payload of watermark ``N`` can then be sent only what changed since: the union of the
records after the first save at ``N``. Saves at one watermark can differ (a live view's end moves
with time), so the union starts at the *first* save at ``N``, which covers whichever of them the
client holds; and it is only served when the save before that one is known too (or the view had
no payload before it, ``NO_PAYLOAD``), which proves no earlier save at ``N`` is missing.
What one save changed is found in ``changes``; the delta sent is built in ``deltas``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import orjson

#: records kept per view: a client further behind gets the full payload
MAX_SAVES = 64
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class MetricChange:
    """What one save (or a run of saves) changed in one metric."""

    #: [from_ms, to_ms) of the buckets whose columns changed; empty when from_ms == to_ms
    from_ms: int
    to_ms: int
    #: changed parts: metric fields, or ``phases.<name>`` / ``insights.<name>`` for one of them
    parts: frozenset[str]
    #: the metric appeared, went, or changed shape: send it whole
    replace: bool

    def union(self, other: MetricChange) -> MetricChange:
        if self.from_ms == self.to_ms:
            span = (other.from_ms, other.to_ms)
        elif other.from_ms == other.to_ms:
            span = (self.from_ms, self.to_ms)
        else:
            span = (min(self.from_ms, other.from_ms), max(self.to_ms, other.to_ms))
        return MetricChange(
            span[0], span[1], self.parts | other.parts, self.replace or other.replace
        )


@dataclass(frozen=True, slots=True)
class SaveRecord:
    """One save of a view: its watermark and what it changed since the save before it."""

    watermark: int
    head: frozenset[str]
    metrics: Mapping[str, MetricChange]


#: the record before a view's very first save: no client can hold a payload older than that save
NO_PAYLOAD = SaveRecord(-1, frozenset(), {})


def encode_record(record: SaveRecord) -> bytes:
    """One record as stored: ``encode`` is these joined, so a save that appends one record to a
    history it remembers encodes that record alone."""
    return orjson.dumps(
        [
            record.watermark,
            sorted(record.head),
            {
                code: [m.from_ms, m.to_ms, sorted(m.parts), m.replace]
                for code, m in record.metrics.items()
            },
        ]
    )


def encode(records: Iterable[bytes]) -> bytes:
    """The stored history of the encoded records (``encode_record``), oldest first."""
    return b"[" + b",".join(records) + b"]"


def decode(blob: bytes | None) -> list[SaveRecord]:
    """The records stored as ``blob`` (none for None); ValueError when it is not a history."""
    if not blob:
        return []
    try:
        return [
            SaveRecord(
                watermark,
                frozenset(head),
                {
                    code: MetricChange(lo, hi, frozenset(parts), replace)
                    for code, (lo, hi, parts, replace) in metrics.items()
                },
            )
            for watermark, head, metrics in orjson.loads(blob)
        ]
    except (TypeError, AttributeError) as exc:
        raise ValueError("not a telemetry save history") from exc


def append(records: Sequence[_T], record: _T) -> list[_T]:
    """The history after one more save: the newest ``MAX_SAVES`` records."""
    return [*records[-(MAX_SAVES - 1) :], record]


def since(records: Sequence[SaveRecord], watermark: int) -> SaveRecord | None:
    """Everything the saves after the first one at ``watermark`` changed, as one record; None when
    that first save (or the one before it) is not in the history."""
    first = next((i for i, r in enumerate(records) if r.watermark == watermark), None)
    if first is None or first == 0:
        return None
    head: frozenset[str] = frozenset()
    metrics: dict[str, MetricChange] = {}
    for record in records[first + 1 :]:
        head |= record.head
        for code, change in record.metrics.items():
            metrics[code] = metrics[code].union(change) if code in metrics else change
    return SaveRecord(records[-1].watermark, head, metrics)
