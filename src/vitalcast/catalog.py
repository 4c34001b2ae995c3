"""The metric catalog as frozen data: codes, units, conversions, kinds, ranges, gaps, LOINC.

Source: shared/reference/metrics.md. Unit aliases convert on ingest into the canonical unit, so
every stored value is canonical and a chart never mixes units.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


class MetricKind(enum.StrEnum):
    """How a bucket aggregates samples."""

    #: an instantaneous reading; a bucket is mean / min / max / count
    SCALAR = "scalar"
    #: a per-interval quantity (steps, energy); a bucket is the sum
    CUMULATIVE = "cumulative"


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
) -> Metric:
    return Metric(
        code=code,
        display_name=display_name,
        unit=unit,
        kind=kind,
        min_value=value_range[0],
        max_value=value_range[1],
        gap_threshold_ms=None if gap_minutes is None else gap_minutes * 60_000,
        loinc=loinc,
        ucum=ucum,
        units=MappingProxyType(units),
        default=default,
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
