"""Small builders for ingest requests in tests (the shared ones live in ``vitalcast.testing``)."""

from __future__ import annotations

from vitalcast.clock import iso_ms as iso
from vitalcast.clock import now_ms
from vitalcast.testing import hr_sample as hr

__all__ = ["MINUTE_MS", "hr", "iso", "now_ms"]

MINUTE_MS = 60_000
