"""Redis pipelines that carry BullMQ's Lua scripts in one round trip.

redis-py's pipeline makes sure every script queued on it exists before it runs, with a
``SCRIPT EXISTS`` round trip on each ``execute``: a pipeline of script calls cost two round trips,
not one. ``run_pipeline`` skips that check and lets Redis say so instead: a ``NOSCRIPT`` answer
(a restarted or flushed Redis forgot its scripts) loads the pipeline's scripts and runs it once
more. That is safe for the pipelines that use it: a script unknown to Redis ran nowhere in the
pipeline, and the plain commands beside the scripts only read (or, in a worker's fetch, remove
the queue's marker, which a fetch that finds jobs sets again).

The commands are queued on a redis-py pipeline and sent on the client's *lane*
(``redis_connections.Lane``): one connection of the client's pool kept for pipelines, one at
a time.
redis-py 8's ``execute`` checked a connection out of the pool and back in (with its
observability records and events) and walked its HIMPORT bookkeeping on every call: a
two-command transaction cost 121 µs of CPU where its wire work costs about 20 (uvloop). A
pipeline that finds the lane busy, or a command it does not know how to answer, goes the stock
way; so does one whose lane failed on the connection (the lane is closed and given back), whose
retries then apply as before.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from vitalcast.redis_connections import Lane, LaneBusy

#: queues a pipeline's commands (it may be called twice: see the module)
Fill = Callable[[Pipeline], Awaitable[None]]
#: options of a queued command that the lane cannot honour (the stock pipeline does: redis-py's
#: EMPTY_RESPONSE and NEVER_DECODE)
_STOCK_ONLY = frozenset({"EMPTY_RESPONSE", "NEVER_DECODE"})
#: failures of the lane's connection: the pipeline runs again the stock way
_CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


async def run_pipeline(
    client: aioredis.Redis, fill: Fill, *, transaction: bool = False
) -> list[Any]:  # Any: Redis answers
    """The answers of the commands ``fill`` queues, in one round trip (in ``MULTI``/``EXEC``
    with ``transaction``)."""
    for last in (False, True):
        async with client.pipeline(transaction=transaction) as pipe:
            await fill(pipe)
            scripts = list(pipe.scripts)
            pipe.scripts.clear()
            try:
                return await _execute(client, pipe, transaction)
            except NoScriptError:
                if last:
                    raise
        for script in scripts:
            await client.script_load(script.script)
    raise AssertionError("unreachable")


_lanes: weakref.WeakKeyDictionary[aioredis.Redis, Lane] = weakref.WeakKeyDictionary()


async def _execute(client: aioredis.Redis, pipe: Pipeline, transaction: bool) -> list[Any]:
    commands: list[tuple[tuple[Any, ...], Mapping[str, Any]]] = list(pipe.command_stack)
    lane = _lanes.get(client)
    if lane is None:
        lane = _lanes[client] = Lane()
    stock = any(_STOCK_ONLY.intersection(options) for _args, options in commands)
    if not stock and commands:
        wire = [args for args, _ in commands]
        try:
            replies = await lane.use(
                client.connection_pool, lambda conn: _send_and_read(conn, wire, transaction)
            )
        except (LaneBusy, *_CONNECTION_ERRORS):
            pass  # the lane's connection (if it failed) is closed: the stock way, as below
        else:
            return await _answers(client, commands, replies)
    answers: list[Any] = await pipe.execute()  # Any: Redis answers
    return answers


async def _send_and_read(
    conn: Connection, commands: Sequence[tuple[Any, ...]], transaction: bool
) -> list[Any]:  # Any: Redis replies, or the ResponseError a command got
    """Every reply of ``commands`` (an error reply as its ``ResponseError``), read to the
    end, so the connection stays in step whatever a command answered."""
    wire = [("MULTI",), *commands, ("EXEC",)] if transaction else list(commands)
    await conn.send_packed_command(conn.pack_commands(wire), check_health=False)
    replies: list[Any] = []  # Any: as above
    for _ in wire:
        try:
            replies.append(await conn.read_response())
        except ResponseError as exc:
            replies.append(exc)
    if not transaction:
        return replies
    multi, queued, executed = replies[0], replies[1:-1], replies[-1]
    if isinstance(multi, ResponseError):
        raise multi
    if isinstance(executed, ResponseError):  # EXECABORT: a command was refused when queued
        raise next((q for q in queued if isinstance(q, ResponseError)), executed)
    if executed is None:
        raise WatchError("Watched variable changed.")
    if not isinstance(executed, list) or len(executed) != len(commands):
        raise ResponseError("Wrong number of response items from pipeline execution")
    return executed


async def _answers(
    client: aioredis.Redis,
    commands: Sequence[tuple[tuple[Any, ...], Mapping[str, Any]]],
    replies: Sequence[Any],
) -> list[Any]:  # Any: Redis answers
    """The replies as the stock pipeline answers them: its first error raised, the others
    through the client's response callbacks."""
    for reply in replies:
        if isinstance(reply, ResponseError):
            raise reply
    answers: list[Any] = []  # Any: as above
    callbacks = client.response_callbacks
    for (args, options), reply in zip(commands, replies, strict=True):
        callback = callbacks.get(args[0])
        if callback is None:
            answers.append(reply)
            continue
        kept = {k: v for k, v in options.items() if k != "keys"}
        answer = callback(reply, **kept)
        answers.append(await answer if inspect.isawaitable(answer) else answer)
    return answers
