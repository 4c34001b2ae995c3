"""Small builders for ingest requests in tests."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

MINUTE_MS = 60_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()


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
