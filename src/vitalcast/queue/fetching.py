"""``FetchingWorker``: bullmq's ``Worker`` with one fetcher that takes several jobs per round trip.

bullmq's run loop (3.4.4) starts a ``getNextJob`` for every free slot at once, each its own
``moveToActive`` script call. On an idle-between-jobs queue (a live session's job every few
hundred ms) one job cost six ``moveToActive`` calls and two ``BZPOPMIN`` waits: the job's own,
one per slot that found the queue empty, and a second wait woken by the marker the job's own fetch
had put back. That was a third of a scaled-out worker's CPU per live update.

Here one fetcher does it: it waits on the queue's marker (``BZPOPMIN``, bullmq's
``waitForJob``), then asks for up to ``want`` jobs in one transaction of ``moveToActive`` calls
that also removes the marker (``_take_jobs`` says why that is safe), and starts each job it got
as bullmq's ``processJob`` does (lock tracking and renewal, completion, failure with retries and
backoff, deferral, events). A round that comes back short found the queue empty: the next one
waits on the marker again. A full round may have left jobs: the next one fetches at once, with
``want`` doubled, so a queue that fills up is drained in growing rounds whose jobs start in the
same turn of the loop, where the ``ComputeBatcher`` gathers them into one batch. A lone job costs
one wait and one round trip (the first round asks for two).

The jobs, their states and the scripts that move them are bullmq's; only the loop that asks for
them is ours. It reads the same options (``concurrency``, ``drainDelay``, ``lockDuration``,
``runRetryDelay``) and keeps the attributes ``close`` and ``pause`` rely on (``processing``,
``waiting``, ``running``, ``closing``). ``close`` lets the loop end before bullmq's teardown
closes the connections (see ``close``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import msgpack
from bullmq import Worker
from bullmq.scripts import raw2NextJobData
from bullmq.timer import Timer
from redis.asyncio.client import Pipeline

from vitalcast.queue.pipelines import run_pipeline

#: jobs the first round after a wait asks for: one more than a lone job, so that the round that
#: takes it also finds the queue empty
FIRST_ROUND = 2
#: the member of the queue's marker set that says "jobs wait" (a delayed job's marker is "1")
BASE_MARKER = "0"
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
        #: the last round came back short: the queue was empty then, wait on the marker first
        self._must_wait = True
        #: the last round came back full and took the marker with it (see ``_take_jobs``)
        self._marker_taken = False
        #: set while ``run`` is not running: ``close`` waits for it
        self._loop_ended = asyncio.Event()
        self._loop_ended.set()

    async def run(self) -> None:
        if self.running:
            raise RuntimeError("Worker is already running")
        self._loop_ended.clear()
        try:
            await self._run()
        finally:
            self._loop_ended.set()

    async def close(self, force: bool = False) -> None:
        """bullmq's ``close``, once the run loop has ended (and with it the jobs it started).

        bullmq's teardown closes the connections as soon as no job is processing. A round
        fetched just before (its answer on the way back) then started its jobs on closed
        clients: each command opened a new connection that nothing closed, and the client
        was finalised with it open by the garbage collector, later, after its event loop had
        closed (an unraisable ``Event loop is closed`` that failed whichever test ran then)."""
        self.closing = True
        self.paused = False
        self.resume_event.set()
        self._slot_freed.set()
        if self.waiting is not None:
            self.waiting.cancel()
        if not force:
            await self._loop_ended.wait()
        await super().close(force)

    async def _run(self) -> None:
        await self._ensure_client_names()
        self.lockManager.start()
        self.stalledCheckTimer = Timer(
            self.opts["stalledInterval"] / 1000, self.runStalledJobsCheck, self.emit
        )
        self.running = True
        concurrency = int(self.opts["concurrency"])
        retry = {"delay_in_ms": self.opts["runRetryDelay"], "only_emit_error": True}
        want = FIRST_ROUND
        try:
            while not self.closing and not self.closed:
                if self.paused:
                    await self.retryIfFailed(self._give_marker_back, retry)
                    await self.resume_event.wait()
                    continue
                free = concurrency - len(self.processing)
                if free <= 0:
                    await self.retryIfFailed(self._give_marker_back, retry)
                    self._slot_freed.clear()
                    await self._slot_freed.wait()
                    continue
                asked = min(want, free)
                jobs = await self.retryIfFailed(lambda asked=asked: self._next_jobs(asked), retry)
                if not jobs:
                    want = FIRST_ROUND
                    continue
                want = min(2 * asked, concurrency) if len(jobs) == asked else FIRST_ROUND
                for job in jobs:
                    task = asyncio.ensure_future(self.processJob(job, job.token))
                    self.processing.add(task)
                    task.add_done_callback(self._job_done)
            if self.processing:
                await asyncio.wait(set(self.processing))
        finally:
            self.running = False
            with contextlib.suppress(Exception):
                await self._give_marker_back()
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
        """Up to ``asked`` jobs in one round trip, after waiting on the marker when the last
        round found the queue empty (none when the wait was cut by ``close``/``pause`` or woke
        for a delayed job that is not due yet)."""
        if self._must_wait:
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
        # Should the round trip fail, it may or may not have taken the marker: fetch before
        # waiting again.
        self._must_wait = False
        tokens = [self._next_token() for _ in range(asked)]
        results = await self._take_jobs(tokens)
        jobs = []
        for token, result in zip(tokens, results, strict=True):
            job_data, job_id, limit_until, delay_until = raw2NextJobData(result)
            job = await self.nextJobFromJobData(job_data, job_id, limit_until, delay_until, token)
            if job is not None:
                self.emit("active", job, "waiting")
                jobs.append(job)
        full = len(jobs) == asked
        self._must_wait = not full
        self._marker_taken = full
        return jobs

    async def _give_marker_back(self) -> None:
        """Put back the marker a full round took, so that the other workers wake for the jobs
        that may still wait while this one has no slot free (or stops)."""
        if self._marker_taken:
            await self.client.zadd(self.keys["marker"], {BASE_MARKER: 0})
            self._marker_taken = False
            self._must_wait = True

    def _next_token(self) -> str:
        self._token_seq += 1
        return f"{self.id}:{self._token_seq}"

    async def _take_jobs(self, tokens: list[str]) -> list[Any]:  # Any: raw script answers
        """bullmq's ``moveToActive`` script once per token, then the queue's base marker
        removed, in one transaction (one round trip).

        Every job a fetch takes puts the marker back (more may wait), so after a round that
        emptied the queue the marker only woke this worker to find nothing: a ``BZPOPMIN`` and
        a fetch per job for nothing. Removed in the same transaction as a fetch that came back
        short, the marker is stale by construction (the queue was empty at that instant; a job
        added later sets it again). After a full round the marker is gone while jobs may still
        wait: this worker fetches again without waiting, and gives it back when it stops
        fetching with jobs possibly left (``_give_marker_back``)."""
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
            pipe.zrem(scripts.keys["marker"], BASE_MARKER)

        answers = await run_pipeline(self.client, fill, transaction=True)
        return answers[: len(tokens)]
