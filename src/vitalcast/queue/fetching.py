"""``FetchingWorker``: bullmq's ``Worker`` with one fetcher that takes several jobs per round trip.

bullmq's run loop (3.4.4) starts a ``getNextJob`` for every free slot at once, each its own
``moveToActive`` script call. On an idle-between-jobs queue (a live session's job every few
hundred ms) one job cost six ``moveToActive`` calls and two ``BZPOPMIN`` waits: the job's own,
one per slot that found the queue empty, and a second wait woken by the marker the job's own fetch
had put back. That was a third of a scaled-out worker's CPU per live update.

Here one fetcher does it: it waits on the queue's marker (``BZPOPMIN``, bullmq's
``waitForJob``), then asks for up to ``want`` jobs in one pipeline of ``moveToActive`` calls, and
starts each job it got as bullmq's ``processJob`` does (lock tracking and renewal, completion,
failure with retries and backoff, deferral, events). ``want`` doubles while a round comes back
full and drops to one when it does not, so a queue that fills up is drained in growing rounds
whose jobs start in the same turn of the loop, where the ``ComputeBatcher`` gathers them into one
batch. Every fetch waits on the marker first: bullmq puts it back whenever a job may be waiting
(an add, a fetch that found one, a retry, a stalled job moved back), so the wait returns at once
while work is there, and an empty queue costs one blocked wait, not a fetch per slot.

The jobs, their states and the scripts that move them are bullmq's; only the loop that asks for
them is ours. It reads the same options (``concurrency``, ``drainDelay``, ``lockDuration``,
``runRetryDelay``) and keeps the attributes ``close`` and ``pause`` rely on (``processing``,
``waiting``, ``running``, ``closing``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgpack
from bullmq import Worker
from bullmq.scripts import raw2NextJobData
from bullmq.timer import Timer
from redis.asyncio.client import Pipeline

from vitalcast.queue.pipelines import run_pipeline

#: the keys of bullmq's ``moveToActive`` script, in its order
_MOVE_TO_ACTIVE_KEYS = (
    "wait",
    "active",
    "prioritized",
    "events",
    "stalled",
    "limiter",
    "delayed",
    "paused",
    "meta",
    "pc",
    "marker",
)


class FetchingWorker(Worker):  # type: ignore[misc]  # bullmq ships no type hints
    """A bullmq ``Worker`` whose run loop is one fetcher (see the module). Start it with
    ``autorun=False`` and ``run()``; ``close()`` and ``pause()`` are bullmq's."""

    running: bool

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # Any: Worker's own arguments
        super().__init__(*args, **kwargs)
        self._slot_freed = asyncio.Event()
        self._token_seq = 0

    async def run(self) -> None:
        if self.running:
            raise RuntimeError("Worker is already running")
        await self._ensure_client_names()
        self.lockManager.start()
        self.stalledCheckTimer = Timer(
            self.opts["stalledInterval"] / 1000, self.runStalledJobsCheck, self.emit
        )
        self.running = True
        concurrency = int(self.opts["concurrency"])
        want = 1
        try:
            while not self.closing and not self.closed:
                if self.paused:
                    await self.resume_event.wait()
                    continue
                free = concurrency - len(self.processing)
                if free <= 0:
                    self._slot_freed.clear()
                    await self._slot_freed.wait()
                    continue
                asked = min(want, free)
                jobs = await self.retryIfFailed(
                    lambda asked=asked: self._next_jobs(asked),
                    {"delay_in_ms": self.opts["runRetryDelay"], "only_emit_error": True},
                )
                if not jobs:
                    want = 1
                    continue
                want = min(2 * asked, concurrency) if len(jobs) == asked else 1
                for job in jobs:
                    task = asyncio.ensure_future(self.processJob(job, job.token))
                    self.processing.add(task)
                    task.add_done_callback(self._job_done)
            if self.processing:
                await asyncio.wait(set(self.processing))
        finally:
            self.running = False
            if not self.closing:
                for task in self.processing:
                    task.cancel()
                if self.waiting is not None and not self.waiting.done():
                    self.waiting.cancel()
                if self.processing:
                    await asyncio.gather(*self.processing, return_exceptions=True)
                self.processing.clear()
            self.stalledCheckTimer.stop()
            await self.lockManager.close()

    def _job_done(self, task: asyncio.Future[Any]) -> None:  # Any: processJob's result
        self.processing.discard(task)
        self._slot_freed.set()

    async def _next_jobs(self, asked: int) -> list[Any]:  # Any: bullmq Jobs
        """Wait on the marker, then up to ``asked`` jobs in one round trip (none when the wait
        was cut by ``close``/``pause`` or woke for a delayed job that is not due yet)."""
        self.waiting = asyncio.ensure_future(self.waitForJob())
        try:
            self.blockUntil = await self.waiting
        except asyncio.CancelledError:
            if not self.paused and not self.closing:
                raise
            return []
        finally:
            self.waiting = None
        if self.closing or self.paused:
            return []
        if self.blockUntil > int(time.time() * 1000):
            # the marker of a delayed job: its time has not come (the next wait lasts until it)
            return []
        tokens = [self._next_token() for _ in range(asked)]
        results = await self._move_to_active(tokens)
        jobs = []
        for token, result in zip(tokens, results, strict=True):
            job_data, job_id, limit_until, delay_until = raw2NextJobData(result)
            job = await self.nextJobFromJobData(job_data, job_id, limit_until, delay_until, token)
            if job is not None:
                self.emit("active", job, "waiting")
                jobs.append(job)
        return jobs

    def _next_token(self) -> str:
        self._token_seq += 1
        return f"{self.id}:{self._token_seq}"

    async def _move_to_active(self, tokens: list[str]) -> list[Any]:  # Any: raw script answers
        """bullmq's ``moveToActive`` script once per token, in one round trip."""
        scripts = self.scripts
        keys = scripts.getKeys(list(_MOVE_TO_ACTIVE_KEYS))
        script = scripts.commands["moveToActive"]
        now_ms = round(time.time() * 1000)
        packed = [
            msgpack.packb(
                {
                    "token": token,
                    "lockDuration": self.opts["lockDuration"],
                    "limiter": self.opts.get("limiter"),
                },
                use_bin_type=True,
            )
            for token in tokens
        ]

        async def fill(pipe: Pipeline) -> None:
            for opts in packed:
                await script(keys=keys, args=[scripts.keys[""], now_ms, opts], client=pipe)

        return await run_pipeline(self.client, fill)
