"""``python -m tests.hardening.insights_flood URL TOKEN SECONDS``: ask for the insights of the
caller's last 100 sessions over and over, each time with another window, so that every request
finds its views uncached and hands the server a hundred computes; prints how many requests were
made. A process of its own, so the flood does not share the GIL of the test that measures; it
ends at SIGTERM (after the request in flight) or after SECONDS, whichever comes first."""

from __future__ import annotations

import signal
import sys
import time
from types import FrameType

import httpx


def flood(url: str, token: str, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    requests = 0
    stopped = False

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopped
        stopped = True

    signal.signal(signal.SIGTERM, stop)
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stopped and time.monotonic() < deadline:
            window = 30 + requests % 150
            client.get(
                "/api/v1/insights",
                params={"metric": "heart_rate", "last": 100, "window_minutes": window},
                headers={"Authorization": f"Bearer {token}"},
            )
            requests += 1
    return requests


if __name__ == "__main__":
    print(flood(sys.argv[1], sys.argv[2], float(sys.argv[3])))
