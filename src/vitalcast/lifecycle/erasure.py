"""``ErasureService``: an account erased (the right to erasure).

1. ``request``: one transaction records the intent (an ``erasures`` row; from then on the
   user's tokens are refused by the database) and, for a user of the OpenID Connect issuer,
   the subject's tombstone (``erased_subjects``: a keyed hash and the moment, which outlive the
   purge, so the issuer's tokens issued before stay refused instead of opening a new account);
   then ``revoke_user`` drops the user from every server's token cache and closes its sockets,
   all before the answer (202). A tombstone is kept while a token issued before the erasure
   can still be valid (``tombstone_kept_ms``: the issuer's tokens live at most
   ``VITALCAST_OIDC_TOKEN_MAX_LIFETIME_S``, plus the leeway on ``exp``) and pruned by the next
   ``run_pending`` after that: at every server start and after every erasure request.
2. The purge (``run_pending``): the rows of every table holding the user, in batches
   (``lifecycle.purge``), then the user row and the intent together, then the user's Redis keys
   and values (``lifecycle.redis_sweep``). It runs in the server's process when embedded and as
   a queued job on a worker when scaled out; a purge cut by a crash is found again from its
   ``erasures`` row (at every server start, and by every later erasure job) and finishes.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from vitalcast import credentials
from vitalcast.clock import Clock
from vitalcast.db.engine import Database
from vitalcast.db.tables import erasures, users
from vitalcast.errors import Unauthenticated
from vitalcast.lifecycle import purge, redis_sweep
from vitalcast.observability import get_logger

log = get_logger(__name__)

#: how often, and how far apart, the Redis sweep is tried while a job of the user still runs
SWEEP_ATTEMPTS = 10
SWEEP_RETRY_S = 1.0


class ErasureState(enum.StrEnum):
    """Where an erasure stands (what ``DELETE /api/v1/me`` answers)."""

    #: recorded, tokens refused; rows are being purged
    PURGING = "purging"


@dataclass(frozen=True, slots=True)
class RedisScope:
    """Where the user's Redis traces may be: our key prefixes on the configured Redis."""

    url: str
    prefixes: tuple[str, ...]
    queue_prefix: str


@dataclass(frozen=True, slots=True)
class Progress:
    """Rows purged so far out of the rows the user held when the purge started."""

    purged: int
    total: int


Revoke = Callable[[str], Awaitable[None]]
Dispatch = Callable[[], Awaitable[None]]


class ErasureService:
    """Records erasures and purges them (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        revoke: Revoke,
        redis: RedisScope | None,
        tombstones: credentials.SubjectTombstones | None = None,
        tombstone_kept_ms: int | None = None,
        batch_rows: int = purge.BATCH_ROWS,
    ) -> None:
        self._db = db
        self._tombstones = tombstones
        #: None: the tokens' lifetime is not known here, and no tombstone is ever pruned
        self._tombstone_kept_ms = tombstone_kept_ms
        self._clock = clock
        self._revoke = revoke
        self._redis = redis
        self._batch_rows = batch_rows

    async def request(self, user_id: str) -> ErasureState:
        """Record the erasure (idempotent) and revoke the user everywhere."""
        async with self._db.write() as conn:
            user = (
                await conn.execute(
                    sa.select(users.c.id, users.c.oidc_subject)
                    .where(users.c.id == user_id)
                    .with_for_update()
                )
            ).first()
            if user is None:
                raise Unauthenticated("The token is not valid.", code="TOKEN_INVALID")
            recorded = await conn.scalar(
                sa.select(erasures.c.user_id).where(erasures.c.user_id == user_id)
            )
            now_ms = self._clock.now_ms()
            if recorded is None:
                await conn.execute(
                    sa.insert(erasures).values(
                        user_id=user_id, requested_at_ms=now_ms, rows_purged=0
                    )
                )
            # Every local token issued so far is revoked too: a server that polls revocations
            # (embedded, erased from the CLI) closes the user's sockets from it.
            await conn.execute(
                sa.update(users)
                .where(
                    users.c.id == user_id,
                    sa.or_(
                        users.c.tokens_valid_after_ms.is_(None),
                        users.c.tokens_valid_after_ms < now_ms,
                    ),
                )
                .values(tokens_valid_after_ms=now_ms)
            )
            if user.oidc_subject is not None:
                await self._bury(conn, user.oidc_subject, now_ms)
        await self._revoke(user_id)
        log.info("erasure_requested", user_id=user_id)
        return ErasureState.PURGING

    async def _bury(self, conn: AsyncConnection, subject: str, now_ms: int) -> None:
        if self._tombstones is None:
            # No issuer configured here: its tokens are not accepted here either; a server with
            # one will take the subject's old tokens for a new account (README, erasure).
            log.warning("erasure_without_oidc_issuer", reason="no tombstone written")
            return
        digest = self._tombstones.digest(subject)
        await credentials.record_erased_subject(conn, digest, at_ms=now_ms)

    async def pending(self) -> list[str]:
        """The users whose erasure was requested and has not finished."""
        async with self._db.read() as conn:
            rows = await conn.execute(
                sa.select(erasures.c.user_id).order_by(erasures.c.requested_at_ms)
            )
            return [str(row[0]) for row in rows]

    async def run_pending(self) -> int:
        """Purge every pending erasure to the end, then prune the tombstones that protect
        against nothing any more; how many erasures finished."""
        done = 0
        for user_id in await self.pending():
            await self.purge(user_id)
            done += 1
        await self.prune_tombstones()
        return done

    async def prune_tombstones(self) -> int:
        """Forget the subjects erased so long ago that every token issued before their erasure
        has expired (``credentials.erased_subject_kept_ms``); the number forgotten."""
        if self._tombstone_kept_ms is None:
            return 0
        before_ms = self._clock.now_ms() - self._tombstone_kept_ms
        async with self._db.write() as conn:
            pruned = await credentials.prune_erased_subjects(conn, before_ms=before_ms)
        if pruned:
            log.info("erased_subjects_pruned", count=pruned)
        return pruned

    async def purge(
        self, user_id: str, on_progress: Callable[[Progress], None] | None = None
    ) -> int:
        """Remove every row and Redis trace of the user; the rows removed."""
        async with self._db.read() as conn:
            name = await conn.scalar(sa.select(users.c.name).where(users.c.id == user_id))
            total = await purge.count_rows(conn, user_id)
        removed = 0
        for holder in purge.holders():
            while True:
                async with self._db.write() as conn:
                    n = await purge.purge_batch(conn, holder, user_id, batch_rows=self._batch_rows)
                    if n:
                        await conn.execute(
                            sa.update(erasures)
                            .where(erasures.c.user_id == user_id)
                            .values(rows_purged=erasures.c.rows_purged + n)
                        )
                if not n:
                    break
                removed += n
                if on_progress is not None:
                    on_progress(Progress(removed, max(total, removed)))
        async with self._db.write() as conn:
            removed += await purge.finish(conn, user_id)
        if on_progress is not None:
            on_progress(Progress(removed, removed))
        # Revoked again now that nothing of the user is left: a compute in flight at the request
        # may have kept one more save in some process's memory since (``Forgetting``).
        await self._revoke(user_id)
        if name is not None and self._redis is not None:
            await self._sweep(user_id, str(name))
        log.info("erasure_finished", user_id=user_id, rows=removed)
        return removed

    async def _sweep(self, user_id: str, name: str) -> None:
        scope = self._redis
        assert scope is not None
        for attempt in range(SWEEP_ATTEMPTS):
            try:
                await redis_sweep.sweep(
                    scope.url,
                    user_id,
                    name,
                    prefixes=scope.prefixes,
                    queue_prefix=scope.queue_prefix,
                )
                return
            except redis_sweep.SweepIncomplete:
                if attempt + 1 == SWEEP_ATTEMPTS:
                    raise
                await asyncio.sleep(SWEEP_RETRY_S)


class InProcessErasures:
    """Runs pending erasures in this process, one run at a time (the embedded dispatch, and
    the fallback of the queued one)."""

    def __init__(self, service: ErasureService) -> None:
        self._service = service
        self._task: asyncio.Task[None] | None = None
        self._again = False

    async def dispatch(self) -> None:
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            self._again = False
            try:
                await self._service.run_pending()
            except Exception as exc:
                log.error("erasure_failed", error_type=type(exc).__name__)
                await asyncio.sleep(SWEEP_RETRY_S)
                self._again = True
            if not self._again:
                return

    async def wait(self) -> None:
        """Until the current run has finished (tests, shutdown)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def redis_scope(
    redis_url: str | None, prefixes: Sequence[str], queue_prefix: str
) -> RedisScope | None:
    return None if not redis_url else RedisScope(redis_url, tuple(prefixes), queue_prefix)
