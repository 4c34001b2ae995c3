"""Per-user request budgets (the ``limits`` package, moving window) for ingest and telemetry reads.

Embedded, the counters live in this process. With ``settings.redis_url`` they live in Redis, so
every server node draws on one budget per user. A limiter outage must never become an outage of
the API: when Redis cannot answer within ``RATE_LIMIT_TIMEOUT_S`` the limiter counts in memory (a
per-node budget) for ``fallback_s`` and then tries Redis again, one request at a time.

**Slices (scaled out).** A node does not ask Redis once per request: it takes a *slice* of a
user's budget at a time, ``slice = max(1, ⌊limit × lease⌋)`` requests, at most ``MAX_SLICE``
(``settings.rate_limit_lease``, 0.02: 12 of ``600/minute``), and admits from it without Redis.
Taking a slice is limits' own moving-window acquire with ``cost``: the slice's entries are
pushed into the user's one window in Redis, or nothing is when the window cannot hold them (then
the node asks for a single entry, in the same round trip: near its limit a user costs a round
trip per request again, and is decided exactly). A slice is spent only while its entries are in
the window (``window`` seconds after it was taken); what is left then is dropped. A live user
syncing every 5 s on ``600/minute`` costs one Redis round trip a minute, not twelve; an idle
node keeps no timer. Concurrent requests of one user on one node wait for one slice, not one
round trip each.

What that costs, stated for one user and one scope:

- *Over-admission*: entries are counted when a slice is taken, not when each request is
  admitted, so a request may be admitted up to a window after its entry was counted. In any
  window the user is admitted at most the limit plus ``nodes × (slice − 1)`` (each node's last
  slice taken before the window began). With ``lease`` 0 the slice is 1, one round trip per
  request, and the window is exact as before.
- *Under-admission*: entries a node took but has not spent count against the user on every
  node, so near the limit another node may refuse while this one still holds up to
  ``slice − 1`` of them.
- *Refusals* (while Redis answers) come from Redis only, so the 429's ``Retry-After`` is
  exact: the moment the oldest entry leaves the window. Until then the window is full whatever
  any node does (entries only leave it by age), so a node keeps the refusal in memory and answers
  a user who retries sooner without Redis (as Envoy's rate-limit service does with its local
  cache of over-limit keys). A refusal pushes no entry and spends nothing.
- *Redis away*: a node spends what it holds, then counts in memory (a per-node budget) until
  Redis answers again; the slices and refusals it holds are per node, as before.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast

import limits
import redis.asyncio as aioredis
from limits.aio.storage import RedisStorage
from limits.aio.storage.redis.redispy import RedispyBridge
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter as LocalMovingWindowRateLimiter
from redis.asyncio import ConnectionPool
from redis.asyncio.client import Pipeline

from vitalcast.observability import get_logger
from vitalcast.queue.pipelines import run_pipeline
from vitalcast.redis_connections import RATE_LIMIT_TIMEOUT_S, short_call_pool
from vitalcast.settings import Settings

log = get_logger(__name__)

#: seconds the limiter counts in memory after Redis failed, before it tries Redis again
FALLBACK_S = 5.0
#: the share of a budget one node takes from Redis at a time (``settings.rate_limit_lease``)
LEASE = 0.02
#: the most entries one slice takes: a moving window stores an entry per request (limits pushes
#: them one by one), and a slice beyond what a user spends in a window is only held back
MAX_SLICE = 100


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
#: how often a node drops the slices and refusals that ran out (seconds)
HELD_SWEEP_S = 30.0


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


@dataclass(slots=True)
class _Slice:
    """Requests of one user's budget this node took from Redis and may still admit."""

    left: int
    #: ``time.monotonic()`` when the slice's entries leave the window: unspent ones are dropped
    until: float


#: (scope, user id): what a node holds for one budget
_Key = tuple[Scope, str]


class RateLimiter:
    """Counts requests per (scope, user) and decides whether one more is allowed."""

    def __init__(
        self,
        rates: dict[Scope, str],
        *,
        redis_url: str | None = None,
        key_prefix: str = "vitalcast-ratelimit",
        fallback_s: float = FALLBACK_S,
        lease: float = LEASE,
    ) -> None:
        self._items = {scope: limits.parse(rate) for scope, rate in rates.items()}
        #: the entries one round trip takes, per scope: a slice (see the module)
        self._slices = {
            scope: min(MAX_SLICE, max(1, int(item.amount * lease)))
            for scope, item in self._items.items()
        }
        # The in-process counters use the synchronous strategy: it never leaves the loop, where
        # the async memory storage hands its expiry sweep to a thread after every request.
        self._memory = LocalMovingWindowRateLimiter(SweptMemoryStorage())
        self._redis_pool: ConnectionPool | None = None
        self._client: aioredis.Redis | None = None
        self._redis: MovingWindowRateLimiter | None = None
        self._bridge: RedispyBridge | None = None
        if redis_url:
            self._redis_pool = short_call_pool(redis_url, RATE_LIMIT_TIMEOUT_S)
            self._client = aioredis.Redis(connection_pool=self._redis_pool)
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
        self._held: dict[_Key, _Slice] = {}
        #: ``time.time()`` when a refused budget's oldest entry leaves its window
        self._refused_until: dict[_Key, float] = {}
        #: the slice being taken for a budget: its other requests wait for it
        self._taking: dict[_Key, asyncio.Event] = {}
        self._next_held_sweep = 0.0

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
            lease=settings.rate_limit_lease,
        )

    @property
    def backend(self) -> str:
        """``redis`` while counters are shared through Redis, otherwise ``memory``."""
        return "redis" if self._redis is not None and self._redis_healthy else "memory"

    async def hit(self, scope: Scope, user_id: str) -> Decision:
        """Count one request of ``user_id`` against ``scope`` unless its budget is spent."""
        item = self._items[scope]
        if self._redis is not None:
            key = (scope, user_id)
            while True:
                decision = self._held_decision(key)
                if decision is not None:
                    return decision
                taking = self._taking.get(key)
                if taking is None:
                    break
                await taking.wait()
            if self._try_redis():
                taken = await self._take(self._redis, item, key)
                if taken is not None:
                    return taken
        if self._memory.hit(item, user_id):
            return _ALLOWED
        return _refusal(self._memory.get_window_stats(item, user_id))

    def _held_decision(self, key: _Key) -> Decision | None:
        """A request decided by what this node holds: a slice's request, or a refusal that
        stands until its window frees an entry; None when Redis must be asked."""
        self._sweep_held()
        held = self._held.get(key)
        if held is not None:
            if held.until > time.monotonic():
                held.left -= 1
                if held.left == 0:
                    del self._held[key]
                return _ALLOWED
            del self._held[key]
        refused_until = self._refused_until.get(key)
        if refused_until is not None:
            if refused_until > time.time():
                return Decision(allowed=False, retry_after_s=_seconds_until(refused_until))
            del self._refused_until[key]
        return None

    async def _take(
        self, limiter: MovingWindowRateLimiter, item: limits.RateLimitItem, key: _Key
    ) -> Decision | None:
        """One round trip for a slice of ``key``'s budget (its first request admitted from it),
        or the refusal; None when Redis failed."""
        taking = self._taking[key] = asyncio.Event()
        # the slice's entries are stamped no earlier than this, so they outlast its ``until``
        taken_at = time.monotonic()
        try:
            async with asyncio.timeout(RATE_LIMIT_TIMEOUT_S * 2):
                taken = await self._acquire(item, key[1], self._slices[key[0]])
                stats = None if taken else await limiter.get_window_stats(item, key[1])
        except Exception as exc:
            self._redis_failed(exc)
            return None
        finally:
            self._probing = False
            del self._taking[key]
            taking.set()
        self._redis_recovered()
        if stats is not None:
            if stats.remaining <= 0:
                # the window is full until its oldest entry leaves it: the refusal stands
                self._refused_until[key] = stats.reset_time
            return _refusal(stats)
        if taken > 1:
            self._held[key] = _Slice(taken - 1, taken_at + item.get_expiry())
        return _ALLOWED

    async def _acquire(self, item: limits.RateLimitItem, user_id: str, size: int) -> int:
        """How many entries of ``user_id``'s window this node took: limits' moving-window
        acquire script for ``size - 1`` entries and for one more, in one pipeline on the lane
        (``queue.pipelines.run_pipeline``; both run, and the second decides a user near the
        limit exactly): a slice of ``size``, or 1, or none. A Redis that forgot the script ran
        neither, and the pipeline loads it and runs again."""
        costs = [size - 1, 1] if size > 1 else [1]
        client, bridge = self._client, self._bridge
        if client is None or bridge is None:
            raise AssertionError("acquire needs Redis")
        script = bridge.lua_acquire_moving_window
        redis_key = bridge.prefixed_key(item.key_for(user_id))

        async def fill(pipe: Pipeline) -> None:
            now = time.time()
            pipe.scripts.add(script)  # loaded by ``run_pipeline`` if Redis forgot it
            for cost in costs:
                pipe.evalsha(script.sha, 1, redis_key, now, item.amount, item.get_expiry(), cost)

        acquired = await run_pipeline(client, fill)
        return sum(cost for cost, ok in zip(costs, acquired, strict=True) if ok)

    def _sweep_held(self) -> None:
        """Drops the slices and refusals that ran out, at most once per ``HELD_SWEEP_S``: a
        node holds something only for the users it served in the last window or so."""
        now = time.monotonic()
        if now < self._next_held_sweep:
            return
        self._next_held_sweep = now + HELD_SWEEP_S
        self._held = {key: held for key, held in self._held.items() if held.until > now}
        wall = time.time()
        self._refused_until = {
            key: until for key, until in self._refused_until.items() if until > wall
        }

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


def _seconds_until(moment: float) -> int:
    """Whole seconds from now until ``moment`` (``time.time()``), at least 1."""
    return max(1, math.ceil(moment - time.time()))


def retry_after_s(stats: limits.WindowStats) -> int:
    """Whole seconds until the oldest counted hit leaves the window (at least 1)."""
    return _seconds_until(stats.reset_time)


def _refusal(stats: limits.WindowStats) -> Decision:
    return Decision(allowed=False, retry_after_s=retry_after_s(stats))
