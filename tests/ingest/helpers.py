"""Small builders for ingest requests in tests."""

from __future__ import annotations

import time

from vitalcast.testing import hr_sample

MINUTE_MS = 60_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


hr = hr_sample
"""A heart-rate sample from the watch."""
