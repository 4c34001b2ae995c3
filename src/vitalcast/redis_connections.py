"""Every Redis connection vitalcast opens is configured here, from the one ``VITALCAST_REDIS_URL``,
with its timeouts in one place. Four kinds of use, three shapes of connection:

- **Blocking consumers** (BullMQ's queue and worker): no socket read timeout. redis-py 8 sets a
  5 s default, which is also BullMQ's idle blocking wait; with it an idle worker was seen deaf to
  new jobs for minutes.
- **Pub/sub** (the Socket.IO Redis manager): a bounded, blocking pool and no read timeout, so the
  listener never times out on an idle channel (a timed-out listener re-subscribes after a pause and
  loses what was published meanwhile) and concurrent publishes wait briefly for a connection.
- **Short calls** (queue probe and depth, rate-limit counters): a read timeout and no retries, so an
  outage is noticed at once and the caller degrades instead of hanging.

Every asyncio Redis connection of the process packs its commands with hiredis (see
``_hiredis_pack``), installed when this module is imported.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection, Connection, ConnectionPool, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import DataError, ResponseError
from redis.typing import EncodableT

from vitalcast.json_types import JsonObject

T = TypeVar("T")

#: how long any connection attempt may take
CONNECT_TIMEOUT_S = 2.0
#: a queue probe, depth or count; a request never waits longer than this for Redis
CALL_TIMEOUT_S = 1.0
#: one rate-limit hit; the limiter falls back to in-process counters beyond it
RATE_LIMIT_TIMEOUT_S = 0.5
#: pub/sub pool: one connection listens, the rest serve concurrent publishes
PUBSUB_MAX_CONNECTIONS = 8
#: how long a publish waits for a free pooled connection before it gives up (and is logged)
PUBSUB_POOL_WAIT_S = 2.0


def _hiredis_pack(self: AbstractConnection, *args: EncodableT) -> list[bytes]:
    """A command in the Redis protocol, packed by hiredis.

    redis-py's asyncio connections pack every command in Python, argument by argument (its
    hiredis packer serves only its synchronous client, and its asyncio clients take no packer
    or connection class of their own: bullmq builds its clients from a dict of options). bullmq's
    scripts take a dozen keys and arguments each, so packing was about a fifth of a scaled-out
    worker's CPU per live update (cProfile). hiredis packs the same bytes (tested), and its parser
    already reads the answers. As in redis-py, a command name of several words is split, and an
    argument of another type is a ``DataError``."""
    first = args[0]
    if isinstance(first, str):
        args = (*first.encode().split(), *args[1:])
    elif isinstance(first, bytes) and b" " in first:
        args = (*first.split(), *args[1:])
    # hiredis's stub types the tuple as one element
    try:
        return [hiredis.pack_command(args)]  # type: ignore[arg-type]
    except TypeError:
        pass
    # hiredis refuses a bytearray, which redis-py sends as bytes; only then is each one looked at
    converted = tuple(bytes(a) if isinstance(a, bytearray) else a for a in args)
    try:
        return [hiredis.pack_command(converted)]  # type: ignore[arg-type]
    except TypeError as exc:
        raise DataError(str(exc)) from exc


#: redis-py's own packer (tests compare against it)
REDIS_PY_PACK = AbstractConnection.pack_command
setattr(AbstractConnection, "pack_command", _hiredis_pack)  # noqa: B010  # mypy: a method


def blocking_options(url: str) -> JsonObject:
    """Connection options (a dict, as BullMQ takes them) for a consumer that blocks on Redis."""
    return {
        **parse_url(url),
        "socket_timeout": None,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
    }


def short_call_options(timeout_s: float = CALL_TIMEOUT_S) -> JsonObject:
    """redis-py keyword options for a client whose calls must fail fast rather than retry."""
    return {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": min(CONNECT_TIMEOUT_S, timeout_s),
        "retry": Retry(NoBackoff(), 0),
    }


def short_call_pool(url: str, timeout_s: float = CALL_TIMEOUT_S) -> aioredis.ConnectionPool:
    """A connection pool for short calls (for libraries that take a pool, like ``limits``)."""
    return aioredis.ConnectionPool.from_url(url, **short_call_options(timeout_s))


def short_call_client(url: str) -> aioredis.Redis:
    """A client for probes and counts: ``CALL_TIMEOUT_S`` per call, no retries."""
    return aioredis.Redis(**{**parse_url(url), **short_call_options()})


def pubsub_client(url: str, *, max_connections: int = PUBSUB_MAX_CONNECTIONS) -> aioredis.Redis:
    """A client on a bounded, blocking pool with no read timeout (pub/sub listen and publish)."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=PUBSUB_POOL_WAIT_S,
        socket_timeout=None,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_keepalive=True,
    )
    return aioredis.Redis.from_pool(pool)


class LaneBusy(Exception):
    """Another call holds the lane: take the client's way."""


class Lane:
    """One connection of a pool kept for calls made one at a time on it, sent and read
    straight on the connection.

    Through a redis-py 8 client every call checks a connection out of the pool and back in
    (with its observability records and events) and walks the client's retry and bookkeeping:
    45-60 µs of CPU beside a call's own 20-30 (uvloop). The hot calls of a live update (a
    worker's fetch and its events, a server's adds and rate-limit hits) take the lane instead
    (``use``, ``call``); a call that finds it ``busy`` gets ``LaneBusy`` and takes the client's
    way. After an exchange whose replies were all read (an error reply is read too) the
    connection is kept; after any other failure (an error on the wire, a timeout, a cancel) its
    replies may be partly unread, so it is closed and goes back to the pool, which connects it
    again when it is next handed out."""

    def __init__(self) -> None:
        self.connection: Connection | None = None
        self.busy = False

    async def use(self, pool: ConnectionPool, exchange: Callable[[Connection], Awaitable[T]]) -> T:
        """``exchange`` run on the kept connection (taken from ``pool`` the first time);
        ``LaneBusy`` while another call holds it."""
        if self.busy:
            raise LaneBusy
        self.busy = True
        try:
            if self.connection is None:
                self.connection = await pool.get_connection()  # type: ignore[no-untyped-call]
            result = await exchange(self.connection)
        except ResponseError:
            self.busy = False
            raise
        except BaseException:
            await self._drop(pool)
            raise
        self.busy = False
        return result

    async def call(self, pool: ConnectionPool, *args: EncodableT) -> Any:  # Any: a Redis reply
        """One command's reply, sent on the lane (``use``)."""

        async def exchange(connection: Connection) -> Any:  # Any: as above
            await connection.send_command(*args, check_health=False)
            return await connection.read_response()

        return await self.use(pool, exchange)

    async def _drop(self, pool: ConnectionPool) -> None:
        connection, self.connection = self.connection, None
        self.busy = False
        if connection is not None:
            await connection.disconnect()
            await pool.release(connection)


#: sends held publishes, (channel, message) pairs, on their own (``HeldPublishes.send``)
PublishSender = Callable[[list[tuple[str, str]]], Awaitable[None]]


class HeldPublishes:
    """Publishes a queue worker holds back to send in the round trip that completes a job.

    A worker's compute publishes ``session.updated`` (a round trip to Redis, and a wake-up when
    its reply comes back), and its job completes right after (another round trip). While a
    job's processor runs (``holders`` > 0), the worker's write-only Socket.IO manager hands its
    publishes here instead (``hold``); when the processor returns, the worker sends every
    publish held in the same pipeline as the job's completion, or on its own (``send``, the
    manager's way) when the job ends any other way. A publish then waits at most until the end
    of a processor that was running when it was made, and the messages are the manager's own.
    """

    def __init__(self) -> None:
        #: processors running now: publishes are held while there is one
        self.holders = 0
        self._held: list[tuple[str, str]] = []
        self._sender: PublishSender | None = None

    def attach(self, sender: PublishSender) -> None:
        """The manager whose publishes are held: ``send`` publishes through it."""
        self._sender = sender

    def hold(self, channel: str, message: str) -> bool:
        """Keep a publish for the next completion; False (publish it now) while no processor
        runs or no manager is attached."""
        if self.holders <= 0 or self._sender is None:
            return False
        self._held.append((channel, message))
        return True

    def take(self) -> list[tuple[str, str]]:
        """Every publish held, now the caller's to send."""
        held, self._held = self._held, []
        return held

    async def send(self, messages: list[tuple[str, str]]) -> None:
        """``messages`` published on their own, through the attached manager (which logs what
        it could not send)."""
        if messages and self._sender is not None:
            await self._sender(messages)
