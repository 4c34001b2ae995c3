"""The receiving side of a telemetry delta, written out from the contract (DESIGN.md "Deltas",
``telemetry/compute/deltas.py``) rather than imported, as the dashboard's ``deltas.js`` is: the tests
check that what the server sends rebuilds the payload it holds."""

from __future__ import annotations

import bisect
from typing import Any

COLUMNS = ("t", "mean", "sum", "min", "max", "count")
#: merged field by field, not replaced
MERGED = ("phases", "insights")


def apply_delta(base: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    """``base`` brought to the delta's payload; AssertionError when it is not the delta's base."""
    assert delta["base_watermark"] == base["source_watermark"], (delta, base["source_watermark"])
    assert delta["resolution"] == base["resolution"]
    out = {key: value for key, value in base.items() if key != "metrics"}
    out.update({k: v for k, v in delta.items() if k not in ("base_watermark", "metrics")})
    metrics = dict(base["metrics"])
    for code, entry in delta["metrics"].items():
        if entry is None:
            metrics.pop(code, None)
            continue
        if entry.get("replace"):
            metrics[code] = {k: v for k, v in entry.items() if k != "replace"}
            continue
        old = metrics[code]
        metric = dict(old)
        if "from_t" in entry:
            lo = bisect.bisect_left(old["t"], entry["from_t"])
            hi = bisect.bisect_left(old["t"], entry["to_t"])
            for column in COLUMNS:
                if column in old:
                    metric[column] = old[column][:lo] + entry[column] + old[column][hi:]
        for key, value in entry.items():
            if key in ("from_t", "to_t", "tails") or key in COLUMNS:
                continue
            metric[key] = {**old[key], **value} if key in MERGED else value
        for key, lists in entry.get("tails", {}).items():
            metric[key] = dict(metric[key])
            for field, (keep, items) in lists.items():
                held = metric[key][field] if isinstance(metric[key][field], list) else []
                metric[key][field] = held[:keep] + items
        metrics[code] = metric
    out["metrics"] = metrics
    return out
