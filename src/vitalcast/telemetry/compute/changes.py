"""What one save of a view changed: per metric the buckets whose series columns changed (from the
bucket rows, exactly) and the parts whose JSON digest changed, plus the changed head fields."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import orjson

from vitalcast.json_types import JsonMapping, JsonObject
from vitalcast.telemetry.compute.downsample import AHEAD, BUCKET, METRIC, PHASE, Row
from vitalcast.telemetry.compute.history import MetricChange, SaveRecord

#: a metric's per-bucket series; everything else of a metric is a "part"
COLUMNS = ("t", "mean", "sum", "min", "max", "count")
#: the metric fields a delta merges (by phase, by insight) instead of replacing: a live update
#: moves the during phase and a few insights, and the others stay where the client has them
MERGED = ("phases", "insights")


def _digest(value: object) -> str:
    return hashlib.blake2b(orjson.dumps(value), digest_size=8).hexdigest()


#: marks an item of a list part (``insights.episodes#3``) and its length (``…#len``)
ITEM = "#"
LENGTH = "len"


def _parts(metric: JsonMapping) -> JsonObject:
    parts: JsonObject = {}
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


def _shape(metric: JsonMapping) -> str:
    merged = (metric.get(name) for name in MERGED)
    return ";".join(
        [",".join(metric), *(",".join(m) if isinstance(m, dict) else "" for m in merged)]
    )


def part_digests(document: JsonMapping, metrics: Mapping[str, JsonMapping]) -> JsonObject:
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
            if row[PHASE] != AHEAD:
                grouped.setdefault((row[METRIC], row[BUCKET]), []).append(row)
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
    previous: JsonMapping,
    current: JsonMapping,
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
