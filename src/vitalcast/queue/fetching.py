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

A job's end costs no round trip of its own either: a completed job's ``moveToFinished`` goes
out in one pipeline with the Socket.IO publishes its compute made meanwhile (``HeldPublishes``:
a publish was a round trip and a wake-up of its own), on the client's lane; the blocking wait on
the marker is sent on a lane of the blocking client (``redis_connections.Lane``).

The jobs, their states and the scripts that move them are bullmq's; only the loop that asks for
them, the wait and the completion's round trip are ours. It reads the same options (``concurrency``, ``drainDelay``, ``lockDuration``,
``runRetryDelay``) and keeps the attributes ``close`` and ``pause`` rely on (``processing``,
``waiting``, ``running``, ``closing``). ``close`` lets the loop end before bullmq's teardown
closes the connections (see ``close``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import Any

import msgpack
from bullmq import Worker
from bullmq.custom_errors import DelayedError, UnrecoverableError, WaitingChildrenError
from bullmq.scripts import raw2NextJobData
from bullmq.timer import Timer
from redis.asyncio.client import Pipeline
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from vitalcast.queue.pipelines import run_pipeline
from vitalcast.redis_connections import HeldPublishes, Lane, LaneBusy

#: jobs the first round after a wait asks for: one more than a lone job, so that the round that
#: takes it also finds the queue empty
FIRST_ROUND = 2
#: the member of the queue's marker set that says "jobs wait" (a delayed job's marker is "1")
BASE_MARKER = "0"
#: seconds a wait cut by a connection error pauses before the run loop retries (bullmq's
#: ``short_retry_delay``), so that an unreachable Redis does not spin the loop
SHORT_RETRY_DELAY_S = 0.1
#: failures after which held publishes may not have been sent: they are sent again on their own
_CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)
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
    ``autorun=False`` and ``run()``; ``close()`` and ``pause()`` are bullmq's. ``held``: the
    publishes to send with the completions of its jobs."""

    running: bool
    #: the marker wait under way (``close`` and ``pause`` cancel it)
    waiting: asyncio.Task[int] | None

    def __init__(
        self,
        *args: Any,  # Any: Worker's own arguments
        held: HeldPublishes | None = None,
        **kwargs: Any,  # Any: as above
    ) -> None:
        super().__init__(*args, **kwargs)
        self._held = held
        #: the blocking client's connection kept for the marker wait
        self._wait_lane = Lane()
        #: the keys of ``moveToActive`` (the queue's own, fixed), built on the first fetch
        self._active_keys: list[str] | None = None
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

    async def processJob(self, job: Any, token: str) -> None:  # Any: a bullmq Job
        """bullmq's ``processJob`` (3.4.4), but while the processor runs the manager's
        publishes are held, and a completed job's ``moveToFinished`` takes them along in one
        round trip (``_complete``); a job that ends any other way sends them on their own."""
        held = self._held
        try:
            if "removeOnComplete" not in job.opts and "removeOnComplete" in self.opts:
                job.opts["removeOnComplete"] = self.opts["removeOnComplete"]
            if "removeOnFail" not in job.opts and "removeOnFail" in self.opts:
                job.opts["removeOnFail"] = self.opts["removeOnFail"]
            self.jobs.add((job, token))
            controller = self.lockManager.track_job(
                job.id,
                token,
                int(time.time() * 1000),
                should_create_controller=self._processor_wants_signal,
            )
            if job.deferredFailure:
                await job.moveToFailed(UnrecoverableError(job.deferredFailure), token)
                self.emit("failed", job, UnrecoverableError(job.deferredFailure))
                return
            if held is not None:
                held.holders += 1
            try:
                if controller is not None:
                    result = await self.processor(job, token, controller.signal)
                else:
                    result = await self.processor(job, token)
            finally:
                if held is not None:
                    held.holders -= 1
            if not self.forceClosing:
                await self._complete(job, result, token)
                job.returnvalue = result
                job.attemptsMade = job.attemptsMade + 1
            self.emit("completed", job, result)
        except (DelayedError, WaitingChildrenError):
            return
        except Exception as err:
            try:
                if not self.forceClosing:
                    await job.moveToFailed(err, token)
                self.emit("failed", job, err)
            except Exception as failed_err:
                self.emit("error", failed_err, job)
        finally:
            self.jobs.discard((job, token))
            self.lockManager.untrack_job(job.id)
            if held is not None:
                await held.send(held.take())

    async def _complete(self, job: Any, result: Any, token: str) -> None:  # Any: bullmq's
        """bullmq's ``moveToCompleted`` (without fetching the next job), with every publish
        held so far in the same pipeline. Only after a connection error may those not have gone
        out: they are sent again on their own (a duplicate hint is harmless, a lost one not)."""
        scripts = self.scripts
        keys, args = scripts.moveToCompletedArgs(
            job, result, job.opts.get("removeOnComplete", False), token, False
        )
        script = scripts.commands["moveToFinished"]
        held = self._held
        messages = held.take() if held is not None else []
        queued = False

        async def fill(pipe: Pipeline) -> None:
            # queued once: a second fill follows a NOSCRIPT answer, after which they went out
            nonlocal queued
            await script(keys=keys, args=args, client=pipe)
            if not queued:
                queued = True
                for channel, message in messages:
                    pipe.execute_command("PUBLISH", channel, message)

        try:
            answers = await run_pipeline(self.client, fill)
        except _CONNECTION_ERRORS:
            if held is not None:
                await held.send(messages)
            raise
        answer = answers[0]
        if type(answer) is int and answer < 0:
            raise scripts.finishedErrors(
                {"code": answer, "jobId": job.id, "command": "moveToFinished", "state": "active"}
            )

    async def waitForJob(self) -> int:
        """bullmq's ``waitForJob`` (3.4.4): the marker's score (a delayed job's time), or 0;
        its ``BZPOPMIN`` sent on the kept connection of the blocking client."""
        block_timeout = self.getBlockTimeout(self.blockUntil)
        if not self.backend.capabilities.get("canDoubleTimeout", False):
            block_timeout = math.ceil(block_timeout)
        try:
            result = await self._bzpopmin(block_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            if self.isConnectionError(err) and not self.closing and not self.closed:
                await asyncio.sleep(SHORT_RETRY_DELAY_S)
            raise
        if result:
            _key, member, score = result
            return int(score) if member else 0
        return 0

    async def _bzpopmin(self, timeout_s: float) -> Any:  # Any: redis-py's BZPOPMIN answer
        client = self.backend.bclient
        marker = self.keys["marker"]

        async def exchange(conn: Connection) -> Any:  # Any: a Redis reply
            await conn.send_command("BZPOPMIN", marker, timeout_s, check_health=False)
            return await conn.read_response()

        try:
            reply = await self._wait_lane.use(client.connection_pool, exchange)
        except LaneBusy:
            return await client.bzpopmin(marker, timeout_s)
        parse = client.response_callbacks.get("BZPOPMIN")
        return parse(reply) if parse is not None else reply

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
        if self._active_keys is None:
            self._active_keys = scripts.getKeys(list(_MOVE_TO_ACTIVE_KEYS))
        keys = self._active_keys
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
