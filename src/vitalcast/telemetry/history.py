"""A view's save history, and the deltas built from it.

Every save of a view records what it changed since the save before: per metric the range of
buckets whose series columns changed (from the bucket rows, exactly) and the names of the other
parts that changed (from digests of their JSON), plus the head fields that changed. A client that
holds the payload of watermark ``N`` can then be sent only what changed since: the union of the
records after the first save at ``N``. Saves at one watermark can differ (a live view's end moves
with time), so the union starts at the *first* save at ``N``, which covers whichever of them the
client holds; and it is only served when the save before that one is known too (or the view had
no payload before it, ``NO_PAYLOAD``), which proves no earlier save at ``N`` is missing.

A delta (``GET …/telemetry?since_watermark=N``) is ``{base_watermark, source_watermark,
resolution, <changed head fields>, metrics: {code: entry | null}}``. An entry replaces the series
columns of the buckets in ``[from_t, to_t)`` with its own columns (absent: no column changed),
replaces the metric fields it carries, except ``phases`` and ``insights``, which it merges by
phase and by insight name (a change in which phases or insights a metric has makes it a whole
metric); ``{"replace": true, …}`` is the whole metric, ``null`` a metric that is gone. An insight
that is a list (``episodes``) is digested item by item, so a live update that extends its last
episode sends that tail, not the list: ``tails: {insights: {episodes: [k, items]}}`` keeps the
client's first ``k`` items and appends ``items``. Applying every delta in order to a payload
gives, field for field, the payload the server holds.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from vitalcast.telemetry.downsample import AHEAD, Row
from vitalcast.telemetry.payload import PackedPayload

#: a metric's per-bucket series; everything else of a metric is a "part"
COLUMNS = ("t", "mean", "sum", "min", "max", "count")
#: the metric fields a delta merges (by phase, by insight) instead of replacing: a live update
#: moves the during phase and a few insights, and the others stay where the client has them
MERGED = ("phases", "insights")
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


# -- what a save changed -----------------------------------------------------------------------


def _digest(value: Any) -> str:
    return hashlib.blake2b(orjson.dumps(value), digest_size=8).hexdigest()


#: marks an item of a list part (``insights.episodes#3``) and its length (``…#len``)
ITEM = "#"
LENGTH = "len"


def _parts(metric: Mapping[str, Any]) -> dict[str, Any]:
    parts: dict[str, Any] = {}
    for name, value in metric.items():
        if name in COLUMNS:
            continue
        if name in MERGED and isinstance(value, dict):
            for field, inner in value.items():
                if isinstance(inner, list):
                    # Item by item: a changed item or length tells the delta where the tail starts.
                    parts.update({f"{name}.{field}{ITEM}{i}": item for i, item in enumerate(inner)})
                    parts[f"{name}.{field}{ITEM}{LENGTH}"] = len(inner)
                else:
                    parts[f"{name}.{field}"] = inner
        else:
            parts[name] = value
    return parts


def _shape(metric: Mapping[str, Any]) -> str:
    merged = (metric.get(name) for name in MERGED)
    return ";".join(
        [",".join(metric), *(",".join(m) if isinstance(m, dict) else "" for m in merged)]
    )


def part_digests(
    document: Mapping[str, Any], metrics: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """Digests of every head field and every metric part of a payload (stored with its
    partials, so the next save can tell which of them it changed without the old payload)."""
    return {
        "head": {name: _digest(value) for name, value in document.items()},
        "metrics": {
            code: {
                "shape": _shape(metric),
                "parts": {name: _digest(value) for name, value in _parts(metric).items()},
            }
            for code, metric in metrics.items()
        },
    }


def changed_columns(
    old_rows: Iterable[Row], new_rows: Iterable[Row], *, window_start_ms: int, bucket_ms: int
) -> dict[str, tuple[int, int]]:
    """Per metric, ``[from_ms, to_ms)`` of the buckets whose rows differ between ``old_rows`` and
    ``new_rows`` (the rows a save replaced and the ones it put in their place; AHEAD rows aside:
    they are not in the series)."""

    def by_bucket(rows: Iterable[Row]) -> dict[tuple[str, int], list[Row]]:
        grouped: dict[tuple[str, int], list[Row]] = {}
        for row in rows:
            if row[2] != AHEAD:
                grouped.setdefault((row[0], row[1]), []).append(row)
        for group in grouped.values():
            group.sort()
        return grouped

    old, new = by_bucket(old_rows), by_bucket(new_rows)
    spans: dict[str, tuple[int, int]] = {}
    for code, bucket in old.keys() | new.keys():
        if old.get((code, bucket)) == new.get((code, bucket)):
            continue
        lo, hi = spans.get(code, (bucket, bucket))
        spans[code] = (min(lo, bucket), max(hi, bucket))
    return {
        code: (window_start_ms + lo * bucket_ms, window_start_ms + (hi + 1) * bucket_ms)
        for code, (lo, hi) in spans.items()
    }


def record_save(
    watermark: int,
    previous: Mapping[str, Any],
    current: Mapping[str, Any],
    columns: Mapping[str, tuple[int, int]],
) -> SaveRecord | None:
    """The record of a save from the digests before and after it and its changed columns; None
    when the head's fields themselves changed (a delta could not express that)."""
    old_head, new_head = previous["head"], current["head"]
    if old_head.keys() != new_head.keys():
        return None
    head = frozenset(name for name, value in new_head.items() if old_head[name] != value)
    old_metrics, new_metrics = previous["metrics"], current["metrics"]
    changes: dict[str, MetricChange] = {}
    for code in old_metrics.keys() | new_metrics.keys():
        lo, hi = columns.get(code, (0, 0))
        old, new = old_metrics.get(code), new_metrics.get(code)
        if old is None or new is None or old["shape"] != new["shape"]:
            changes[code] = MetricChange(lo, hi, frozenset(), True)
            continue
        parts = frozenset(
            name for name, value in new["parts"].items() if old["parts"].get(name) != value
        )
        if parts or lo != hi:
            changes[code] = MetricChange(lo, hi, parts, False)
    return SaveRecord(watermark, head, changes)


def changed_span(record: SaveRecord, empty_at_ms: int) -> tuple[int, int]:
    """``[from, to)`` of every bucket the save changed, or the empty range at ``empty_at_ms``."""
    spans = [(m.from_ms, m.to_ms) for m in record.metrics.values() if m.from_ms != m.to_ms]
    if not spans:
        return empty_at_ms, empty_at_ms
    return min(lo for lo, _ in spans), max(hi for _, hi in spans)


def append(records: Sequence[_T], record: _T) -> list[_T]:
    """The history after one more save: the newest ``MAX_SAVES`` records."""
    return [*records[-(MAX_SAVES - 1) :], record]


# -- deltas ------------------------------------------------------------------------------------


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


def build_delta(
    payload: PackedPayload, changes: SaveRecord, base_watermark: int, codes: Sequence[str]
) -> bytes:
    """The delta from ``base_watermark`` to ``payload`` for the metrics of ``codes``, as JSON."""
    head = orjson.loads(payload.head + b"}}")
    # The view's identity rides along, so a client never applies a delta to another view's
    # payload (``auto`` resolution can switch from 1m to 5m as a live window grows).
    delta: dict[str, Any] = {
        "base_watermark": base_watermark,
        "source_watermark": head["source_watermark"],
        "resolution": head["resolution"],
    }
    for name in sorted(changes.head):
        delta[name] = head[name]
    metrics: dict[str, Any] = {}
    for code in codes:
        change = changes.metrics.get(code)
        if change is None:
            continue
        fragment = payload.fragments.get(code)
        if fragment is None:
            metrics[code] = None
            continue
        metric = orjson.loads(b"{" + fragment + b"}")[code]
        metrics[code] = _entry(metric, change)
    delta["metrics"] = metrics
    return orjson.dumps(delta)


def _entry(metric: dict[str, Any], change: MetricChange) -> dict[str, Any]:
    if change.replace:
        return {"replace": True, **metric}
    entry: dict[str, Any] = {}
    if change.from_ms != change.to_ms:
        t = metric["t"]
        lo = bisect.bisect_left(t, change.from_ms)
        hi = bisect.bisect_left(t, change.to_ms)
        entry["from_t"] = change.from_ms
        entry["to_t"] = change.to_ms
        for column in COLUMNS:
            if column in metric:
                entry[column] = metric[column][lo:hi]
    tails: dict[tuple[str, str], int] = {}
    for part in sorted(change.parts):
        name, _, field = part.partition(".")
        field, item, index = field.partition(ITEM)
        if not field:
            entry[name] = metric[name]
            continue
        value = metric[name][field]
        if item and isinstance(value, list):
            at = len(value) if index == LENGTH else int(index)
            tails[name, field] = min(at, tails.get((name, field), at))
        else:
            entry.setdefault(name, {})[field] = value
    for (name, field), at in sorted(tails.items()):
        entry.setdefault("tails", {}).setdefault(name, {})[field] = [at, metric[name][field][at:]]
    return entry
