"""Redis pipelines that carry BullMQ's Lua scripts in one round trip.

redis-py's pipeline makes sure every script queued on it exists before it runs, with a
``SCRIPT EXISTS`` round trip on each ``execute``: a pipeline of script calls cost two round trips,
not one. ``run_pipeline`` skips that check and lets Redis say so instead: a ``NOSCRIPT`` answer
(a restarted or flushed Redis forgot its scripts) loads the pipeline's scripts and runs it once
more. That is safe for the pipelines that use it: a script unknown to Redis ran nowhere in the
pipeline, and the plain commands beside the scripts only read (or, in a worker's fetch, remove
the queue's marker, which a fetch that finds jobs sets again).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

#: queues a pipeline's commands (it may be called twice: see the module)
Fill = Callable[[Pipeline], Awaitable[None]]


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
                answers: list[Any] = await pipe.execute()  # Any: as above
                return answers
            except NoScriptError:
                if last:
                    raise
        for script in scripts:
            await client.script_load(script.script)
    raise AssertionError("unreachable")
