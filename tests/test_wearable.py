"""Wearable streams: deterministic in the seed, at the catalog's cadences, units and ranges,
with a session's physiological response and dropouts that record nothing."""

from __future__ import annotations

import itertools
import statistics

from tests.wearable_plans import START_MS, plan, profile
from vitalcast.catalog import BY_CODE, MetricKind
from vitalcast.wearable import MINUTE_MS, Interval, generate


def mean_hr(samples, lo_ms: int, hi_ms: int) -> float:
    return statistics.mean(
        s.value for s in samples if s.metric == "heart_rate" and lo_ms <= s.start_ms < hi_ms
    )


def test_same_seed_same_streams_other_seed_other_values():
    """Generation is deterministic in the seed, record ids included."""
    first = generate(plan(), profile(), seed=5)
    again = generate(plan(), profile(), seed=5)
    other = generate(plan(), profile(), seed=6)
    assert first == again
    assert [s.value for s in first] != [s.value for s in other]
    assert len({s.record_id for s in first}) == len(first)


def test_cadences_units_and_ranges_follow_the_catalog():
    """HR every 5 s; HRV, SpO2, respiration, temperature every few minutes; steps and energy as
    1-minute totals; every value inside the catalog's plausible range after unit conversion."""
    p = plan()
    samples = generate(p, profile(), seed=1)
    by_metric: dict[str, list] = {}
    for s in samples:
        by_metric.setdefault(s.metric, []).append(s)
    assert set(by_metric) == set(BY_CODE)
    span_min = (p.finish_ms - p.begin_ms) // MINUTE_MS
    assert len(by_metric["heart_rate"]) == span_min * 12
    for code, (lo, hi) in {
        "heart_rate_variability": (2, 5),
        "blood_oxygen": (3, 8),
        "respiratory_rate": (2, 4),
        "skin_temperature": (2, 5),
    }.items():
        starts = sorted(s.start_ms for s in by_metric[code])
        steps = {b - a for a, b in itertools.pairwise(starts)}
        assert lo * MINUTE_MS <= min(steps) and max(steps) < hi * MINUTE_MS, code
    for code in ("steps", "active_energy_burned"):
        assert BY_CODE[code].kind is MetricKind.CUMULATIVE
        for s in by_metric[code]:
            assert s.end_ms - s.start_ms == MINUTE_MS and s.start_ms % MINUTE_MS == 0
    assert len(by_metric["active_energy_burned"]) == span_min
    for s in samples:
        metric = BY_CODE[s.metric]
        value = metric.to_canonical(s.value, s.unit)
        assert value is not None and metric.min_value <= value <= metric.max_value, s
    spo2 = [s.value for s in by_metric["blood_oxygen"]]
    assert sum(96 <= v <= 99 for v in spo2) / len(spo2) > 0.8


def test_heart_rate_rises_during_and_recovers_after_hrv_falls():
    """HR: baseline before, a peak during, back near baseline an hour after; HRV drops during."""
    p = plan()
    samples = generate(p, profile(), seed=2)
    before = mean_hr(samples, p.begin_ms, p.start_ms)
    peak = mean_hr(samples, p.start_ms + 8 * MINUTE_MS, p.start_ms + 24 * MINUTE_MS)
    late_after = mean_hr(samples, p.end_ms + 40 * MINUTE_MS, p.finish_ms)
    assert peak - before > 15
    assert abs(late_after - before) < 6
    hrv = [s for s in samples if s.metric == "heart_rate_variability"]
    hrv_before = statistics.mean(s.value for s in hrv if s.start_ms < p.start_ms)
    hrv_during = statistics.mean(
        s.value for s in hrv if p.start_ms + 8 * MINUTE_MS <= s.start_ms < p.end_ms
    )
    assert hrv_during < 0.8 * hrv_before


def test_dropouts_record_nothing():
    """While the watch is off the wrist there are no samples at all (the charts show a gap)."""
    gap = Interval(START_MS + 10 * MINUTE_MS, START_MS + 22 * MINUTE_MS)
    samples = generate(plan(dropouts=(gap,)), profile(), seed=1)
    assert not [s for s in samples if s.start_ms in gap]
    assert [s for s in samples if gap.start_ms - 60_000 <= s.start_ms < gap.start_ms]
