"""Redis connections pack their commands with hiredis: the same bytes as redis-py's own packer,
on every client vitalcast opens (bullmq's included), against real Redis."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio
from bullmq import Queue
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import DataError

from tests.conftest import REDIS_URL
from vitalcast.redis_connections import (
    REDIS_PY_PACK,
    blocking_options,
    pubsub_client,
    short_call_client,
    short_call_pool,
)

COMMANDS: list[tuple[object, ...]] = [
    ("SET", "key", "value"),
    ("CONFIG GET", "maxmemory"),
    (b"CLIENT SETNAME", b"name"),
    ("EVALSHA", "f" * 40, 3, "k1", "k2", "k3", 1.5, 0.1, 1e20, -3, 10**20, 1 / 3),
    ("SET", b"\x00\xff\r\n", "é ünïcode ✓"),
    ("SET", bytearray(b"array"), memoryview(b"view")),
    ("HSET", "h", "field", b"x" * 10_000),
]


@pytest.mark.parametrize("command", COMMANDS)
def test_hiredis_packs_the_bytes_redis_py_packs(command: tuple[object, ...]) -> None:
    assert Connection.pack_command is not REDIS_PY_PACK
    for connection in (Connection(), UnixDomainSocketConnection(path="/tmp/redis.sock")):
        assert b"".join(connection.pack_command(*command)) == b"".join(
            REDIS_PY_PACK(connection, *command)
        )
        assert b"".join(connection.pack_commands([command, command])) == 2 * b"".join(
            REDIS_PY_PACK(connection, *command)
        )


@pytest.mark.parametrize("value", [None, True, [1], {"a": 1}])
def test_an_argument_redis_py_refuses_is_refused(value: object) -> None:
    connection = Connection()
    with pytest.raises(DataError):
        REDIS_PY_PACK(connection, "SET", "key", value)
    with pytest.raises(DataError):
        connection.pack_command("SET", "key", value)


async def test_every_client_vitalcast_opens_round_trips_through_real_redis() -> None:
    key = f"vitalcast-test-packing-{uuid.uuid4().hex}"
    clients = [
        short_call_client(REDIS_URL),
        redis.asyncio.Redis(connection_pool=short_call_pool(REDIS_URL)),
        pubsub_client(REDIS_URL, max_connections=2),
    ]
    queue = Queue(f"packing-{uuid.uuid4().hex}", {"connection": blocking_options(REDIS_URL)})
    try:
        for client in [*clients, queue.client]:
            await client.delete(key)
            await client.hset(key, mapping={"text": "é ✓", "number": 1.5, "raw": b"\x00\xff"})
            script = "return redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])"
            assert await client.eval(script, 1, key, "n", 7) == 7
            async with client.pipeline(transaction=True) as pipe:
                pipe.hget(key, "text")
                pipe.hget(key, "number")
                text, number = await pipe.execute()
            assert text in ("é ✓".encode(), "é ✓")
            assert float(number) == 1.5
            if client is not queue.client:  # bullmq's clients decode answers as text
                assert await client.hget(key, "raw") == b"\x00\xff"
        job = await queue.add("packing", {"value": "é ✓"}, {"jobId": "packed"})
        assert job.id == "packed"
        assert (await queue.getJobCounts("waiting"))["waiting"] == 1
        stored = await queue.getJob("packed")
        assert stored is not None and stored.data == {"value": "é ✓"}
    finally:
        await clients[0].delete(key)
        await queue.obliterate(force=True)
        await queue.close()
        for client in clients:
            await client.aclose()
