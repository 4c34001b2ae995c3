"""Telemetry numbers, checked against a plain-Python recomputation from the raw samples.

Nothing here imports the implementation's downsampling, window or catalog code: the expected
window (the grid anchored at the session start, the pad rounded up to whole buckets), buckets,
gaps, stats and phases (coverage as the share of time outside gaps) are recomputed from the
definitions in docs/design.md, sample by sample, so a shared mistake cannot hide. Samples go in through the real POST /api/v1/samples
(inserts, identical re-sends, updates of value and time, deletions) and the answer comes back
through the real GET on SQLite and PostgreSQL.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.properties import on_real_services
from tests.telemetry.conftest import MINUTE, iso

# From docs/design.md ("Metric catalog"), written out again on purpose (not imported from vitalcast.catalog).
SCALAR_GAP_MS = {
    "heart_rate": 2 * MINUTE,
    "heart_rate_variability": 10 * MINUTE,
    "blood_oxygen": 10 * MINUTE,
    "respiratory_rate": 10 * MINUTE,
    "skin_temperature": 10 * MINUTE,
}
CUMULATIVE = ("steps", "active_energy_burned")
VALUES = {
    "heart_rate": (35.0, 190.0),
    "heart_rate_variability": (5.0, 250.0),
    "blood_oxygen": (80.0, 100.0),
    "respiratory_rate": (6.0, 40.0),
    "skin_temperature": (28.0, 39.0),
    "steps": (0.0, 300.0),
    "active_energy_burned": (0.0, 40.0),
}
METRIC_CODES = tuple(VALUES)


@dataclass(frozen=True)
class Scenario:
    window_minutes: int
    resolution: str
    live: bool
    duration_ms: int
    start_jitter_ms: int
    #: (source, record_id, metric, offset from session start, value)
    first: tuple[tuple[str, str, str, int, float], ...]
    #: the second batch: re-sends, updates and new samples, and the deletions
    second: tuple[tuple[str, str, str, int, float], ...]
    deleted: tuple[tuple[str, str], ...]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    # every window 15…180 on both grids: the edges, windows that are no multiple of 5, any
    window_minutes = draw(
        st.one_of(st.sampled_from([15, 17, 59, 61, 178, 180]), st.integers(15, 180))
    )
    resolution = draw(st.sampled_from(["1m", "5m"]))
    bucket = MINUTE if resolution == "1m" else 5 * MINUTE
    live = draw(st.booleans())
    duration = draw(st.one_of(st.just(0), st.integers(0, 150 * MINUTE)))
    pad = -(-window_minutes * MINUTE // bucket) * bucket
    lo, hi = -pad, duration if live else duration + pad
    # window and session edges, bucket edges and their neighbours
    edges = [lo, lo + 1, hi - 1, hi, 0, -1, 1, duration, duration - 1, duration + 1]
    edges += [lo + k * bucket + d for k in (1, 2, 7, 30) for d in (-1, 0, 1)]
    anchor = st.one_of(st.sampled_from(edges), st.integers(lo - 20 * MINUTE, hi + 20 * MINUTE))
    # steps between consecutive samples: exactly at and around every gap threshold, bucket
    # widths, duplicates, dense cadences and long silences
    thresholds = [2 * bucket, 10 * MINUTE, bucket]
    exact = [t + d for t in thresholds for d in (-1, 0, 1)]
    step = st.one_of(
        st.sampled_from([0, 1, *exact]),
        st.integers(1, 90_000),
        st.integers(0, 40 * MINUTE),
    )
    latest = duration + 5 * MINUTE - 1 if live else hi + 20 * MINUTE

    def offset() -> int:
        return min(draw(anchor), latest)

    metrics = draw(st.lists(st.sampled_from(METRIC_CODES), max_size=3, unique=True))
    first: list[tuple[str, str, str, int, float]] = []
    for metric in metrics:
        low, high = VALUES[metric]
        at = offset()
        for index in range(draw(st.integers(1, 30))):
            jump = draw(st.integers(0, 4)) == 0
            at = offset() if jump else min(at + draw(step), latest)
            source = draw(st.sampled_from(["polar", "healthkit"]))
            value = draw(st.floats(low, high, allow_nan=False, allow_infinity=False))
            first.append((source, f"{metric}-{index}", metric, at, value))
    records = sorted({(s, r): m for s, r, m, _o, _v in first}.items())
    second: list[tuple[str, str, str, int, float]] = []
    deleted: list[tuple[str, str]] = []
    by_id = {(s, r): (m, o, v) for s, r, m, o, v in first}
    for (source, record_id), metric in records:
        action = draw(st.sampled_from(["keep", "keep", "resend", "update_value", "move", "delete"]))
        _m, old_offset, old_value = by_id[(source, record_id)]
        low, high = VALUES[metric]
        if action == "resend":
            second.append((source, record_id, metric, old_offset, old_value))
        elif action == "update_value":
            new_value = draw(st.floats(low, high, allow_nan=False, allow_infinity=False))
            second.append((source, record_id, metric, old_offset, new_value))
        elif action == "move":
            second.append((source, record_id, metric, offset(), old_value))
        elif action == "delete":
            deleted.append((source, record_id))
    return Scenario(
        window_minutes=window_minutes,
        resolution=resolution,
        live=live,
        duration_ms=duration,
        start_jitter_ms=draw(st.integers(0, 59_999)),
        first=tuple(first),
        second=tuple(second),
        deleted=tuple(deleted),
    )


def _total(values: list[float]) -> float:
    """Sums and means count every value in micro-units, floor(v × 10^6 + 0.5): exact and the same
    in any order, so that an incremental compute can equal a full one byte for byte."""
    return sum(math.floor(v * 1_000_000 + 0.5) for v in values) / 1_000_000


def _stats(values: list[float], cumulative: bool) -> dict[str, Any]:
    if cumulative:
        return {"sum": _total(values), "count": len(values)}
    if not values:
        return {"min": None, "max": None, "mean": None, "count": 0}
    return {
        "min": min(values),
        "max": max(values),
        "mean": _total(values) / len(values),
        "count": len(values),
    }


def expected_metrics(
    samples: list[tuple[str, int, float]],
    *,
    window_start: int,
    window_end: int,
    session_start: int,
    session_end: int | None,
    bucket: int,
) -> dict[str, Any]:
    """The payload's ``metrics`` from first principles: one sample at a time."""
    phases = {
        "before": (window_start, session_start),
        "during": (session_start, window_end if session_end is None else session_end),
        "after": (window_end if session_end is None else session_end, window_end),
    }
    result: dict[str, Any] = {}
    for metric in METRIC_CODES:
        mine = sorted(
            (t, v) for m, t, v in samples if m == metric and window_start <= t < window_end
        )
        if not mine:
            continue
        cumulative = metric in CUMULATIVE
        buckets: dict[int, list[float]] = {}
        for t, v in mine:
            buckets.setdefault(math.floor((t - window_start) / bucket), []).append(v)
        indexes = sorted(buckets)
        series: dict[str, Any] = {"t": [window_start + i * bucket for i in indexes]}
        if cumulative:
            series["sum"] = [_total(buckets[i]) for i in indexes]
        else:
            series["mean"] = [_total(buckets[i]) / len(buckets[i]) for i in indexes]
            series["min"] = [min(buckets[i]) for i in indexes]
            series["max"] = [max(buckets[i]) for i in indexes]
        series["count"] = [len(buckets[i]) for i in indexes]
        gaps: list[dict[str, int]] = []
        if not cumulative:
            threshold = max(2 * bucket, SCALAR_GAP_MS[metric])
            times = [t for t, _v in mine]
            if times[0] - window_start > threshold:
                gaps.append({"start_ms": window_start, "end_ms": times[0]})
            for a, b in itertools.pairwise(times):
                if b - a > threshold:
                    gaps.append({"start_ms": a, "end_ms": b})
            if window_end - times[-1] > threshold:
                gaps.append({"start_ms": times[-1], "end_ms": window_end})
        series["gaps"] = gaps
        series["stats"] = _stats([v for _t, v in mine], cumulative)
        phase_out: dict[str, Any] = {}
        for name, (lo, hi) in phases.items():
            inside = [(t, v) for t, v in mine if lo <= t < hi]
            phase = _stats([v for _t, v in inside], cumulative)
            if not cumulative:
                phase["coverage"] = _time_outside(lo, hi, gaps)
            phase_out[name] = phase
        series["phases"] = phase_out
        result[metric] = series
    return result


def _time_outside(lo: int, hi: int, gaps: list[dict[str, int]]) -> float | None:
    """Share of [lo, hi) outside every gap, millisecond by millisecond in spirit: the gaps are
    disjoint, so the uncovered time is the sum of their clipped lengths."""
    if hi <= lo:
        return None
    uncovered = 0
    for gap in gaps:
        uncovered += max(0, min(gap["end_ms"], hi) - max(gap["start_ms"], lo))
    return (hi - lo - uncovered) / (hi - lo)


def assert_close(actual: Any, expected: Any, path: str = "") -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict), path
        assert set(actual) == set(expected), (path, sorted(actual), sorted(expected))
        for key in expected:
            assert_close(actual[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), (path, actual, expected)
        for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_close(a, e, f"{path}[{index}]")
    elif isinstance(expected, float):
        assert isinstance(actual, int | float), (path, actual)
        assert math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-9), (path, actual, expected)
    else:
        assert actual == expected, (path, actual, expected)


@on_real_services(30)
@given(scenario=scenarios())
async def test_payload_matches_independent_recomputation(tc, users, scenario: Scenario):
    """Buckets, gaps, stats and phases equal a sample-by-sample recomputation (floats to 1e-9)."""
    _user_id, token = await users.create()
    headers = {"Authorization": f"Bearer {token}"}
    tc.clock.advance(24 * 3_600_000)
    now = tc.clock.now_ms()
    bucket = MINUTE if scenario.resolution == "1m" else 5 * MINUTE
    pad = -(-scenario.window_minutes * MINUTE // bucket) * bucket
    if scenario.live:
        start = now - scenario.duration_ms - scenario.start_jitter_ms
        end = None
    else:
        start = now - scenario.duration_ms - pad - 25 * MINUTE - scenario.start_jitter_ms
        end = start + scenario.duration_ms
    session_id = await tc.start_session(headers, start)

    def wire(batch: tuple[tuple[str, str, str, int, float], ...]) -> list[dict[str, Any]]:
        return [
            {"source": s, "record_id": r, "metric": m, "value": v, "start": iso(start + o)}
            for s, r, m, o, v in batch
        ]

    await tc.post_samples(headers, wire(scenario.first))
    await tc.post_samples(headers, wire(scenario.second), deleted=scenario.deleted)
    if end is not None:
        await tc.end_session(headers, session_id, end)
    final = {(s, r): (m, start + o, v) for s, r, m, o, v in scenario.first + scenario.second}
    for record in scenario.deleted:
        final.pop(record, None)

    params = {
        "window_minutes": scenario.window_minutes,
        "resolution": scenario.resolution,
        "metrics": "all",
    }
    await tc.get(headers, session_id, **params)
    await tc.settle()
    response = await tc.get(headers, session_id, **params)
    body = response.json()
    session = (await tc.http.get(f"/api/v1/sessions/{session_id}", headers=headers)).json()

    window_start = start - pad
    window_end = now if end is None else end + pad
    expected = expected_metrics(
        list(final.values()),
        window_start=window_start,
        window_end=window_end,
        session_start=start,
        session_end=end,
        bucket=bucket,
    )
    assert response.status_code == 200
    assert body["state"] == ("ready" if expected else "no_data")
    payload = body["telemetry"]
    assert payload["source_watermark"] == session["source_watermark"]
    assert payload["live"] is scenario.live
    assert (payload["resolution"], payload["bucket_ms"]) == (scenario.resolution, bucket)
    assert payload["window"] == {
        "start_ms": window_start,
        "end_ms": window_end,
        "session_start_ms": start,
        "session_end_ms": end,
        "window_minutes": scenario.window_minutes,
    }
    assert_close(
        {
            # insights have their own reference (test_insights_reference.py)
            code: {
                k: v for k, v in m.items() if k not in ("display_name", "unit", "kind", "insights")
            }
            for code, m in payload["metrics"].items()
        },
        expected,
    )
    for code, metric in payload["metrics"].items():
        assert metric["kind"] == ("cumulative" if code in CUMULATIVE else "scalar")
        # the session start is a bucket edge, so no bucket mixes samples from before and after it
        assert all((t - start) % bucket == 0 for t in metric["t"])
        for t in metric["t"]:
            sides = {
                at >= start
                for m, at, _v in final.values()
                if m == code and t <= at < t + bucket and window_start <= at < window_end
            }
            assert len(sides) == 1, (code, t)
