"""Where a user can be found: every table of the database (reflected from the database itself,
not from a list) and every Redis key under given prefixes, keys and values alike."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import redis.asyncio as aioredis
import sqlalchemy as sa

from vitalcast.db.engine import Database


def _text(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode()


def holds(value: Any, markers: Iterable[str]) -> bool:
    data = _text(value)
    return any(marker.encode() in data for marker in markers)


#: on PostgreSQL: every table of the schema, partitioned parents ('p') and their partitions
#: ('r': each month of health_samples is a table of its own, and a month detached by retention
#: but not yet dropped is one too), asked of the catalog rather than of a reflection layer
_PG_TABLES = sa.text(
    "SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') "
    "AND relnamespace = current_schema()::regnamespace ORDER BY relname"
)


async def all_rows(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table the database has, sorted, by table name (on PostgreSQL a
    sample's row shows in its month and through the partitioned parent)."""
    async with db.read() as conn:
        if conn.dialect.name == "postgresql":
            names = list(await conn.scalars(_PG_TABLES))
        else:
            names = await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names())
        found: dict[str, list[tuple[Any, ...]]] = {}
        for name in names:
            if name == "alembic_version":
                continue
            rows = await conn.execute(sa.text(f'SELECT * FROM "{name}"'))
            found[name] = sorted(
                (tuple(_text(v) for v in row) for row in rows), key=lambda r: repr(r)
            )
    return found


def rows_holding(
    tables: dict[str, list[tuple[Any, ...]]], markers: Sequence[str]
) -> dict[str, list[tuple[Any, ...]]]:
    return {
        name: hits
        for name, rows in tables.items()
        if (hits := [row for row in rows if any(holds(v, markers) for v in row)])
    }


def rows_without(
    tables: dict[str, list[tuple[Any, ...]]], markers: Sequence[str]
) -> dict[str, list[tuple[Any, ...]]]:
    return {
        name: [row for row in rows if not any(holds(v, markers) for v in row)]
        for name, rows in tables.items()
    }


async def redis_dump(url: str, prefixes: Sequence[str]) -> dict[str, bytes]:
    """Every key under ``prefixes`` with its value flattened to bytes (by type)."""
    client = aioredis.Redis.from_url(url)
    dump: dict[str, bytes] = {}
    try:
        for prefix in prefixes:
            async for raw in client.scan_iter(match=f"{prefix}*", count=1000):
                key = raw.decode()
                kind = (await client.type(key)).decode()
                if kind == "string":
                    value = _text(await client.get(key))
                elif kind == "hash":
                    value = repr(sorted((await client.hgetall(key)).items())).encode()
                elif kind == "list":
                    value = repr(await client.lrange(key, 0, -1)).encode()
                elif kind == "set":
                    value = repr(sorted(await client.smembers(key))).encode()
                elif kind == "zset":
                    value = repr(await client.zrange(key, 0, -1, withscores=True)).encode()
                elif kind == "stream":
                    value = repr(await client.xrange(key)).encode()
                else:
                    value = b""
                dump[key] = value
    finally:
        await client.aclose()
    return dump


def keys_holding(dump: dict[str, bytes], markers: Sequence[str]) -> list[str]:
    return sorted(k for k, v in dump.items() if holds(k, markers) or holds(v, markers))
