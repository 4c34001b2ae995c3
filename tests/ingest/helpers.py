"""Small builders for ingest requests in tests."""

from __future__ import annotations

import time
from typing import Any

from vitalcast.clock import iso_ms as iso

MINUTE_MS = 60_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def hr(record_id: str, at_ms: int, value: float = 72.0, **extra: Any) -> dict[str, Any]:
    """A heart-rate sample from the watch."""
    return {
        "source": "healthkit",
        "record_id": record_id,
        "metric": "heart_rate",
        "value": value,
        "unit": "bpm",
        "start": iso(at_ms),
    } | extra
