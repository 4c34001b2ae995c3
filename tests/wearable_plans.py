"""The session plan and wearer profile that the simulator and wearable tests start from."""

from __future__ import annotations

import random
from typing import Any

from vitalcast.wearable import MINUTE_MS, Profile, SessionPlan

START_MS = 1_790_000_000_000 - 1_790_000_000_000 % MINUTE_MS


def plan(**overrides: Any) -> SessionPlan:
    """A 40-minute session at ``START_MS`` with an hour recorded either side, as overridden."""
    fields = {
        "key": "t-1",
        "start_ms": START_MS,
        "duration_ms": 40 * MINUTE_MS,
        "pre_ms": 60 * MINUTE_MS,
        "post_ms": 60 * MINUTE_MS,
    }
    return SessionPlan(**(fields | overrides))


def profile(seed: int = 3) -> Profile:
    """The wearer drawn from ``seed`` (the same seed gives the same person)."""
    return Profile.draw(random.Random(seed))
