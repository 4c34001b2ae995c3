"""The written definitions of insights, one rule at a time, on GROUP BY rows built by hand (the
pure assembly, no database): what counts as staying recovered, what ends an episode, what a
sparse metric does. test_insights_reference checks every insight end to end."""

from __future__ import annotations

import math

import pytest

from vitalcast.catalog import BY_CODE, METRICS, AlertRule, MetricKind
from vitalcast.telemetry.grid import TelemetryWindow
from vitalcast.testing import build_metrics

MIN = 60_000
WS = 1_000_000_000_000
# an ended session [WS + 60 min, WS + 100 min) with 60 minutes of padding
WINDOW = TelemetryWindow(WS, WS + 160 * MIN, WS + 60 * MIN, WS + 100 * MIN, 60)


def crossed_by(rule: AlertRule, value: float) -> bool:
    """``value`` crosses ``rule``'s threshold."""
    return rule.hits([value]) == [0]


def rows_of(metric: str, samples: list[tuple[int, float]], window: TelemetryWindow = WINDOW):
    """The GROUP BY rows (1-minute buckets) of ``samples`` given as (minute from the window
    start, value), each sample 10 s into its minute; sums in micro-units, as the SQL gives them."""
    groups: dict[tuple[int, int], list[tuple[int, float]]] = {}
    end = window.end_ms if window.session_end_ms is None else window.session_end_ms
    for minute, value in samples:
        t = window.start_ms + minute * MIN + 10_000
        phase = 0 if t < window.session_start_ms else 1 if t < end else 2
        groups.setdefault(((t - window.start_ms) // MIN, phase), []).append((t, value))
    return [
        (metric, bucket, phase, len(g), sum(math.floor(v * 1_000_000 + 0.5) for _t, v in g),
         min(v for _t, v in g),
         max(v for _t, v in g), min(t for t, _v in g), max(t for t, _v in g))
        for (bucket, phase), g in sorted(groups.items())
    ]  # fmt: skip


def hr_insights(level: dict[range, float], *, skip: range = range(0)) -> dict:
    samples = [
        (m, next(v for r, v in level.items() if m in r)) for m in range(160) if m not in skip
    ]
    metrics, _ = build_metrics(rows_of("heart_rate", samples), WINDOW, MIN)
    return metrics["heart_rate"]["insights"]


def test_every_scalar_metric_has_a_tolerance_and_only_scalars_have_rules():
    """The catalog refuses a scalar without a recovery tolerance and rules on a cumulative."""
    for metric in METRICS:
        scalar = metric.kind is MetricKind.SCALAR
        assert (metric.recovery_tolerance is not None) is scalar
        assert scalar or not metric.alert_rules
    assert [r.rule for r in BY_CODE["blood_oxygen"].alert_rules] == ["<95", "<90"]
    assert crossed_by(BY_CODE["heart_rate"].alert_rules[2], 40.0)
    assert not crossed_by(BY_CODE["blood_oxygen"].alert_rules[0], 95.0)


def test_recovery_is_the_first_bucket_end_that_stays_within_tolerance():
    """60 before, 100 during, 100 for 4 minutes after, then 64 (within 5): the 5-minute mean
    of after samples is within at the end of minute 9 after the end, and stays."""
    got = hr_insights({range(60): 60, range(60, 104): 100, range(104, 160): 64})
    assert got["baseline"] == 60 and got["delta"] == 40
    assert got["delta_pct"] == pytest.approx(200 / 3)
    assert (got["recovery_ms"], got["recovery_reason"]) == (9 * MIN, None)


def test_a_relapse_inside_the_five_minutes_restarts_the_wait():
    """Back within at minute 9, but 90 again at minute 11: recovery comes only after the
    relapse has left the rolling mean and the next five minutes stay calm."""
    got = hr_insights(
        {
            range(60): 60,
            range(60, 104): 100,
            range(104, 110): 60,
            range(110, 111): 90,
            range(111, 160): 60,
        }
    )
    # minute 110's sample is in every 5-minute mean up to the end of minute 114 (τ = E + 15)
    assert got["recovery_ms"] == 16 * MIN


def test_a_gap_inside_the_five_minutes_is_no_stay():
    """The watch off for 3 minutes right after the rolling mean comes back: not recovered
    until five minutes without a gap follow."""
    got = hr_insights(
        {range(60): 60, range(60, 104): 100, range(104, 160): 60}, skip=range(106, 109)
    )
    without_gap = hr_insights({range(60): 60, range(60, 104): 100, range(104, 160): 60})
    assert without_gap["recovery_ms"] == 9 * MIN
    # the gap [minute 105, minute 109) must lie before τ
    assert got["recovery_ms"] == 10 * MIN


def test_never_back_is_not_within_the_window():
    got = hr_insights({range(60): 60, range(60, 160): 80})
    assert (got["recovery_ms"], got["recovery_reason"]) == (None, "not_within_window")


def test_a_sparse_metric_recovers_and_its_episode_spans_empty_buckets():
    """SpO₂ every 5 minutes (no gap: its threshold is 10 minutes), so its before phase is fully
    covered (coverage is time, DESIGN v2) and empty 1-minute buckets do not break its run of
    low readings; back within 1 % once the 93 at the end has left the rolling mean."""
    samples = [(m, 97.0 if m < 60 or m >= 105 else 93.0) for m in range(0, 160, 5)]
    metrics, _ = build_metrics(rows_of("blood_oxygen", samples), WINDOW, MIN)
    got = metrics["blood_oxygen"]["insights"]
    assert got["episodes"] == [
        {"rule": "<95", "level": "low", "start_ms": WS + 60 * MIN, "end_ms": WS + 101 * MIN,
         "extreme": 93.0}
    ]  # fmt: skip
    assert got["baseline"] == 97 and got["recovery_ms"] == 6 * MIN


def test_a_gap_ends_an_episode():
    """Heart rate ≥ 111 with the watch off for 5 minutes in the middle: two episodes."""
    high = {range(60): 60, range(60, 100): 120, range(100, 160): 60}
    got = hr_insights(high, skip=range(70, 75))
    assert [(e["rule"], e["start_ms"], e["end_ms"]) for e in got["episodes"]] == [
        (">=111", WS + 60 * MIN, WS + 70 * MIN),
        (">=111", WS + 75 * MIN, WS + 100 * MIN),
    ]


def test_without_a_baseline_there_is_no_peak_and_no_recovery():
    got = hr_insights({range(60): 60, range(60, 160): 80}, skip=range(0, 59))
    assert got["baseline_reason"] == "low_coverage"
    assert got["peak"] is None and got["recovery_reason"] == "no_baseline"


def test_a_live_window_has_no_recovery_yet():
    live = TelemetryWindow(WS, WS + 90 * MIN, WS + 60 * MIN, None, 60)
    samples = [(m, 60.0 if m < 60 else 90.0) for m in range(90)]
    metrics, _ = build_metrics(rows_of("heart_rate", samples, live), live, MIN)
    got = metrics["heart_rate"]["insights"]
    assert got["delta"] == 30 and got["recovery_reason"] == "live"


def test_cumulative_rates_per_phase():
    samples = [(m, 10.0 if m < 60 else 30.0 if m < 100 else 0.0) for m in range(160)]
    metrics, _ = build_metrics(rows_of("steps", samples), WINDOW, MIN)
    assert metrics["steps"]["insights"] == {
        "during_total": 1200.0,
        "rate_per_min": {"before": 10.0, "during": 30.0, "after": 0.0},
    }


def test_insights_can_be_left_out_for_a_measurement():
    rows = rows_of("heart_rate", [(m, 70.0) for m in range(160)])
    without, _ = build_metrics(rows, WINDOW, MIN, with_insights=False)
    with_them, _ = build_metrics(rows, WINDOW, MIN)
    assert "insights" not in without["heart_rate"]
    assert {k: v for k, v in with_them["heart_rate"].items() if k != "insights"} == without[
        "heart_rate"
    ]
