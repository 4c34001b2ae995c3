"""Every insight of a payload equals its recomputation from the raw samples (insights_reference),
for generated sessions and for the named edge cases, through the real POST /samples and GET
telemetry on SQLite and PostgreSQL.

Values lie on a grid of quarters, so every sum is exact in floating point on both databases and
in Python: comparisons against a tolerance or an alert threshold are then decided identically
everywhere, and the generator can put values exactly on a threshold or a tolerance edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from tests.properties import on_real_services
from tests.telemetry.conftest import MINUTE, iso
from tests.telemetry.insights_reference import CUMULATIVE, SCALAR, insights
from tests.telemetry.test_correctness import assert_close

#: per metric: (lowest, highest) plausible value, resting range, sampling cadences (ms)
LIMITS = {
    "heart_rate": (20, 300),
    "heart_rate_variability": (1, 500),
    "blood_oxygen": (50, 100),
    "respiratory_rate": (4, 60),
    "skin_temperature": (25, 42),
    "steps": (0, 10_000),
    "active_energy_burned": (0, 5_000),
}
RESTING = {
    "heart_rate": (45, 95),
    "heart_rate_variability": (20, 90),
    "blood_oxygen": (91, 99),
    "respiratory_rate": (7, 22),
    "skin_temperature": (31, 35),
    "steps": (0, 60),
    "active_energy_burned": (0, 8),
}
CADENCES = {
    "heart_rate": (15_000, MINUTE, 5 * MINUTE),
    "heart_rate_variability": (MINUTE, 5 * MINUTE),
    "blood_oxygen": (MINUTE, 2 * MINUTE, 5 * MINUTE, 10 * MINUTE),
    "respiratory_rate": (MINUTE, 5 * MINUTE),
    "skin_temperature": (MINUTE, 5 * MINUTE),
    "steps": (MINUTE,),
    "active_energy_burned": (MINUTE,),
}
#: values right on (and a quarter beside) the catalog's alert thresholds
EDGES = {
    "heart_rate": (40, 40.25, 110.75, 111, 130.75, 131, 150),
    "blood_oxygen": (89.75, 90, 94.75, 95, 95.25),
    "respiratory_rate": (8, 8.25, 20.75, 21, 25, 30),
}
METRICS = (*SCALAR, *CUMULATIVE)


@dataclass(frozen=True)
class Scenario:
    window_minutes: int
    resolution: str
    live: bool
    duration_ms: int
    start_jitter_ms: int
    #: (metric, offset from the session start in ms, value)
    samples: tuple[tuple[str, int, float], ...]


def quarters(low: float, high: float) -> st.SearchStrategy[float]:
    return st.integers(int(low * 4), int(high * 4)).map(lambda q: q / 4)


@st.composite
def streams(draw: st.DrawFn, code: str, *, pad: int, duration: int, live: bool) -> list[Any]:
    """One metric: a resting level before, a shifted level during, after either recovering
    (at once or after a while) or not; dropouts, noise, threshold values and stray samples."""
    low, high = LIMITS[code]
    cadence = draw(st.sampled_from(CADENCES[code]))
    rest = draw(quarters(*RESTING[code]))
    shift = draw(st.sampled_from([0.0, 0.25, 1.0, 3.0, 12.0, -2.0, -8.0, 40.0]))
    settle = draw(st.sampled_from([0, 2 * MINUTE, 9 * MINUTE, 30 * MINUTE, None]))
    noise = draw(st.lists(st.sampled_from([0.0, 0.25, -0.5, 1.0, -1.0, 4.0]), min_size=1))
    worn = -pad - 5 * MINUTE
    begin = draw(st.sampled_from([worn, worn, worn, -pad // 2, -pad // 4, -MINUTE, 0, cadence]))
    stop = duration if live else duration + pad + 5 * MINUTE
    dropouts = draw(
        st.lists(
            st.tuples(
                st.integers(-pad, stop),
                st.sampled_from([90_000, 3 * MINUTE, 6 * MINUTE, 11 * MINUTE, 25 * MINUTE]),
            ),
            max_size=2,
        )
    )
    edges = EDGES.get(code, ())
    spikes = draw(st.sets(st.integers(0, 400), max_size=6)) if edges else set()
    samples = []
    t = begin + draw(st.integers(0, cadence - 1))
    index = 0
    while t < stop:
        if not any(a <= t < a + length for a, length in dropouts):
            if t < 0:
                level = rest
            elif t < duration or settle is None or t < duration + settle:
                level = rest + shift
            else:
                level = rest
            value = level + noise[index % len(noise)]
            if index in spikes:
                value = draw(st.sampled_from(edges))
            samples.append((code, t, min(max(value, low), high)))
        t += cadence
        index += 1
    strays = draw(
        st.lists(st.tuples(st.integers(-pad - 10 * MINUTE, stop), quarters(low, high)), max_size=3)
    )
    samples += [(code, at, value) for at, value in strays]
    return samples


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    window_minutes = draw(st.sampled_from([15, 30, 60]))
    resolution = draw(st.sampled_from(["1m", "1m", "5m"]))
    live = draw(st.sampled_from([False, False, True]))
    duration = draw(st.integers(0, 90)) * MINUTE + draw(st.sampled_from([0, 1, 29_999, 59_999]))
    pad = window_minutes * MINUTE
    codes = draw(st.lists(st.sampled_from(METRICS), min_size=1, max_size=3, unique=True))
    samples: list[tuple[str, int, float]] = []
    for code in codes:
        samples += draw(streams(code, pad=pad, duration=duration, live=live))
    # one sample per (metric, time): the record id is made of them
    unique = {(code, at): value for code, at, value in samples}
    return Scenario(
        window_minutes=window_minutes,
        resolution=resolution,
        live=live,
        duration_ms=duration,
        start_jitter_ms=draw(st.integers(0, 59_999)),
        samples=tuple((code, at, value) for (code, at), value in sorted(unique.items())),
    )


async def payload_and_reference(tc, users, scenario: Scenario) -> tuple[dict[str, Any], Any]:
    """Post the scenario through the API as a fresh user; the payload and the reference."""
    _user_id, token = await users.create()
    headers = {"Authorization": f"Bearer {token}"}
    tc.clock.advance(24 * 3_600_000)
    now = tc.clock.now_ms()
    pad = scenario.window_minutes * MINUTE
    if scenario.live:
        start = now - scenario.duration_ms - scenario.start_jitter_ms
        end = None
    else:
        start = now - scenario.duration_ms - pad - 25 * MINUTE - scenario.start_jitter_ms
        end = start + scenario.duration_ms
    session_id = await tc.start_session(headers, start)
    wire = [
        {"source": "polar", "record_id": f"{code}-{at}", "metric": code, "value": value,
         "start": iso(start + at)}
        for code, at, value in scenario.samples
        if start + at <= now
    ]  # fmt: skip
    for offset in range(0, len(wire), 4000):
        await tc.post_samples(headers, wire[offset : offset + 4000])
    if end is not None:
        await tc.end_session(headers, session_id, end)
    params = {
        "window_minutes": scenario.window_minutes,
        "resolution": scenario.resolution,
        "metrics": "all",
    }
    await tc.get(headers, session_id, **params)
    await tc.settle()
    response = await tc.get(headers, session_id, **params)
    assert response.status_code == 200, response.text
    payload = response.json()["telemetry"]
    window = payload["window"]
    expected = insights(
        [(code, start + at, value) for code, at, value in scenario.samples if start + at <= now],
        window_start=window["start_ms"],
        window_end=window["end_ms"],
        session_start=start,
        session_end=end,
        bucket=payload["bucket_ms"],
    )
    return payload, expected


def actual_insights(payload: dict[str, Any]) -> dict[str, Any]:
    return {code: metric["insights"] for code, metric in payload["metrics"].items()}


@on_real_services(40)
@given(scenario=scenarios())
async def test_insights_match_the_reference_for_generated_sessions(tc, users, scenario):
    """Baseline, delta, peak, recovery and episodes (scalar) and totals and rates (cumulative)
    equal the recomputation from raw samples; decisions exactly, figures to 1e-9."""
    payload, expected = await payload_and_reference(tc, users, scenario)
    assert_close(actual_insights(payload), expected)
    for code, found in expected.items():
        if code in SCALAR:
            event(f"baseline {found['baseline_reason'] or 'present'}")
            event(f"recovery {found['recovery_reason'] or 'found'}")
            event(f"peak {'none' if found['peak'] is None else 'found'}")
            event(f"episodes {min(len(found['episodes']), 3)}")


# -- the named edge cases: each checks that its case really occurs, then the reference --------


def every_minute(
    first: int, last: int, value: Any, code: str = "heart_rate"
) -> list[tuple[str, int, float]]:
    """Samples every minute in [first, last) minutes from the session start (30 s into each
    minute); ``value(minute)`` or a constant."""
    pick = value if callable(value) else (lambda _m: value)
    return [(code, m * MINUTE + 30_000, float(pick(m))) for m in range(first, last)]


def ended(samples: list[tuple[str, int, float]], *, minutes: int = 40, **kw: Any) -> Scenario:
    defaults = {"window_minutes": 60, "resolution": "1m", "start_jitter_ms": 0}
    return Scenario(
        **{**defaults, **kw},
        live=False,
        duration_ms=minutes * MINUTE,
        samples=tuple(samples),
    )


async def check(tc, users, scenario: Scenario) -> dict[str, Any]:
    payload, expected = await payload_and_reference(tc, users, scenario)
    actual = actual_insights(payload)
    assert_close(actual, expected)
    return actual


async def test_no_before_data(tc, users):
    """A watch put on at the session start: no baseline (no_before_data), so no delta, no peak
    and no recovery (no_baseline); the during mean is still there."""
    got = await check(tc, users, ended(every_minute(0, 100, 70)))
    hr = got["heart_rate"]
    assert (hr["baseline"], hr["baseline_reason"]) == (None, "no_before_data")
    assert hr["during_mean"] == 70 and hr["delta"] is None and hr["peak"] is None
    assert (hr["recovery_ms"], hr["recovery_reason"]) == (None, "no_baseline")


async def test_baseline_below_half_coverage(tc, users):
    """Samples only in the last 20 of the 60 minutes before: coverage below 50 %, no baseline."""
    got = await check(tc, users, ended(every_minute(-20, 100, 70)))
    assert got["heart_rate"]["baseline_reason"] == "low_coverage"
    assert got["heart_rate"]["baseline"] is None


async def test_peak_in_the_first_bucket(tc, users):
    """The highest during-bucket mean is the session's first minute: after_start_ms is 0."""
    samples = every_minute(-60, 100, lambda m: 150 if m == 0 else 60 if m < 0 else 100)
    got = await check(tc, users, ended(samples, start_jitter_ms=0))
    peak = got["heart_rate"]["peak"]
    assert peak["value"] == 150 and peak["after_start_ms"] == 0


async def test_a_peak_downwards_follows_a_negative_delta(tc, users):
    """SpO₂ falling during the session peaks at its lowest bucket mean."""
    samples = every_minute(
        -60, 100, lambda m: 97 if m < 0 or m >= 40 else 93 if m != 25 else 88, code="blood_oxygen"
    )
    got = await check(tc, users, ended(samples))
    spo2 = got["blood_oxygen"]
    assert spo2["delta"] < 0
    assert spo2["peak"]["value"] == 88 and spo2["peak"]["after_start_ms"] == 25 * MINUTE


async def test_recovery_is_measured_from_the_session_end(tc, users):
    """Heart rate 60 before, 120 during, 90 for 7 minutes after, then 61: the rolling mean is
    back within 5 bpm at the end of the 12th minute after the end, and stays."""
    samples = every_minute(
        -60, 100, lambda m: 60 if m < 0 else 120 if m < 40 else 90 if m < 47 else 61
    )
    got = await check(tc, users, ended(samples))
    assert got["heart_rate"]["recovery_ms"] == 12 * MINUTE


async def test_a_metric_that_never_recovers(tc, users):
    """Still 20 bpm above the baseline when the window ends: not_within_window."""
    samples = every_minute(-60, 100, lambda m: 60 if m < 0 else 80)
    got = await check(tc, users, ended(samples))
    hr = got["heart_rate"]
    assert hr["baseline"] == 60 and hr["delta"] == 20
    assert (hr["recovery_ms"], hr["recovery_reason"]) == (None, "not_within_window")


async def test_episodes_are_broken_by_gaps(tc, users):
    """SpO₂ below 95 every two minutes through the session with a 15-minute dropout in the
    middle: two "<95" episodes, one on each side of the gap; one reading below 90 is a critical
    episode inside the first."""
    samples = [
        ("blood_oxygen", m * MINUTE + 30_000, 89.0 if m == 6 else 93.0 if 0 <= m < 40 else 97.0)
        for m in range(-60, 100, 2)
        if not 14 <= m < 29
    ]
    got = await check(tc, users, ended(samples))
    episodes = got["blood_oxygen"]["episodes"]
    low = [e for e in episodes if e["rule"] == "<95"]
    critical = [e for e in episodes if e["rule"] == "<90"]
    assert len(low) == 2 and low[0]["end_ms"] < low[1]["start_ms"]
    assert [e["level"] for e in low] == ["low", "low"]
    assert len(critical) == 1 and critical[0]["extreme"] == 89
    assert low[0]["start_ms"] <= critical[0]["start_ms"] < critical[0]["end_ms"] <= low[0]["end_ms"]


async def test_a_live_session_has_what_is_known_so_far(tc, users):
    """While live: baseline, delta, peak and episodes so far; recovery null with reason live."""
    samples = every_minute(-60, 20, lambda m: 62 if m < 0 else 115)
    scenario = Scenario(
        window_minutes=60,
        resolution="1m",
        live=True,
        duration_ms=20 * MINUTE + 10_000,
        start_jitter_ms=0,
        samples=tuple(samples),
    )
    got = await check(tc, users, scenario)
    hr = got["heart_rate"]
    assert hr["baseline"] == 62 and hr["delta"] == 53 and hr["peak"]["value"] == 115
    assert (hr["recovery_ms"], hr["recovery_reason"]) == (None, "live")
    assert [e["rule"] for e in hr["episodes"]] == [">=111"]


async def test_cumulative_totals_and_rates(tc, users):
    """Steps: the during total and per-phase rates per minute."""
    samples = every_minute(-60, 100, lambda m: 10 if m < 0 else 100 if m < 40 else 0, code="steps")
    got = await check(tc, users, ended(samples))
    steps = got["steps"]
    assert steps["during_total"] == 4000
    assert steps["rate_per_min"] == pytest.approx({"before": 10, "during": 100, "after": 0})
