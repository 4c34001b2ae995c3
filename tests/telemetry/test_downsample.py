"""Pure assembly of series, gaps, stats and phases from GROUP BY rows, and the packed payload."""

from __future__ import annotations

import math

import orjson
import pytest

from vitalcast.telemetry.compute.downsample import coverage
from vitalcast.telemetry.compute.payload import PackedPayload, answer_json, pack, unpack
from vitalcast.telemetry.grid import TelemetryWindow
from vitalcast.testing import build_metrics

MIN = 60_000
WS = 1_000_000_000_000
# an ended session [WS + 60 min, WS + 120 min) with 60 minutes of padding
ENDED = TelemetryWindow(WS, WS + 180 * MIN, WS + 60 * MIN, WS + 120 * MIN, 60)


def is_empty(packed: PackedPayload) -> bool:
    """A no_data payload: no metric had a sample."""
    return not packed.fragments


def row(metric: str, bucket: int, phase: int, values: list[float], times: list[int]):
    """One GROUP BY row built from the samples it stands for (the sum in micro-units)."""
    micro = sum(math.floor(v * 1_000_000 + 0.5) for v in values)
    return (metric, bucket, phase, len(values), micro, min(values), max(values),
            min(times), max(times))  # fmt: skip


def hr_rows(times: list[int], value: float = 70.0, window: TelemetryWindow = ENDED):
    rows: dict[tuple[int, int], tuple[list[float], list[int]]] = {}
    session_end = window.end_ms if window.session_end_ms is None else window.session_end_ms
    for t in times:
        phase = 0 if t < window.session_start_ms else 1 if t < session_end else 2
        values, ts = rows.setdefault(((t - window.start_ms) // MIN, phase), ([], []))
        values.append(value)
        ts.append(t)
    return [row("heart_rate", b, p, v, t) for (b, p), (v, t) in sorted(rows.items())]


def test_a_gap_is_strictly_longer_than_the_threshold():
    """Heart rate at 1m: 120 000 ms apart is no gap, 120 001 ms apart is one."""
    base = WS + 60 * MIN
    times = [base, base + 120_000, base + 240_001]
    metrics, _ = build_metrics(hr_rows(times), ENDED, MIN)
    inner = [g for g in metrics["heart_rate"]["gaps"] if g["start_ms"] != ENDED.start_ms]
    assert {"start_ms": base + 120_000, "end_ms": base + 240_001} in inner
    assert {"start_ms": base, "end_ms": base + 120_000} not in inner


def test_leading_and_trailing_gaps_reach_the_window_edges():
    """Silence from the window start to the first sample and from the last to the end is a gap."""
    times = [WS + 60 * MIN, WS + 61 * MIN]
    metrics, _ = build_metrics(hr_rows(times), ENDED, MIN)
    assert metrics["heart_rate"]["gaps"] == [
        {"start_ms": ENDED.start_ms, "end_ms": WS + 60 * MIN},
        {"start_ms": WS + 61 * MIN, "end_ms": ENDED.end_ms},
    ]


def test_live_window_ends_at_now_and_the_future_is_no_gap():
    """A live window's trailing gap ends at now; a recent last sample leaves none."""
    now = WS + 90 * MIN
    live = TelemetryWindow(WS, now, WS + 60 * MIN, None, 60)
    metrics, _ = build_metrics(hr_rows([WS + 30 * MIN, now - 60_000], window=live), live, MIN)
    assert metrics["heart_rate"]["gaps"][-1]["end_ms"] < now
    metrics, _ = build_metrics(hr_rows([WS, WS + 30 * MIN], window=live), live, MIN)
    assert metrics["heart_rate"]["gaps"][-1] == {"start_ms": WS + 30 * MIN, "end_ms": now}
    assert metrics["heart_rate"]["phases"]["after"] == {
        "min": None,
        "max": None,
        "mean": None,
        "count": 0,
        "coverage": None,
    }
    # a live phase lasts until now: the trailing gap uncovers it, a recent sample covers it
    assert metrics["heart_rate"]["phases"]["during"]["coverage"] == 0.0
    every_minute = [WS + 60 * MIN + k * MIN for k in range(30)]
    metrics, _ = build_metrics(hr_rows(every_minute, window=live), live, MIN)
    assert metrics["heart_rate"]["phases"]["during"]["coverage"] == 1.0


def test_metric_threshold_wins_over_twice_the_bucket():
    """HRV's 10-minute threshold applies at 1m; nine minutes of silence is no gap."""
    start = WS + 60 * MIN
    rows = [row("heart_rate_variability", 60 + 9 * i, 1, [50.0], [start + 9 * i * MIN])
            for i in range(7)]  # fmt: skip
    metrics, _ = build_metrics(rows, ENDED, MIN)
    inner = [g for g in metrics["heart_rate_variability"]["gaps"] if g["start_ms"] >= start]
    assert inner == [{"start_ms": start + 54 * MIN, "end_ms": ENDED.end_ms}]


def test_bucket_straddling_the_session_end_merges_for_series_and_splits_for_phases():
    """Two rows of one bucket (during / after) give one series point and exact phase stats."""
    end = WS + 122 * MIN + 30_000  # not a 5-minute edge
    window = TelemetryWindow(WS, end + 60 * MIN, WS + 60 * MIN, end, 60)
    bucket = (end - WS) // (5 * MIN)
    assert bucket == (end - 2_000 - WS) // (5 * MIN)
    rows = [
        row("heart_rate", bucket, 1, [60.0, 62.0], [end - 2_000, end - 1]),
        row("heart_rate", bucket, 2, [90.0], [end]),
    ]
    metrics, count = build_metrics(rows[::-1], window, 5 * MIN)  # rows come in any order
    series = metrics["heart_rate"]
    assert count == 3
    assert series["t"] == [WS + bucket * 5 * MIN]
    assert series["count"] == [3] and series["mean"] == [pytest.approx(212 / 3)]
    assert (series["min"], series["max"]) == ([60.0], [90.0])
    assert series["phases"]["during"]["mean"] == 61.0
    assert series["phases"]["after"]["max"] == 90.0
    # coverage is time outside gaps: during is covered only from its first sample on (the
    # leading gap ends there), after not at all (the trailing gap starts at its only sample)
    assert series["phases"]["during"]["coverage"] == pytest.approx(2_000 / (end - WS - 60 * MIN))
    assert series["phases"]["after"]["coverage"] == 0.0


def test_cumulative_metrics_sum_without_gaps_or_extremes():
    """Steps: per-bucket sums and counts, {sum, count} stats and phases, no gaps, no min/max."""
    rows = [row("steps", 60, 1, [10.0, 15.0], [WS + 60 * MIN, WS + 60 * MIN + 1]),
            row("steps", 170, 2, [5.0], [WS + 170 * MIN])]  # fmt: skip
    metrics, _ = build_metrics(rows, ENDED, MIN)
    steps = metrics["steps"]
    assert steps["sum"] == [25.0, 5.0] and steps["count"] == [2, 1]
    assert steps["gaps"] == [] and "min" not in steps and "mean" not in steps
    assert steps["stats"] == {"sum": 30.0, "count": 3}
    assert steps["phases"]["after"] == {"sum": 5.0, "count": 1}


def test_coverage_is_the_share_of_the_phase_outside_every_gap():
    """Overlaps are clipped to the phase; an empty phase has no coverage."""
    gaps = [{"start_ms": 0, "end_ms": 30}, {"start_ms": 80, "end_ms": 200}]
    assert coverage(10, 110, gaps) == pytest.approx((110 - 10 - 20 - 30) / 100)
    assert coverage(30, 80, gaps) == 1.0
    assert coverage(100, 150, gaps) == 0.0
    assert coverage(5, 5, gaps) is None


def spo2_rows(times: list[int], window: TelemetryWindow) -> list:
    return [row("blood_oxygen", (t - window.start_ms) // MIN, 1, [97.0], [t]) for t in times]


def test_spo2_every_five_minutes_is_fully_covered_at_one_minute():
    """SpO2 at its 5-minute cadence (10-minute threshold): 4 of 5 buckets are empty, coverage
    is 1.0; a 30-minute dropout in the 60-minute phase halves it (± one sample interval)."""
    start, end = WS + 60 * MIN, WS + 120 * MIN
    window = TelemetryWindow(start - 5 * MIN, end + 5 * MIN, start, end, 5)
    cadence = [start - 5 * MIN + k * 5 * MIN for k in range(14)]
    metrics, _ = build_metrics(spo2_rows(cadence, window), window, MIN)
    phases = metrics["blood_oxygen"]["phases"]
    assert [phases[p]["coverage"] for p in ("before", "during", "after")] == [1.0, 1.0, 1.0]
    dropout = [t for t in cadence if not start + 15 * MIN < t < start + 45 * MIN]
    metrics, _ = build_metrics(spo2_rows(dropout, window), window, MIN)
    during = metrics["blood_oxygen"]["phases"]["during"]["coverage"]
    assert during == pytest.approx(0.5, abs=5 / 60)


def test_packed_payload_joins_to_the_encoded_filtered_document():
    """Any metric selection of a packed payload is byte-identical to encoding it directly."""
    document = {"session_id": "s", "window": {"start_ms": 1}}
    metrics = {"heart_rate": {"t": [1, 2], "mean": [1.5, 2.25]}, "steps": {"sum": [3.0]}}
    packed = unpack(pack(document, metrics))
    for codes in (["heart_rate", "steps"], ["steps"], ["heart_rate"], []):
        expected = orjson.dumps({**document, "metrics": {c: metrics[c] for c in codes}})
        assert packed.json(codes) == expected
    assert packed.json(["unknown"]) == orjson.dumps({**document, "metrics": {}})
    assert not is_empty(packed) and is_empty(unpack(pack(document, {})))
    body = answer_json("stale", telemetry=packed.json(["steps"]), retry_after_s=1)
    assert orjson.loads(body) == {
        "state": "stale",
        "retry_after_seconds": 1,
        "telemetry": {**document, "metrics": {"steps": {"sum": [3.0]}}},
    }
    with pytest.raises(ValueError):
        unpack(b"not a payload")
