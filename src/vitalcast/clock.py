"""Wall-clock time in epoch milliseconds behind a small protocol, so leases are testable."""

from __future__ import annotations

import asyncio
import math
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


def next_tick(loop: asyncio.AbstractEventLoop, period_s: float) -> float:
    """The next whole multiple of ``period_s`` on the loop's clock (``loop.time()``), strictly
    after now.

    A server's periodic tasks (uvicorn's Date header, the loop-lag probe, the idle live ticker,
    the share-access flush, the revocation look, the webhook dispatcher's fallback) sleep to
    these ticks rather than ``period_s`` after they last ran, so tasks of the same or dividing
    periods fall due at the same instant and wake in one iteration of the loop: on this kind
    of VM every wake-up from idle costs about 0.1 ms of CPU (cold caches), and a dozen
    unaligned timers a second were most of an idle server's CPU."""
    return (math.floor(loop.time() / period_s) + 1) * period_s


async def sleep_to_tick(period_s: float) -> None:
    """Sleep until ``next_tick`` of ``period_s`` on the running loop."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(next_tick(loop, period_s) - loop.time(), 0.0))


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
