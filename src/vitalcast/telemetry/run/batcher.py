"""``ComputeBatcher``: computes asked for one at a time (a queue worker's jobs) run in batches.

A BullMQ worker processes up to its concurrency of jobs at once, each in its own task, and each
job asks for one view. The batcher gathers the keys asked for in the same turn of the event loop,
and, while ``MAX_BATCHES_IN_FLIGHT`` batches already run, everything asked for meanwhile, and runs
them as one ``TelemetryComputer.compute_batch`` (one claim, one read, one save); every caller
gets its own key's outcome. An idle worker adds no wait: a lone job's batch starts at the next
turn of the loop. A caller cancelled before its batch starts (a job released at shutdown) leaves
the batch; one cancelled while it runs simply gets no answer (the job's handler gives its lease
back).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Protocol

from vitalcast.observability import get_logger
from vitalcast.telemetry.keys import ComputeOutcome, ScheduleReason, TelemetryKey

log = get_logger(__name__)

#: batches one batcher runs at once: one waits on the database while another is assembled
MAX_BATCHES_IN_FLIGHT = 2


class BatchRunner(Protocol):
    """``TelemetryComputer.compute_batch``."""

    async def __call__(
        self, items: Sequence[tuple[TelemetryKey, ScheduleReason]]
    ) -> Mapping[TelemetryKey, ComputeOutcome]: ...


_Waiting = tuple[TelemetryKey, ScheduleReason, "asyncio.Future[ComputeOutcome]"]


class ComputeBatcher:
    """Runs single computes in batches of at most ``max_batch`` views (see the module)."""

    def __init__(self, run: BatchRunner, *, max_batch: int) -> None:
        self._run = run
        self._max_batch = max_batch
        self._waiting: list[_Waiting] = []
        self._flush_planned = False
        self._in_flight: set[asyncio.Task[None]] = set()

    async def compute(self, key: TelemetryKey, *, reason: ScheduleReason) -> ComputeOutcome:
        """The outcome of ``key``'s compute, run in a batch with whatever else is asked for."""
        future: asyncio.Future[ComputeOutcome] = asyncio.get_running_loop().create_future()
        self._waiting.append((key, reason, future))
        if not self._flush_planned:
            self._flush_planned = True
            asyncio.get_running_loop().call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._flush_planned = False
        self._waiting = [w for w in self._waiting if not w[2].done()]
        while self._waiting and len(self._in_flight) < MAX_BATCHES_IN_FLIGHT:
            batch, self._waiting = (
                self._waiting[: self._max_batch],
                self._waiting[self._max_batch :],
            )
            task = asyncio.create_task(self._run_batch(batch), name="telemetry-compute-batch")
            self._in_flight.add(task)

    async def _run_batch(self, batch: list[_Waiting]) -> None:
        try:
            outcomes = await self._run([(key, reason) for key, reason, _future in batch])
        except asyncio.CancelledError:
            for _key, _reason, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            for _key, _reason, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for key, _reason, future in batch:
                if not future.done():
                    future.set_result(outcomes[key])
        finally:
            self._in_flight.discard(asyncio.current_task())
            if self._waiting:
                self._flush()
