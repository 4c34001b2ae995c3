"""uvicorn's server, woken once a second instead of ten times.

uvicorn's ``Server.main_loop`` sleeps 0.1 s at a time to refresh its Date header (once a second)
and to notice a shutdown signal. On this kind of VM a wake-up from idle costs about 0.1 ms of CPU
(cold caches), so those ten wake-ups were about 1.2 ms of CPU a second, idle or not: the largest
share of an idle server's CPU and a fixed cost under every live update. This server refreshes
the header on each second of the loop's clock (``clock.next_tick``, where the other periodic
tasks wake too) and is woken at once by SIGTERM/SIGINT, so shutting down is not slower.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import FrameType

import uvicorn

from vitalcast.clock import next_tick

#: the Date header's resolution, and how often the server looks at its own state
TICK_S = 1.0


class QuietServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exit_asked: asyncio.Event | None = None

    async def main_loop(self) -> None:
        loop = asyncio.get_running_loop()
        self._exit_asked = asyncio.Event()
        self._loop = loop
        # counter 0: on_tick refreshes the Date header and checks for a requested exit
        while not await self.on_tick(0):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(next_tick(loop, TICK_S)):
                    await self._exit_asked.wait()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # a signal handler runs between two bytecodes of the loop's thread: hand the wake-up
        # to the loop rather than touching the event here
        if self._loop is not None and self._exit_asked is not None:
            self._loop.call_soon_threadsafe(self._exit_asked.set)
