"""The delta sent to a client that holds an older payload of a view.

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
from collections.abc import Sequence

import orjson

from vitalcast.json_types import JsonObject
from vitalcast.telemetry.compute.changes import COLUMNS, ITEM, LENGTH
from vitalcast.telemetry.compute.history import MetricChange, SaveRecord
from vitalcast.telemetry.compute.payload import PackedPayload


def build_delta(
    payload: PackedPayload, changes: SaveRecord, base_watermark: int, codes: Sequence[str]
) -> bytes:
    """The delta from ``base_watermark`` to ``payload`` for the metrics of ``codes``, as JSON."""
    head = orjson.loads(payload.head + b"}}")
    # The view's identity rides along, so a client never applies a delta to another view's
    # payload (``auto`` resolution can switch from 1m to 5m as a live window grows).
    delta: JsonObject = {
        "base_watermark": base_watermark,
        "source_watermark": head["source_watermark"],
        "resolution": head["resolution"],
    }
    for name in sorted(changes.head):
        delta[name] = head[name]
    metrics: JsonObject = {}
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


def _entry(metric: JsonObject, change: MetricChange) -> JsonObject:
    if change.replace:
        return {"replace": True, **metric}
    entry: JsonObject = {}
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
