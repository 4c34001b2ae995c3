"""Wall-clock time in epoch milliseconds behind a small protocol, so leases are testable."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
#: one minute in epoch milliseconds, the unit of windows, buckets and tolerances
MINUTE_MS = 60_000


class Clock(Protocol):
    """Anything that tells the current time in epoch milliseconds."""

    def now_ms(self) -> int: ...


def now_ms() -> int:
    """The current wall-clock time in epoch milliseconds."""
    return time.time_ns() // 1_000_000


class SystemClock:
    """The real clock."""

    def now_ms(self) -> int:
        return now_ms()


class ManualClock:
    """A clock that only moves when told to; for tests of leases, backoff and live windows."""

    def __init__(self, start_ms: int) -> None:
        self._now_ms = start_ms

    def now_ms(self) -> int:
        return self._now_ms

    def advance(self, ms: int) -> None:
        self._now_ms += ms


def epoch_ms(moment: datetime) -> int:
    """Epoch milliseconds of an aware datetime, exactly (floor of sub-millisecond parts).

    ``int(moment.timestamp() * 1000)`` goes through a float and can land one millisecond early,
    which would move a sample across a bucket edge.
    """
    return (moment - _EPOCH) // _ONE_MS


def iso_ms(ms: int) -> str:
    """ISO 8601 with milliseconds and an explicit UTC offset (what the API accepts); the exact
    inverse of ``epoch_ms`` for whole milliseconds."""
    return (_EPOCH + ms * _ONE_MS).isoformat(timespec="milliseconds")
