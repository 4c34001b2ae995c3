"""Partials survive their stored form exactly; the save history unions what saves changed and
refuses a base it cannot vouch for; deltas built from it rebuild the payload (pure, no I/O)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.telemetry.deltas import ApplyDelta
from vitalcast.telemetry.compute import changes, deltas, history
from vitalcast.telemetry.compute.downsample import AHEAD
from vitalcast.telemetry.compute.partials import Partials, decode, encode, sealed
from vitalcast.telemetry.compute.payload import pack, unpack
from vitalcast.telemetry.grid import TelemetryWindow

MIN = 60_000
WS = 1_700_000_000_000


@pytest.mark.parametrize(
    "window",
    [
        TelemetryWindow(WS, WS + 90 * MIN, WS + 60 * MIN, None, 60),
        TelemetryWindow(WS, WS + 180 * MIN, WS + 60 * MIN, WS + 120 * MIN, 60),
    ],
)
def test_partials_round_trip_exactly(window: TelemetryWindow) -> None:
    """Rows (AHEAD rows, huge sums and odd floats included), the window and the digests come
    back exactly as they went in, sorted by metric, bucket and phase."""
    rows = [
        ("steps", 3, 1, 2, 30_000_000, 10.0, 20.0, WS + 3 * MIN, WS + 3 * MIN + 5),
        ("heart_rate", 91, AHEAD, 1, 72_300_000, 72.3, 72.3, WS + 91 * MIN + 1, WS + 91 * MIN + 1),
        ("heart_rate", 0, 0, 3, 2**62, 0.1 + 0.2, 1e308, WS, WS + 59_999),
    ]
    digests = {"head": {"live": "00ff"}, "metrics": {}}
    decoded = decode(encode(Partials.of_rows(window, MIN, rows, digests)))
    assert decoded.window == window and decoded.bucket_ms == MIN
    assert decoded.rows == sorted(rows)
    assert decoded.digests == digests
    assert decode(encode(Partials.of_rows(window, MIN, []))).rows == []


def test_a_blob_of_another_format_is_refused() -> None:
    """Another magic, a damaged header or a damaged segment is a ValueError (the compute then
    runs in full)."""
    rows = [
        ("heart_rate", b, 1, 1, 70_000_000, 70.0, 70.0, WS + b * MIN, WS + b * MIN)
        for b in range(9)
    ]
    blob = encode(Partials.of_rows(TelemetryWindow(WS, WS + 9 * MIN, WS, None, 15), MIN, rows))
    assert decode(blob).rows == rows
    with pytest.raises(ValueError):
        decode(b"VCR2" + blob[4:])
    with pytest.raises(ValueError):
        decode(blob[:4] + b"garbage")
    with pytest.raises(ValueError):
        decode(blob[:-8] + bytes(8))
    with pytest.raises(ValueError):
        decode(blob[:-1])


def test_a_metric_left_unchanged_keeps_its_stored_segment() -> None:
    """Re-encoding partials decoded from a blob gives the same bytes without encoding any metric
    again: a save re-encodes only the metrics that moved."""
    window = TelemetryWindow(WS, WS + 9 * MIN, WS, None, 15)
    rows = [
        (code, b, 1, 2, 140_000_000, 69.5, 70.5, WS + b * MIN, WS + b * MIN + 9)
        for code in ("heart_rate", "steps")
        for b in range(9)
    ]
    blob = encode(sealed(Partials.of_rows(window, MIN, rows, {"head": {}})))
    decoded = decode(blob)
    assert all(metric.segment is not None for metric in decoded.metrics.values())
    assert encode(decoded) == blob
    assert sealed(decoded).metrics["steps"] is decoded.metrics["steps"]


def _record(watermark: int, **metrics: history.MetricChange) -> history.SaveRecord:
    return history.SaveRecord(watermark, frozenset({"computed_at_ms"}), metrics)


def test_since_unions_every_save_after_the_first_at_the_base() -> None:
    """Ranges widen to their hull, parts and replace flags accumulate; a watermark whose first
    save is the oldest record (nothing proves it was the first) or absent is refused."""
    records = [
        _record(3),
        _record(5, heart_rate=history.MetricChange(10, 20, frozenset({"stats"}), False)),
        _record(5),  # a later save at the same watermark (a live view's end moved)
        _record(7, heart_rate=history.MetricChange(40, 50, frozenset({"phases.during"}), False)),
        _record(8, steps=history.MetricChange(0, 0, frozenset(), True)),
    ]
    union = history.since(records, 5)
    assert union is not None
    assert union.metrics == {
        "heart_rate": history.MetricChange(40, 50, frozenset({"phases.during"}), False),
        "steps": history.MetricChange(0, 0, frozenset(), True),
    }
    from_3 = history.since(records, 3)
    assert from_3 is None
    assert history.since([history.NO_PAYLOAD, *records], 3) is not None
    assert history.since(records, 4) is None
    union_all = history.since([history.NO_PAYLOAD, *records], 3)
    assert union_all is not None
    assert union_all.metrics["heart_rate"] == history.MetricChange(
        10, 50, frozenset({"stats", "phases.during"}), False
    )
    assert history.decode(history.encode(map(history.encode_record, records))) == records
    for garbage in (b"[1", b"[[1, 2]]", b'{"a": 1}'):
        with pytest.raises(ValueError):
            history.decode(garbage)


def _payload(metrics: dict[str, Any], watermark: int) -> dict[str, Any]:
    return {
        "session_id": "s",
        "source_watermark": watermark,
        "resolution": "1m",
        "metrics": metrics,
    }


def _hr(t: list[int], mean: list[float], during: float) -> dict[str, Any]:
    return {
        "display_name": "Heart rate",
        "t": t,
        "mean": mean,
        "count": [1] * len(t),
        "stats": {"mean": sum(mean) / len(mean)},
        "phases": {"before": {"mean": 60.0}, "during": {"mean": during}},
    }


def test_a_delta_rebuilds_the_payload_from_its_base(apply_delta: ApplyDelta) -> None:
    """Columns in the changed range are replaced, changed parts carried (one phase merged), a
    gone metric is null, a new one comes whole."""
    base = _payload({"heart_rate": _hr([0, 60, 120], [60.0, 61.0, 62.0], 61.0),
                     "steps": {"t": [0], "sum": [5.0], "count": [1]}}, 4)  # fmt: skip
    target = _payload({"heart_rate": _hr([0, 60, 120, 180], [60.0, 65.0, 62.0, 70.0], 64.0),
                       "spo2": {"t": [60], "mean": [97.0], "count": [1]}}, 6)  # fmt: skip
    document = {k: v for k, v in target.items() if k != "metrics"}
    packed = unpack(pack(document, target["metrics"]))
    changes = history.SaveRecord(
        6,
        frozenset({"source_watermark"}),
        {
            "heart_rate": history.MetricChange(
                60, 240, frozenset({"stats", "phases.during"}), False
            ),
            "steps": history.MetricChange(0, 60, frozenset(), True),
            "spo2": history.MetricChange(60, 120, frozenset(), True),
        },
    )
    delta = orjson.loads(deltas.build_delta(packed, changes, 4, ["heart_rate", "spo2", "steps"]))
    assert delta["metrics"]["steps"] is None
    assert delta["metrics"]["heart_rate"]["t"] == [60, 120, 180]
    assert set(delta["metrics"]["heart_rate"]["phases"]) == {"during"}
    assert apply_delta(base, delta) == target


def _episode(start: int, end: int) -> dict[str, Any]:
    return {"rule": ">=21", "level": "elevated", "start_ms": start, "end_ms": end, "extreme": 40.0}


@pytest.mark.parametrize(
    ("before", "after", "kept"),
    [
        # the live edge extends the last episode: only it is sent
        ([_episode(0, 60), _episode(120, 180)], [_episode(0, 60), _episode(120, 240)], 1),
        # a new episode begins: only it is sent
        ([_episode(0, 60)], [_episode(0, 60), _episode(120, 180)], 1),
        # a late sample splits the first episode: everything from it is sent
        (
            [_episode(0, 60), _episode(120, 180)],
            [_episode(0, 30), _episode(45, 60), _episode(120, 180)],
            0,
        ),
        # the window's start passed the first episodes: the list is shorter
        ([_episode(0, 60), _episode(120, 180), _episode(240, 300)], [_episode(0, 60)], 1),
        ([_episode(0, 60)], [], 0),
    ],
)
def test_a_list_insight_is_sent_from_its_first_changed_item(
    before: list[dict[str, Any]], after: list[dict[str, Any]], kept: int, apply_delta: ApplyDelta
) -> None:
    """Digested item by item, a list insight travels as a tail (keep the first ``kept`` items,
    append the rest), and the other insights of the metric stay out of the delta."""

    def metric(episodes: list[dict[str, Any]]) -> dict[str, Any]:
        return {"t": [0], "mean": [20.0], "count": [1],
                "insights": {"episodes": episodes, "during_mean": 20.0}}  # fmt: skip

    base = _payload({"respiratory_rate": metric(before)}, 4)
    target = _payload({"respiratory_rate": metric(after)}, 5)
    digests = [
        changes.part_digests({k: v for k, v in p.items() if k != "metrics"}, p["metrics"])
        for p in (base, target)
    ]
    record = changes.record_save(5, digests[0], digests[1], {})
    assert record is not None
    packed = unpack(pack({k: v for k, v in target.items() if k != "metrics"}, target["metrics"]))
    delta = orjson.loads(deltas.build_delta(packed, record, 4, ["respiratory_rate"]))
    entry = delta["metrics"]["respiratory_rate"]
    assert entry == {"tails": {"insights": {"episodes": [kept, after[kept:]]}}}
    assert apply_delta(base, delta) == target
