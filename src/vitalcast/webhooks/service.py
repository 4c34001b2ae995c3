"""``WebhookService``: the owner's endpoints (create, list, delete, their deliveries).
``WebhookDispatcher``: sends what is due, retries with exponential backoff for the retry window
(24 h), disables an endpoint that fails for that long.

Deliveries live in the database from the moment their event is committed (the alert and its
deliveries are one transaction), so a restart, even after SIGKILL, resumes them: a claim whose
sender died lapses and the next dispatcher takes the delivery over, under the same
``webhook-id``. Every server runs a dispatcher; claims keep two of them off one delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from functools import partial
from typing import Protocol

from vitalcast.clock import Clock, iso_ms, next_tick
from vitalcast.db.engine import Database
from vitalcast.errors import Conflict, InvalidInput, NotFound
from vitalcast.observability import Metrics, get_logger
from vitalcast.webhooks import repository, signing
from vitalcast.webhooks.addresses import Resolver, resolve
from vitalcast.webhooks.models import (
    EVENT_TYPES,
    Attempt,
    AttemptOutcome,
    Delivery,
    DeliveryStatus,
    Endpoint,
)
from vitalcast.webhooks.sender import SendResult, WebhookSender

log = get_logger(__name__)


class DeliveryJobs(Protocol):
    """Where committed deliveries go when scaled out (BullMQ jobs, ``queue.webhooks``)."""

    async def add(self, delivery_ids: Sequence[str]) -> None: ...


MAX_ENDPOINTS_PER_USER = 20
#: how long registering an endpoint waits for DNS
RESOLVE_TIMEOUT_S = 5.0
#: scaled out: how often the servers look for pending deliveries whose job went missing
SWEEP_MS = 30_000
#: how often a dispatcher looks for due deliveries when nothing woke it and nothing it knows of
#: falls due sooner. Embedded, every delivery is committed by the server itself, which wakes its
#: dispatcher (``committed``), and a retry's or a lapsing claim's due time is known
#: (``repository.next_due_ms``): this look only finds what another process left (a claim of a
#: server that died is found at start-up, by the first look). It was 1 s with a claim (a write
#: transaction) and a read each time: a large share of an idle embedded server's CPU.
POLL_MS = 30_000
#: how soon a dispatcher looks again after its look failed (the database was unavailable)
RETRY_MS = 1_000


class WebhookService:
    """The owner's view of their endpoints. Someone else's endpoint is a 404."""

    def __init__(
        self, db: Database, clock: Clock, *, allow_private: bool, resolver: Resolver
    ) -> None:
        self._db = db
        self._clock = clock
        self._allow_private = allow_private
        self._resolver = resolver

    async def create(self, user_id: str, url: str, events: Sequence[str]) -> Endpoint:
        """A new endpoint with a fresh ``whsec_`` secret (shown to the caller once). The URL is
        checked now, with DNS, and again before every attempt."""
        unknown = sorted(set(events) - EVENT_TYPES)
        if not events or unknown:
            raise InvalidInput(
                f"Unknown event types: {', '.join(unknown) or '(none given)'}; "
                f"known: {', '.join(sorted(EVENT_TYPES))}.",
                code="UNKNOWN_EVENT_TYPE",
            )
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT_S):
                await resolve(url, allow_private=self._allow_private, resolver=self._resolver)
        except (OSError, TimeoutError):
            raise InvalidInput(
                "The URL's host name does not resolve.", code="WEBHOOK_URL_UNRESOLVABLE"
            ) from None
        async with self._db.write() as conn:
            if await repository.count_endpoints(conn, user_id) >= MAX_ENDPOINTS_PER_USER:
                raise Conflict(
                    f"At most {MAX_ENDPOINTS_PER_USER} webhook endpoints per user.",
                    code="TOO_MANY_WEBHOOKS",
                )
            return await repository.create_endpoint(
                conn,
                user_id=user_id,
                url=url,
                events=sorted(set(events)),
                secret=signing.new_secret(),
                now_ms=self._clock.now_ms(),
            )

    async def endpoints(self, user_id: str) -> list[Endpoint]:
        async with self._db.read() as conn:
            return await repository.list_endpoints(conn, user_id)

    async def delete(self, user_id: str, endpoint_id: str) -> None:
        """Delete the endpoint, its pending deliveries and its attempts."""
        async with self._db.write() as conn:
            if not await repository.delete_endpoint(conn, endpoint_id, user_id=user_id):
                raise _not_found()

    async def deliveries(
        self, user_id: str, endpoint_id: str, *, limit: int
    ) -> list[tuple[Delivery, list[Attempt]]]:
        async with self._db.read() as conn:
            if await repository.get_endpoint(conn, endpoint_id, user_id=user_id) is None:
                raise _not_found()
            return await repository.list_deliveries(conn, endpoint_id, limit=limit)


def _not_found() -> NotFound:
    return NotFound("No such webhook endpoint.", code="WEBHOOK_NOT_FOUND")


class WebhookDispatcher:
    """Sends due deliveries, ``concurrency`` at once at most: a slow receiver holds one slot for
    the sender's deadline, never the loop. ``wake`` after committing new deliveries sends them
    at once; otherwise the dispatcher looks every ``POLL_MS`` and when a retry falls due."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        metrics: Metrics,
        sender: WebhookSender,
        *,
        concurrency: int,
        retry_base_ms: int,
        retry_max_ms: int,
        retry_window_ms: int,
        claim_ms: int,
        jobs: DeliveryJobs | None = None,
    ) -> None:
        self._jobs = jobs
        self._db = db
        self._clock = clock
        self._metrics = metrics
        self._sender = sender
        self._concurrency = concurrency
        self._retry_base_ms = retry_base_ms
        self._retry_max_ms = retry_max_ms
        self._retry_window_ms = retry_window_ms
        self._claim_ms = claim_ms
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="webhook-dispatcher")

    def wake(self) -> None:
        """New deliveries were committed: look now."""
        self._wake.set()

    async def committed(self, delivery_ids: Sequence[str]) -> None:
        """Deliveries were committed: queue their jobs (scaled out) or look now (embedded)."""
        if self._jobs is not None:
            await self._jobs.add(delivery_ids)
        else:
            self._wake.set()

    async def attempt_one(self, delivery_id: str) -> int | None:
        """One attempt of ``delivery_id`` if it is pending and due (a job's turn): None once it
        needs no other (delivered, given up, gone), else when to try again."""
        now_ms = self._clock.now_ms()
        async with self._db.write() as conn:
            delivery = await repository.claim(
                conn, delivery_id, now_ms=now_ms, lease_ms=self._claim_ms
            )
            if delivery is None:
                return await repository.due_again_ms(conn, delivery_id)
        if delivery.next_attempt_ms > now_ms:
            async with self._db.write() as conn:
                await repository.unclaim(conn, delivery_id)
            return delivery.next_attempt_ms
        status, next_ms = await self._attempt(delivery)
        return next_ms if status is DeliveryStatus.PENDING else None

    async def stop(self) -> None:
        """Stop sending; attempts in flight are cancelled and their claims lapse, so the next
        dispatcher (this one after a restart, or another server's) sends them again."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for task in list(self._inflight):
            task.cancel()
        await asyncio.gather(*self._inflight, return_exceptions=True)

    def next_attempt_ms(self, delivery: Delivery, failed_at_ms: int) -> int | None:
        """When to try again after the delivery's attempt number ``attempts + 1`` failed at
        ``failed_at_ms``: exponential from ``retry_base_ms`` up to ``retry_max_ms`` apart, never
        past the end of the retry window (the last attempt happens at its end); None once the
        window is over."""
        window_end = delivery.created_at_ms + self._retry_window_ms
        if failed_at_ms >= window_end:
            return None
        delay: int = min(self._retry_base_ms << min(delivery.attempts, 40), self._retry_max_ms)
        return min(failed_at_ms + delay, window_end)

    async def _run(self) -> None:
        if self._jobs is not None:
            await self._sweep()
            return
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            free = self._concurrency - len(self._inflight)
            claimed: list[Delivery] = []
            # until a wake (a commit of this process, an attempt ending), the next due time,
            # or the fallback look, on the loop's ticks with the other periodic tasks
            wake_at = next_tick(loop, POLL_MS / 1000)
            try:
                # units of work: on SQLite a unit is one hop to a database thread rather than
                # one per statement; the write (the claim) only when something is due
                if free > 0:
                    due = await self._db.unit(repository.next_due_ms)
                    now_ms = self._clock.now_ms()
                    if due is not None and due <= now_ms:
                        claimed = await self._db.unit(
                            partial(
                                repository.claim_due,
                                now_ms=now_ms,
                                lease_ms=self._claim_ms,
                                limit=free,
                            ),
                            write=True,
                        )
                    elif due is not None:
                        wake_at = min(wake_at, loop.time() + max(due - now_ms, 10) / 1000)
            except Exception as exc:
                log.warning("webhook_claim_failed", error_type=type(exc).__name__)
                wake_at = next_tick(loop, RETRY_MS / 1000)
            for delivery in claimed:
                task = asyncio.create_task(self._deliver(delivery))
                self._inflight.add(task)
                task.add_done_callback(self._finished)
            if claimed and len(claimed) < free:
                continue
            # all slots busy: a finishing attempt wakes us
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(wake_at):
                    await self._wake.wait()

    async def _sweep(self) -> None:
        """Scaled out: the workers send; this adds the job again of every pending delivery
        that is overdue by more than a sweep (its job was lost, or never added)."""
        while True:
            await asyncio.sleep(SWEEP_MS / 1000)
            try:
                async with self._db.read() as conn:
                    overdue = await repository.overdue(
                        conn, before_ms=self._clock.now_ms() - SWEEP_MS, limit=1_000
                    )
                if overdue and self._jobs is not None:
                    await self._jobs.add(overdue)
            except Exception as exc:
                log.warning("webhook_sweep_failed", error_type=type(exc).__name__)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._wake.set()

    async def _deliver(self, delivery: Delivery) -> None:
        try:
            await self._attempt(delivery)
        except Exception as exc:
            # The claim lapses and the delivery is tried again; nothing was recorded.
            log.warning(
                "webhook_attempt_not_recorded",
                delivery_id=delivery.id,
                error_type=type(exc).__name__,
            )

    async def _attempt(self, delivery: Delivery) -> tuple[DeliveryStatus | None, int | None]:
        async with self._db.read() as conn:
            endpoint = await repository.get_endpoint(conn, delivery.endpoint_id)
        if endpoint is None or not endpoint.enabled:
            result = SendResult(AttemptOutcome.ENDPOINT_GONE, None, 0)
        else:
            timestamp_s = self._clock.now_ms() // 1000
            headers = signing.headers(endpoint.secret, delivery.id, timestamp_s, delivery.body)
            result = await self._sender.send(endpoint.url, headers, delivery.body)
        at_ms = self._clock.now_ms()
        retry = result.outcome not in (AttemptOutcome.DELIVERED, AttemptOutcome.ENDPOINT_GONE)
        next_ms = self.next_attempt_ms(delivery, at_ms) if retry else None
        async with self._db.write() as conn:
            status = await repository.record_attempt(
                conn,
                delivery,
                at_ms=at_ms,
                outcome=result.outcome,
                status_code=result.status_code,
                duration_ms=result.duration_ms,
                next_attempt_ms=next_ms,
            )
            if status is None:
                return None, None
            disabled = False
            if result.outcome.success:
                await repository.endpoint_succeeded(conn, delivery.endpoint_id, now_ms=at_ms)
            elif retry:
                since = await repository.endpoint_failed(conn, delivery)
                if since is not None and at_ms - since >= self._retry_window_ms:
                    await repository.disable_endpoint(
                        conn,
                        delivery.endpoint_id,
                        now_ms=at_ms,
                        reason=f"Disabled: every attempt failed from {iso_ms(since)} until "
                        f"{iso_ms(at_ms)}; create the endpoint again to resume.",
                    )
                    disabled = True
        self._metrics.webhook_deliveries.labels(outcome=result.outcome.value).inc()
        self._metrics.webhook_attempt_seconds.observe(result.duration_ms / 1000)
        if status is DeliveryStatus.DELIVERED:
            self._metrics.webhook_delivery_latency_seconds.observe(
                max(at_ms - delivery.created_at_ms, 0) / 1000
            )
        log.info(
            "webhook_attempt",
            delivery_id=delivery.id,
            endpoint_id=delivery.endpoint_id,
            attempt=delivery.attempts + 1,
            outcome=result.outcome.value,
            status_code=result.status_code,
            ms=result.duration_ms,
            delivery_status=status.value,
        )
        if disabled:
            log.warning("webhook_endpoint_disabled", endpoint_id=delivery.endpoint_id)
        return status, next_ms
