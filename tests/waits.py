"""Bounded waits on the event a test means, instead of sleeps that guess how long it takes.

A test that waits for "the worker drained the queue" polls that condition and fails with a
message when the bound passes; it never sleeps a fixed time and then hopes. The bounds are
generous (a loaded 2-core CI machine), because a wait returns as soon as the event happens.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

POLL_S = 0.02


async def eventually(
    check: Callable[[], Awaitable[bool]], *, what: str, timeout_s: float = 30.0
) -> None:
    """Return once ``await check()`` is true; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout_s} s")
        await asyncio.sleep(POLL_S)
