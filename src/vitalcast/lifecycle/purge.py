"""Removing every row of a user, table by table, found from the schema.

A table holds rows of a user when it has a foreign key to ``users.id`` or a ``user_id``
column; rows that refer to those rows (a session's views and change log, and whatever later
tables point at a session) go with them through ``db.cascade``. Nothing here lists tables by
name, so a table added later is purged without a change here (the erasure test scans every
table of the schema to hold this true).

Each batch is its own short transaction, so the purge of a large account never holds the
database: other users' ingests run between batches. Every step is idempotent: a purge cut
anywhere and run again (or run twice at once) only finds less to delete.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from vitalcast.db import cascade
from vitalcast.db.tables import erasures, metadata, users

#: rows selected (and deleted, with what refers to them) per transaction
BATCH_ROWS = 5_000


@dataclass(frozen=True, slots=True)
class Holder:
    """A table holding a user's rows, and the column that names the user."""

    table: sa.Table
    owner: sa.Column[Any]  # Any: a column of any type


def holders() -> list[Holder]:
    """Every table with rows of a user, children before parents (``users`` and ``erasures``
    are the purge's own last step)."""
    found: list[Holder] = []
    for table in reversed(metadata.sorted_tables):
        if table is users or table is erasures:
            continue
        owner: sa.Column[Any] | None = None  # Any: as above
        for constraint in table.foreign_key_constraints:
            if constraint.referred_table is users and len(constraint.columns) == 1:
                owner = next(iter(constraint.columns))
        if owner is None and "user_id" in table.c:
            owner = table.c.user_id
        if owner is not None:
            found.append(Holder(table, owner))
    return found


async def count_rows(conn: AsyncConnection, user_id: str) -> int:
    """Rows the user holds directly, in every holding table (for progress)."""
    total = 0
    for holder in holders():
        query = sa.select(sa.func.count()).select_from(holder.table)
        total += int(await conn.scalar(query.where(holder.owner == user_id)) or 0)
    return total


# Any: key values of the table's primary key columns, whatever their types
def _keys_in(table: sa.Table, keys: Sequence[Sequence[Any]]) -> sa.ColumnElement[bool]:
    columns = list(table.primary_key.columns)
    if len(columns) == 1:
        return columns[0].in_([key[0] for key in keys])
    return sa.tuple_(*columns).in_([tuple(key) for key in keys])


async def purge_batch(
    conn: AsyncConnection, holder: Holder, user_id: str, *, batch_rows: int = BATCH_ROWS
) -> int:
    """Delete up to ``batch_rows`` of the user's rows of ``holder`` (with what refers to them);
    the number of ``holder``'s rows removed (0: none left). The selected rows are locked first
    (PostgreSQL), so no compute can attach a new view to a session being deleted."""
    columns = list(holder.table.primary_key.columns)
    if not columns:
        return 0
    query = sa.select(*columns).where(holder.owner == user_id).limit(batch_rows)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    keys = [tuple(row) for row in await conn.execute(query)]
    if not keys:
        return 0
    return await cascade.delete_tree(conn, holder.table, _keys_in(holder.table, keys))


async def finish(conn: AsyncConnection, user_id: str) -> int:
    """The last step, in one transaction under the user's row lock (which every ingest and
    session change takes): whatever arrived since the batches, the erasure's own row, the user.
    The rows removed."""
    locked = await conn.scalar(sa.select(users.c.id).where(users.c.id == user_id).with_for_update())
    removed = 0
    for holder in holders():
        removed += await cascade.delete_tree(conn, holder.table, holder.owner == user_id)
    await conn.execute(sa.delete(erasures).where(erasures.c.user_id == user_id))
    if locked is not None:
        removed += await cascade.delete_tree(conn, users, users.c.id == user_id)
    return removed
