"""Synthetic wearable streams: one person's physiology, one session's timeline, and every
sample a watch records over it, at the catalog's cadences.

A :class:`SessionPlan` fixes padding before, the session, padding after, dropouts (watch off the
wrist: nothing is recorded, charts show a gap) and outages (phone out of reach: the watch keeps
recording and the phone syncs it late). :func:`generate` is pure and deterministic in its seed,
record ids included, so re-sending a simulation is idempotent. Sending is ``simulator``'s job.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from vitalcast.clock import MINUTE_MS as MINUTE_MS
from vitalcast.clock import iso_ms
from vitalcast.json_types import JsonObject


@dataclass(frozen=True, slots=True)
class Interval:
    """[start_ms, end_ms) in epoch milliseconds."""

    start_ms: int
    end_ms: int

    def __contains__(self, ms: int) -> bool:
        return self.start_ms <= ms < self.end_ms


@dataclass(frozen=True, slots=True)
class Profile:
    """One simulated person and their watch; drawn from the seed."""

    resting_hr: float
    hr_rise: float
    hrv_ms: float
    spo2: float
    respiratory_rate: float
    skin_temp_c: float
    source: str
    device: str

    @classmethod
    def draw(cls, rng: random.Random) -> Profile:
        source, device = rng.choice(
            [("healthkit", "Apple Watch Series 9"), ("health_connect", "Pixel Watch 2")]
        )
        return cls(
            resting_hr=rng.uniform(58, 72),
            hr_rise=rng.uniform(22, 38),
            hrv_ms=rng.uniform(42, 70),
            spo2=rng.uniform(96.8, 98.2),
            respiratory_rate=rng.uniform(12.5, 15.5),
            skin_temp_c=rng.uniform(33.2, 34.3),
            source=source,
            device=device,
        )


@dataclass(frozen=True, slots=True)
class SessionPlan:
    """One session's timeline. ``key`` is the client_session_id and the record-id prefix."""

    key: str
    start_ms: int
    duration_ms: int
    pre_ms: int
    post_ms: int
    dropouts: tuple[Interval, ...] = ()
    outages: tuple[Interval, ...] = ()
    notes: str | None = None

    @property
    def begin_ms(self) -> int:
        return self.start_ms - self.pre_ms

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.duration_ms

    @property
    def finish_ms(self) -> int:
        return self.end_ms + self.post_ms

    def effect(self, t_ms: int) -> float:
        """Response to the session at ``t_ms``, 0…1: rises to a peak a third of the way in,
        eases off during the rest, and recovers exponentially once the session ends."""
        if t_ms < self.start_ms:
            return 0.0
        peak_ms = min(max(0.35 * self.duration_ms, 8 * MINUTE_MS), 40 * MINUTE_MS)
        u = min(t_ms, self.end_ms) - self.start_ms
        level = (u / peak_ms) * math.exp(1.0 - u / peak_ms)
        if t_ms > self.end_ms:
            level *= math.exp(-(t_ms - self.end_ms) / (12 * MINUTE_MS))
        return level


@dataclass(frozen=True, slots=True)
class Sample:
    """One recorded sample in canonical units; ``end_ms`` is when the watch has it."""

    metric: str
    record_id: str
    value: float
    unit: str
    start_ms: int
    end_ms: int

    def wire(self, profile: Profile) -> JsonObject:
        return {
            "source": profile.source,
            "record_id": self.record_id,
            "metric": self.metric,
            "value": self.value,
            "unit": self.unit,
            "start": iso_ms(self.start_ms),
            "end": iso_ms(self.end_ms),
            "device": profile.device,
        }


def place_intervals(
    rng: random.Random, within: Interval, count: int, length_ms: int
) -> tuple[Interval, ...]:
    """``count`` non-overlapping intervals of ``length_ms`` at seeded places inside ``within``."""
    if count <= 0 or length_ms <= 0:
        return ()
    slot = (within.end_ms - within.start_ms) // count
    if slot <= length_ms:
        return ()
    placed = []
    for i in range(count):
        lo = within.start_ms + i * slot
        start = lo + rng.randrange(0, slot - length_ms)
        placed.append(Interval(start - start % 1000, start - start % 1000 + length_ms))
    return tuple(placed)


class _Walk:
    """Mean-reverting noise (AR(1)) with a given stationary spread and correlation time."""

    def __init__(self, rng: random.Random, spread: float, tau_ms: float) -> None:
        self._rng = rng
        self._spread = spread
        self._tau_ms = tau_ms
        self._level = rng.gauss(0.0, spread)

    def step(self, dt_ms: float) -> float:
        phi = math.exp(-dt_ms / self._tau_ms)
        self._level = phi * self._level + self._rng.gauss(0.0, self._spread * math.sqrt(1 - phi**2))
        return self._level


def generate(
    plan: SessionPlan, profile: Profile, *, seed: int, hr_interval_ms: int = 5_000
) -> list[Sample]:
    """Every sample the watch records over ``plan``, ordered by when it becomes available.

    Deterministic: the same seed, plan and profile give the same samples, record ids included,
    so re-sending a simulation is idempotent.
    """
    rng = random.Random(f"{seed}/{plan.key}")
    span = Interval(plan.begin_ms, plan.finish_ms)
    samples: list[Sample] = []
    counters: dict[str, int] = {}

    def worn(t_ms: int) -> bool:
        return not any(t_ms in gap for gap in plan.dropouts)

    def add(metric: str, value: float, unit: str, start_ms: int, end_ms: int) -> None:
        n = counters.get(metric, 0)
        counters[metric] = n + 1
        record_id = f"{plan.key}-{metric}-{n:06d}"
        samples.append(Sample(metric, record_id, value, unit, start_ms, end_ms))

    # Steps and energy: 1-minute totals; the HR of a minute rises with its steps.
    steps_by_minute: dict[int, int] = {}
    walking = 0
    for minute in range(span.start_ms, span.end_ms, MINUTE_MS):
        during = plan.start_ms <= minute < plan.end_ms
        if walking == 0 and rng.random() < (0.01 if during else 0.035):
            walking = rng.randint(1, 4)
        steps = (
            rng.randint(55, 115) if walking else (rng.randint(1, 14) if rng.random() < 0.12 else 0)
        )
        walking = max(0, walking - 1)
        if not worn(minute) or minute + MINUTE_MS > span.end_ms:
            continue
        steps_by_minute[minute] = steps
        if steps:
            add("steps", float(steps), "count", minute, minute + MINUTE_MS)
        energy = 0.9 + 1.6 * plan.effect(minute) + 0.045 * steps + rng.uniform(-0.15, 0.15)
        add("active_energy_burned", round(energy, 2), "kcal", minute, minute + MINUTE_MS)

    hr_walk = _Walk(rng, 2.4, 70_000)
    hr_unit = "count/min" if profile.source == "healthkit" else "bpm"
    for t in range(span.start_ms, span.end_ms, hr_interval_ms):
        wander = hr_walk.step(hr_interval_ms)
        if not worn(t):
            continue
        activity = 0.16 * steps_by_minute.get(t - (t - span.start_ms) % MINUTE_MS, 0)
        hr = profile.resting_hr + profile.hr_rise * plan.effect(t) + activity + wander
        add("heart_rate", float(round(hr + rng.gauss(0, 1.2))), hr_unit, t, t)

    def periodic(metric: str, every_ms: tuple[int, int], value: Callable[[int], float]) -> None:
        t = span.start_ms + rng.randrange(0, every_ms[0])
        while t < span.end_ms:
            if worn(t):
                unit = _UNITS[metric]
                add(metric, value(t), unit, t, t)
            t += rng.randrange(*every_ms)

    hrv_walk = _Walk(rng, 4.0, 15 * MINUTE_MS)
    periodic(
        "heart_rate_variability",
        (2 * MINUTE_MS, 5 * MINUTE_MS),
        lambda t: round(
            max(8.0, profile.hrv_ms * (1 - 0.45 * plan.effect(t)) + hrv_walk.step(3 * MINUTE_MS)),
            1,
        ),
    )

    def spo2(t: int) -> float:
        if rng.random() < 0.012:
            return float(rng.randint(92, 94))
        return float(
            min(100, max(95, round(profile.spo2 - 0.6 * plan.effect(t) + rng.gauss(0, 0.7))))
        )

    periodic("blood_oxygen", (3 * MINUTE_MS, 8 * MINUTE_MS), spo2)
    periodic(
        "respiratory_rate",
        (2 * MINUTE_MS, 4 * MINUTE_MS),
        lambda t: round(profile.respiratory_rate + 3.2 * plan.effect(t) + rng.gauss(0, 0.7), 1),
    )
    temp_walk = _Walk(rng, 0.15, 20 * MINUTE_MS)
    periodic(
        "skin_temperature",
        (2 * MINUTE_MS, 5 * MINUTE_MS),
        lambda t: round(
            profile.skin_temp_c + 0.7 * plan.effect(t) + temp_walk.step(3 * MINUTE_MS), 2
        ),
    )
    samples.sort(key=lambda s: (s.end_ms, s.metric, s.record_id))
    return samples


_UNITS = {
    "heart_rate_variability": "ms",
    "blood_oxygen": "%",
    "respiratory_rate": "breaths/min",
    "skin_temperature": "degC",
}
