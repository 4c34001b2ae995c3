"""``run_pipeline`` on its lane answers what redis-py's own pipeline answers, against real Redis:
the same values (through the client's response callbacks), the same errors, in and out of a
transaction; a pipeline whose lane connection was lost runs again the stock way."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from tests.conftest import REDIS_URL
from vitalcast.queue import pipelines
from vitalcast.queue.pipelines import run_pipeline
from vitalcast.redis_connections import blocking_options


@pytest.fixture(params=[False, True], ids=["bytes", "decoded"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[redis.asyncio.Redis]:
    # as bullmq builds its clients (decoded) and as a plain client is (bytes)
    handle = redis.asyncio.Redis(decode_responses=request.param, **blocking_options(REDIS_URL))
    yield handle
    await handle.aclose()


def _key() -> str:
    return f"vt{uuid.uuid4().hex[:10]}"


def _commands(key: str) -> Any:  # Any: a fill
    async def fill(pipe: Pipeline) -> None:
        pipe.zadd(f"{key}:z", {"a": 1.5, "b": 2})
        pipe.zscore(f"{key}:z", "a")
        pipe.zscore(f"{key}:z", "missing")
        pipe.rpush(f"{key}:l", "x", "y")
        pipe.llen(f"{key}:l")
        pipe.zrange(f"{key}:z", 0, -1, withscores=True)
        pipe.hset(f"{key}:h", mapping={"f": "v"})
        pipe.hgetall(f"{key}:h")
        pipe.expire(f"{key}:z", 60)

    return fill


async def _stock(client: redis.asyncio.Redis, key: str, transaction: bool) -> list[Any]:
    async with client.pipeline(transaction=transaction) as pipe:
        await _commands(key)(pipe)
        return list(await pipe.execute())


@pytest.mark.parametrize("transaction", [False, True])
async def test_answers_are_the_stock_pipelines(
    client: redis.asyncio.Redis, transaction: bool
) -> None:
    ours_key, stock_key = _key(), _key()
    try:
        for _ in range(2):  # the second time on the kept lane
            ours = await run_pipeline(client, _commands(ours_key), transaction=transaction)
            stock = await _stock(client, stock_key, transaction)
            assert ours == stock
        assert pipelines._lanes[client].connection is not None
    finally:
        await client.delete(*(f"{k}:{s}" for k in (ours_key, stock_key) for s in "zlh"))


@pytest.mark.parametrize("transaction", [False, True])
async def test_an_error_reply_is_raised_and_the_lane_stays_in_step(
    client: redis.asyncio.Redis, transaction: bool
) -> None:
    key = _key()

    async def fill(pipe: Pipeline) -> None:
        pipe.set(key, "text")
        pipe.incr(key)  # not an integer: an error at run time
        pipe.get(key)

    try:
        with pytest.raises(ResponseError, match="not an integer"):
            await run_pipeline(client, fill, transaction=transaction)
        # the next pipeline reads its own replies, not the last one's
        assert await run_pipeline(client, _get(key), transaction=transaction) == [
            "text" if client.get_encoder().decode_responses else b"text"
        ]
    finally:
        await client.delete(key)


def _get(key: str) -> Any:  # Any: a fill
    async def fill(pipe: Pipeline) -> None:
        pipe.get(key)

    return fill


async def test_a_lost_lane_connection_runs_the_pipeline_again_the_stock_way(
    client: redis.asyncio.Redis,
) -> None:
    key = _key()
    try:
        await client.set(key, "1")
        assert await run_pipeline(client, _get(key)) in (["1"], [b"1"])
        lane = pipelines._lanes[client].connection
        assert lane is not None
        await lane.send_command("CLIENT", "ID")
        await client.client_kill_filter(_id=await lane.read_response())
        assert await run_pipeline(client, _get(key), transaction=True) in (["1"], [b"1"])
        assert await run_pipeline(client, _get(key)) in (["1"], [b"1"])
    finally:
        await client.delete(key)
