"""Insights from first principles: raw samples in, the payload's ``insights`` out, in plain Python.

Nothing here imports vitalcast: the catalog facts are written out again from
docs/design.md ("Metric catalog"), gaps and coverage are recomputed from its definitions (coverage is
time outside gaps), and every insight follows the written definition in the README's "Insights"
section sample by sample, so a mistake shared with the implementation cannot hide. The one thing
taken from the payload is its window (start, end and bucket), which test_correctness checks.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

MINUTE = 60_000
ROLLING_MS = 5 * MINUTE
HOLD_MS = 5 * MINUTE

SCALAR = (
    "heart_rate",
    "heart_rate_variability",
    "blood_oxygen",
    "respiratory_rate",
    "skin_temperature",
)
CUMULATIVE = ("steps", "active_energy_burned")
GAP_MS = {
    "heart_rate": 2 * MINUTE,
    "heart_rate_variability": 10 * MINUTE,
    "blood_oxygen": 10 * MINUTE,
    "respiratory_rate": 10 * MINUTE,
    "skin_temperature": 10 * MINUTE,
}
TOLERANCE = {
    "heart_rate": 5.0,
    "heart_rate_variability": 5.0,
    "blood_oxygen": 1.0,
    "respiratory_rate": 1.0,
    "skin_temperature": 0.2,
}


@dataclass(frozen=True)
class Rule:
    name: str
    high: bool
    crosses: Callable[[float], bool]
    level: str


def _rule(op: str, threshold: float, level: str) -> Rule:
    compare = {">=": operator.ge, "<=": operator.le, "<": operator.lt}[op]
    return Rule(f"{op}{threshold:g}", op[0] == ">", lambda v: compare(v, threshold), level)


RULES = {
    "heart_rate": [
        _rule(">=", 111, "elevated"),
        _rule(">=", 131, "critical"),
        _rule("<=", 40, "critical"),
    ],
    "blood_oxygen": [_rule("<", 95, "low"), _rule("<", 90, "critical")],
    "respiratory_rate": [
        _rule(">=", 21, "elevated"),
        _rule(">=", 25, "critical"),
        _rule("<=", 8, "critical"),
    ],
}


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def gaps_of(times: Sequence[int], threshold: int, lo: int, hi: int) -> list[tuple[int, int]]:
    """Silences longer than ``threshold``: window start to the first sample, between samples,
    the last sample to the window end."""
    gaps = []
    if times[0] - lo > threshold:
        gaps.append((lo, times[0]))
    gaps += [(a, b) for a, b in itertools.pairwise(times) if b - a > threshold]
    if hi - times[-1] > threshold:
        gaps.append((times[-1], hi))
    return gaps


def coverage(lo: int, hi: int, gaps: Sequence[tuple[int, int]]) -> float | None:
    """Share of [lo, hi) outside every gap."""
    if hi <= lo:
        return None
    silent = sum(max(0, min(b, hi) - max(a, lo)) for a, b in gaps)
    return (hi - lo - silent) / (hi - lo)


def insights(
    samples: Sequence[tuple[str, int, float]],
    *,
    window_start: int,
    window_end: int,
    session_start: int,
    session_end: int | None,
    bucket: int,
) -> dict[str, Any]:
    """``{metric code: insights}`` for every metric with a sample in the window."""
    end = window_end if session_end is None else session_end
    phases = {
        "before": (window_start, session_start),
        "during": (session_start, end),
        "after": (end, window_end),
    }
    result: dict[str, Any] = {}
    for code in (*SCALAR, *CUMULATIVE):
        mine = sorted((t, v) for m, t, v in samples if m == code and window_start <= t < window_end)
        if not mine:
            continue
        if code in CUMULATIVE:
            result[code] = _cumulative(mine, phases)
        else:
            result[code] = _scalar(
                code,
                mine,
                phases,
                live=session_end is None,
                window_start=window_start,
                window_end=window_end,
                bucket=bucket,
            )
    return result


def _cumulative(
    mine: Sequence[tuple[int, float]], phases: dict[str, tuple[int, int]]
) -> dict[str, Any]:
    rates = {}
    for name, (lo, hi) in phases.items():
        total = float(sum(v for t, v in mine if lo <= t < hi))
        rates[name] = total / ((hi - lo) / MINUTE) if hi > lo else None
    during_lo, during_hi = phases["during"]
    during_total = float(sum(v for t, v in mine if during_lo <= t < during_hi))
    return {"during_total": during_total, "rate_per_min": rates}


def _scalar(
    code: str,
    mine: Sequence[tuple[int, float]],
    phases: dict[str, tuple[int, int]],
    *,
    live: bool,
    window_start: int,
    window_end: int,
    bucket: int,
) -> dict[str, Any]:
    gaps = gaps_of([t for t, _v in mine], max(2 * bucket, GAP_MS[code]), window_start, window_end)

    def values_in(lo: int, hi: int) -> list[float]:
        return [v for t, v in mine if lo <= t < hi]

    before = values_in(*phases["before"])
    before_coverage = coverage(*phases["before"], gaps)
    baseline: float | None = None
    baseline_reason = None
    if not before:
        baseline_reason = "no_before_data"
    elif before_coverage is None or before_coverage < 0.5:
        baseline_reason = "low_coverage"
    else:
        baseline = mean(before)
    during_mean = mean(values_in(*phases["during"]))
    delta = None if baseline is None or during_mean is None else during_mean - baseline

    def bucket_of(t: int) -> int:
        return math.floor((t - window_start) / bucket)

    # peak: bucket means of the during samples only
    peak = None
    session_start = phases["during"][0]
    if delta is not None:
        by_bucket: dict[int, list[float]] = {}
        for t, v in mine:
            if phases["during"][0] <= t < phases["during"][1]:
                by_bucket.setdefault(bucket_of(t), []).append(v)
        means = [(k, sum(vs) / len(vs)) for k, vs in sorted(by_bucket.items())]
        best = max(m for _k, m in means) if delta >= 0 else min(m for _k, m in means)
        first = next(k for k, m in means if m == best)
        at = max(window_start + first * bucket, session_start)
        peak = {"value": best, "at_ms": at, "after_start_ms": at - session_start}

    recovery_ms, recovery_reason = None, None
    if live:
        recovery_reason = "live"
    elif baseline is None:
        recovery_reason = "no_baseline"
    else:
        recovery_ms = _recovery(
            [(t, v) for t, v in mine if t >= phases["after"][0]],
            baseline,
            TOLERANCE[code],
            gaps,
            session_end=phases["after"][0],
            window_start=window_start,
            window_end=window_end,
            bucket=bucket,
        )
        recovery_reason = None if recovery_ms is not None else "not_within_window"

    return {
        "baseline": baseline,
        "baseline_reason": baseline_reason,
        "during_mean": during_mean,
        "delta": delta,
        "delta_pct": None if delta is None or baseline is None else delta / baseline * 100,
        "peak": peak,
        "recovery_ms": recovery_ms,
        "recovery_reason": recovery_reason,
        "episodes": _episodes(code, mine, gaps, window_start, window_end, bucket),
    }


def _recovery(
    after: Sequence[tuple[int, float]],
    baseline: float,
    tolerance: float,
    gaps: Sequence[tuple[int, int]],
    *,
    session_end: int,
    window_start: int,
    window_end: int,
    bucket: int,
) -> int | None:
    """The first bucket end τ after the session end where the 5-minute rolling mean of the after
    samples is within tolerance and stays so (every defined rolling mean up to τ + 5 min, inside
    the window, no gap overlapping [τ, τ + 5 min)); τ − session end."""

    def rolling(tau: int) -> float | None:
        return mean([v for t, v in after if tau - ROLLING_MS <= t < tau])

    def within(value: float | None) -> bool:
        return value is not None and abs(value - baseline) <= tolerance

    # bucket ends after the session end, up to the window end
    first_end = window_start + (math.floor((session_end - window_start) / bucket) + 1) * bucket
    for tau in range(first_end, window_end + 1, bucket):
        if tau + HOLD_MS > window_end or not within(rolling(tau)):
            continue
        later = [rolling(p) for p in range(tau + bucket, tau + HOLD_MS + 1, bucket)]
        if any(value is not None and not within(value) for value in later):
            continue
        if any(a < tau + HOLD_MS and b > tau for a, b in gaps):
            continue
        return tau - session_end
    return None


def _episodes(
    code: str,
    mine: Sequence[tuple[int, float]],
    gaps: Sequence[tuple[int, int]],
    window_start: int,
    window_end: int,
    bucket: int,
) -> list[dict[str, Any]]:
    buckets: dict[int, list[tuple[int, float]]] = {}
    for t, v in mine:
        buckets.setdefault(math.floor((t - window_start) / bucket), []).append((t, v))
    ordered = sorted(buckets)
    gap_set = set(gaps)
    episodes = []
    for rule in RULES.get(code, []):
        runs: list[list[int]] = []
        previous = None
        for k in ordered:
            values = [v for _t, v in buckets[k]]
            extreme = max(values) if rule.high else min(values)
            if not rule.crosses(extreme):
                previous = None
                continue
            silence_between = (
                previous is not None
                and (
                    max(t for t, _v in buckets[previous]),
                    min(t for t, _v in buckets[k]),
                )
                in gap_set
            )
            if previous is None or silence_between:
                runs.append([k])
            else:
                runs[-1].append(k)
            previous = k
        for run in runs:
            extremes = [(max if rule.high else min)(v for _t, v in buckets[k]) for k in run]
            episodes.append(
                {
                    "rule": rule.name,
                    "level": rule.level,
                    "start_ms": window_start + run[0] * bucket,
                    "end_ms": min(window_start + (run[-1] + 1) * bucket, window_end),
                    "extreme": max(extremes) if rule.high else min(extremes),
                }
            )
    return sorted(episodes, key=lambda e: e["start_ms"])
