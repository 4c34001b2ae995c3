"""The metric catalog as frozen data: codes, units, conversions, kinds, ranges, gaps, LOINC, and
the insight facts (recovery tolerance, alert rules).

docs/design.md ("Metric catalog") lists these facts. Unit aliases convert on ingest into the canonical unit, so
every stored value is canonical and a chart never mixes units. Alert thresholds follow the
National Early Warning Score 2 (NEWS2) bands for heart rate and respiratory rate, and the original
system's SpO₂ rules (below 95 low, below 90 critical).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from vitalcast.clock import MINUTE_MS


class MetricKind(enum.StrEnum):
    """How a bucket aggregates samples."""

    #: an instantaneous reading; a bucket is mean / min / max / count
    SCALAR = "scalar"
    #: a per-interval quantity (steps, energy); a bucket is the sum
    CUMULATIVE = "cumulative"


Comparison = Literal[">=", ">", "<=", "<"]


class AlertLevel(enum.StrEnum):
    """How serious a crossed alert threshold is."""

    #: above the normal band (NEWS2 score 1–2)
    ELEVATED = "elevated"
    #: below the normal band (SpO₂ under 95 %)
    LOW = "low"
    #: needs attention now (NEWS2 score 3, SpO₂ under 90 %)
    CRITICAL = "critical"


@dataclass(frozen=True, slots=True)
class AlertRule:
    """One threshold of a scalar metric. A bucket crosses a high rule when its **max** does and a
    low rule when its **min** does, so one extreme sample inside a bucket is enough."""

    #: ``>=`` or ``>`` (high rules), ``<=`` or ``<`` (low rules)
    operator: Comparison
    threshold: float
    level: AlertLevel

    @property
    def high(self) -> bool:
        """True for a rule on high values (judged on a bucket's max)."""
        return self.operator.startswith(">")

    @property
    def rule(self) -> str:
        """The rule's stable name, unique within its metric: operator and threshold, ``>=111``."""
        return f"{self.operator}{self.threshold:g}"

    def hits(self, values: Sequence[float]) -> list[int]:
        """Positions of the ``values`` that cross the threshold (one comparison each: this runs
        over every bucket of every compute)."""
        limit = self.threshold
        match self.operator:
            case ">=":
                return [i for i, value in enumerate(values) if value >= limit]
            case ">":
                return [i for i, value in enumerate(values) if value > limit]
            case "<=":
                return [i for i, value in enumerate(values) if value <= limit]
            case "<":
                return [i for i, value in enumerate(values) if value < limit]

    def describe(self) -> dict[str, object]:
        return {
            "rule": self.rule,
            "direction": "high" if self.high else "low",
            "operator": self.operator,
            "threshold": self.threshold,
            "level": self.level.value,
        }


def _identity(value: float) -> float:
    return value


def _times(factor: float) -> Callable[[float], float]:
    def convert(value: float) -> float:
        return value * factor

    return convert


def _fahrenheit_to_celsius(value: float) -> float:
    return (value - 32.0) * 5.0 / 9.0


def _fraction_to_percent(value: float) -> float:
    # A fraction outside 0..1 is not a fraction: keep it out of range so validation rejects it.
    return value * 100.0 if 0.0 <= value <= 1.0 else float("nan")


@dataclass(frozen=True, slots=True)
class Metric:
    """One catalog entry."""

    code: str
    display_name: str
    unit: str
    kind: MetricKind
    min_value: float
    max_value: float
    gap_threshold_ms: int | None
    loinc: str
    ucum: str
    units: MappingProxyType[str, Callable[[float], float]] = field(repr=False)
    default: bool
    #: ± this much around the baseline counts as recovered (scalar metrics; None: cumulative)
    recovery_tolerance: float | None = None
    #: the alert thresholds whose crossings become episodes, mildest first per direction
    alert_rules: tuple[AlertRule, ...] = ()

    def __post_init__(self) -> None:
        if (self.kind is MetricKind.SCALAR) != (self.recovery_tolerance is not None):
            raise ValueError(f"{self.code}: every scalar metric, and only those, has a tolerance")
        if self.alert_rules and self.kind is not MetricKind.SCALAR:
            raise ValueError(f"{self.code}: alert rules judge bucket min and max (scalar only)")

    def to_canonical(self, value: float, unit: str | None) -> float | None:
        """Convert ``value`` given in ``unit`` (None = canonical) or return None if not accepted."""
        convert = self.units.get(unit if unit is not None else self.unit)
        return None if convert is None else convert(value)

    def describe(self) -> dict[str, object]:
        """The public description served by GET /api/v1/catalog."""
        return {
            "code": self.code,
            "display_name": self.display_name,
            "unit": self.unit,
            "accepted_units": list(self.units),
            "kind": self.kind.value,
            "min_value": self.min_value,
            "max_value": self.max_value,
            "gap_threshold_ms": self.gap_threshold_ms,
            "loinc": self.loinc,
            "ucum": self.ucum,
            "default": self.default,
            "recovery_tolerance": self.recovery_tolerance,
            "alert_rules": [rule.describe() for rule in self.alert_rules],
        }


def _metric(
    code: str,
    display_name: str,
    unit: str,
    kind: MetricKind,
    value_range: tuple[float, float],
    gap_minutes: int | None,
    loinc: str,
    ucum: str,
    units: Mapping[str, Callable[[float], float]],
    *,
    default: bool,
    tolerance: float | None = None,
    rules: tuple[AlertRule, ...] = (),
) -> Metric:
    return Metric(
        code=code,
        display_name=display_name,
        unit=unit,
        kind=kind,
        min_value=value_range[0],
        max_value=value_range[1],
        gap_threshold_ms=None if gap_minutes is None else gap_minutes * MINUTE_MS,
        loinc=loinc,
        ucum=ucum,
        units=MappingProxyType(units),
        default=default,
        recovery_tolerance=tolerance,
        alert_rules=rules,
    )


_PER_MINUTE = {"bpm": _identity, "count/min": _identity, "beats/min": _identity, "/min": _identity}

METRICS: tuple[Metric, ...] = (
    _metric(
        "heart_rate",
        "Heart rate",
        "bpm",
        MetricKind.SCALAR,
        (20, 300),
        2,
        "8867-4",
        "/min",
        _PER_MINUTE,
        default=True,
        tolerance=5.0,
        rules=(
            AlertRule(">=", 111.0, AlertLevel.ELEVATED),
            AlertRule(">=", 131.0, AlertLevel.CRITICAL),
            AlertRule("<=", 40.0, AlertLevel.CRITICAL),
        ),
    ),
    _metric(
        "heart_rate_variability",
        "HRV (SDNN)",
        "ms",
        MetricKind.SCALAR,
        (1, 500),
        10,
        "80404-7",
        "ms",
        {"ms": _identity, "s": _times(1000.0)},
        default=True,
        tolerance=5.0,
    ),
    _metric(
        "blood_oxygen",
        "Blood oxygen (SpO₂)",
        "%",
        MetricKind.SCALAR,
        (50, 100),
        10,
        "2708-6",
        "%",
        {"%": _identity, "percent": _identity, "fraction": _fraction_to_percent},
        default=True,
        tolerance=1.0,
        rules=(AlertRule("<", 95.0, AlertLevel.LOW), AlertRule("<", 90.0, AlertLevel.CRITICAL)),
    ),
    _metric(
        "respiratory_rate",
        "Respiratory rate",
        "breaths/min",
        MetricKind.SCALAR,
        (4, 60),
        10,
        "9279-1",
        "/min",
        {"breaths/min": _identity, "count/min": _identity, "/min": _identity},
        default=True,
        tolerance=1.0,
        rules=(
            AlertRule(">=", 21.0, AlertLevel.ELEVATED),
            AlertRule(">=", 25.0, AlertLevel.CRITICAL),
            AlertRule("<=", 8.0, AlertLevel.CRITICAL),
        ),
    ),
    _metric(
        "skin_temperature",
        "Skin temperature",
        "degC",
        MetricKind.SCALAR,
        (25, 42),
        10,
        "39106-0",
        "Cel",
        {"degC": _identity, "Cel": _identity, "°C": _identity, "degF": _fahrenheit_to_celsius},
        default=False,
        tolerance=0.2,
    ),
    _metric(
        "steps",
        "Steps",
        "count",
        MetricKind.CUMULATIVE,
        (0, 10_000),
        None,
        "55423-8",
        "{steps}",
        {"count": _identity, "steps": _identity},
        default=False,
    ),
    _metric(
        "active_energy_burned",
        "Active energy",
        "kcal",
        MetricKind.CUMULATIVE,
        (0, 5_000),
        None,
        "41981-2",
        "kcal",
        {"kcal": _identity, "Cal": _identity, "kJ": _times(1 / 4.184)},
        default=False,
    ),
)

BY_CODE: MappingProxyType[str, Metric] = MappingProxyType({m.code: m for m in METRICS})
DEFAULT_CODES: tuple[str, ...] = tuple(m.code for m in METRICS if m.default)
ALL_CODES: tuple[str, ...] = tuple(m.code for m in METRICS)
