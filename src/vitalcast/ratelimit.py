"""Per-user request budgets (the ``limits`` package, moving window) for ingest and telemetry reads.

Embedded, the counters live in this process. With ``settings.redis_url`` they live in Redis, so
every server node draws on one budget per user. A limiter outage must never become an outage of
the API: when Redis cannot answer within ``RATE_LIMIT_TIMEOUT_S`` the limiter counts in memory (a
per-node budget) for ``fallback_s`` and then tries Redis again, one request at a time.

A refusal's ``retry_after_s`` is the moment the oldest counted request leaves the window, i.e.
when a retry is admitted again; the HTTP layer turns it into a 429 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast

import limits
from limits.aio.storage import RedisStorage
from limits.aio.storage.redis.redispy import RedispyBridge
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter as LocalMovingWindowRateLimiter
from redis.asyncio import ConnectionPool
from redis.exceptions import NoScriptError

from vitalcast.observability import get_logger
from vitalcast.redis_connections import RATE_LIMIT_TIMEOUT_S, Lane, LaneBusy, short_call_pool
from vitalcast.settings import Settings

log = get_logger(__name__)

#: seconds the limiter counts in memory after Redis failed, before it tries Redis again
FALLBACK_S = 5.0


class Scope(StrEnum):
    """What a budget is spent on; each has its own limit and counters."""

    INGEST = "ingest"
    TELEMETRY = "telemetry"
    #: reads through one share (telemetry and exports), apart from its owner's budget
    SHARE = "share"
    #: session creations (``POST /sessions``), each of which stores a row and its notes
    SESSIONS = "sessions"


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    #: 0 when allowed
    retry_after_s: int


#: how often the in-process rate-limit counters drop expired entries (seconds)
SWEEP_S = 1.0


class SweptMemoryStorage(MemoryStorage):
    """limits' memory storage, its expiry sweep run inline at most once per ``SWEEP_S``.

    The stock storage starts a ``threading.Timer`` thread after any request that finds none
    running, and each one sweeps every key 10 ms later: under steady traffic that is a thread
    started and a full sweep about every 10 ms (the profile of a live-update burst showed it in
    about a tenth of the server's samples). A moving window is decided from the entries'
    times, never from the sweep, which only frees expired entries; so sweeping once a second on
    the caller's thread decides the same and holds at most a second more of them."""

    def __init__(self) -> None:
        self._next_sweep = 0.0
        super().__init__()

    def _MemoryStorage__schedule_expiry(self) -> None:
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_S
            self._MemoryStorage__expire_events()  # type: ignore[attr-defined]


class RateLimiter:
    """Counts requests per (scope, user) and decides whether one more is allowed."""

    def __init__(
        self,
        rates: dict[Scope, str],
        *,
        redis_url: str | None = None,
        key_prefix: str = "vitalcast-ratelimit",
        fallback_s: float = FALLBACK_S,
    ) -> None:
        self._items = {scope: limits.parse(rate) for scope, rate in rates.items()}
        # The in-process counters use the synchronous strategy: it never leaves the loop, where
        # the async memory storage hands its expiry sweep to a thread after every request.
        self._memory = LocalMovingWindowRateLimiter(SweptMemoryStorage())
        self._redis_pool: ConnectionPool | None = None
        self._redis: MovingWindowRateLimiter | None = None
        self._bridge: RedispyBridge | None = None
        #: the connection the hits take (``_hit_redis``)
        self._lane = Lane()
        if redis_url:
            self._redis_pool = short_call_pool(redis_url, RATE_LIMIT_TIMEOUT_S)
            storage = RedisStorage(
                "async+" + redis_url,
                implementation="redispy",
                key_prefix=key_prefix,
                # limits takes a pool (its own option types leave it out), so ours, with the
                # short-call timeouts, is the one it uses and the one ``close`` releases.
                connection_pool=cast(Any, self._redis_pool),  # Any: see the comment above
            )
            self._redis = MovingWindowRateLimiter(storage)
            self._bridge = cast(RedispyBridge, storage.bridge)
        self._fallback_s = fallback_s
        self._redis_healthy = True
        self._redis_down_until = 0.0
        self._probing = False

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter:
        return cls(
            {
                Scope.INGEST: settings.rate_limit_ingest,
                Scope.TELEMETRY: settings.rate_limit_telemetry,
                Scope.SHARE: settings.rate_limit_share,
                Scope.SESSIONS: settings.rate_limit_sessions,
            },
            redis_url=settings.redis_url,
            key_prefix=settings.rate_limit_prefix,
        )

    @property
    def backend(self) -> str:
        """``redis`` while counters are shared through Redis, otherwise ``memory``."""
        return "redis" if self._redis is not None and self._redis_healthy else "memory"

    async def hit(self, scope: Scope, user_id: str) -> Decision:
        """Count one request of ``user_id`` against ``scope`` unless its budget is spent."""
        item = self._items[scope]
        if self._redis is not None and self._try_redis():
            try:
                async with asyncio.timeout(RATE_LIMIT_TIMEOUT_S * 2):
                    allowed = await self._hit_redis(self._redis, item, user_id)
                    stats = None if allowed else await self._redis.get_window_stats(item, user_id)
            except Exception as exc:
                self._redis_failed(exc)
            else:
                self._redis_recovered()
                return _ALLOWED if stats is None else _refusal(stats)
            finally:
                self._probing = False
        if self._memory.hit(item, user_id):
            return _ALLOWED
        return _refusal(self._memory.get_window_stats(item, user_id))

    async def _hit_redis(
        self, limiter: MovingWindowRateLimiter, item: limits.RateLimitItem, user_id: str
    ) -> bool:
        """``limiter.hit`` (limits' moving window in Redis): the same script with the same key
        and arguments, sent on the lane (``redis_connections.Lane``), since every request
        spends a budget: through limits and the client a hit cost a scaled-out server about
        as much CPU as the rest of a cached GET's read. A busy lane, or a script Redis has
        forgotten (limits loads it again), takes limits' own way."""
        pool, bridge = self._redis_pool, self._bridge
        if pool is None or bridge is None:
            return await limiter.hit(item, user_id)
        try:
            acquired = await self._lane.call(
                pool,
                "EVALSHA",
                bridge.lua_acquire_moving_window.sha,
                1,
                bridge.prefixed_key(item.key_for(user_id)),
                time.time(),
                item.amount,
                item.get_expiry(),
                1,
            )
        except (LaneBusy, NoScriptError):
            return await limiter.hit(item, user_id)
        return bool(acquired)

    async def close(self) -> None:
        if self._redis_pool is not None:
            await self._redis_pool.aclose()

    def _try_redis(self) -> bool:
        """Redis while healthy; while down, one probe per ``fallback_s`` and memory meanwhile."""
        if self._redis_healthy:
            return True
        if self._probing or time.monotonic() < self._redis_down_until:
            return False
        self._probing = True
        return True

    def _redis_failed(self, exc: BaseException) -> None:
        if self._redis_healthy:
            log.warning("rate_limit_redis_unavailable", error=type(exc).__name__)
        self._redis_healthy = False
        self._redis_down_until = time.monotonic() + self._fallback_s

    def _redis_recovered(self) -> None:
        if not self._redis_healthy:
            log.info("rate_limit_redis_recovered")
        self._redis_healthy = True


_ALLOWED = Decision(allowed=True, retry_after_s=0)


def retry_after_s(stats: limits.WindowStats) -> int:
    """Whole seconds until the oldest counted hit leaves the window (at least 1)."""
    return max(1, math.ceil(stats.reset_time - time.time()))


def _refusal(stats: limits.WindowStats) -> Decision:
    return Decision(allowed=False, retry_after_s=retry_after_s(stats))
