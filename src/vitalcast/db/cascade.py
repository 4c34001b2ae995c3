"""Deleting a row with everything that refers to it, found from the schema's foreign keys.

Deletion and erasure must not depend on a hand-kept list of tables: a table added later (shares,
alerts, webhooks …) that refers to a session or a user by foreign key is found here and emptied
of the rows that refer to the deleted one, children before parents, on both databases, without
``ON DELETE CASCADE`` in the schema (which would make a stray ``DELETE`` of a user silently
destroy everything below it).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from vitalcast.db.tables import telemetry_cache

#: tables whose rows a cascade locks before it deletes anything (PostgreSQL), in key order: the
#: lock order of docs/design.md. A compute's save takes a session's view rows (its
#: compare-and-set UPDATE) and then prunes the session's change log in the same transaction,
#: while the cascade reaches the change log before the views (the schema's order); taken the
#: other way round, a session's DELETE or an erasure's purge deadlocked with a save (40P01).
LOCKED_FIRST = (telemetry_cache,)


@dataclass(frozen=True, slots=True)
class Reference:
    """``child.columns`` refer to ``parent.referred`` (one foreign key, possibly composite)."""

    child: sa.Table
    columns: tuple[sa.Column[object], ...]
    referred: tuple[sa.Column[object], ...]


def references_to(table: sa.Table) -> list[Reference]:
    """Every foreign key in ``table``'s metadata that points at ``table`` (self-references too)."""
    found: list[Reference] = []
    metadata = table.metadata
    for child in metadata.sorted_tables:
        for constraint in child.foreign_key_constraints:
            if constraint.referred_table is not table:
                continue
            found.append(
                Reference(
                    child,
                    tuple(constraint.columns),
                    tuple(element.column for element in constraint.elements),
                )
            )
    return found


def _matching(reference: Reference, parent_where: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
    """Rows of ``reference.child`` that refer to a parent row matching ``parent_where``."""
    parent_rows = sa.select(*reference.referred).where(parent_where)
    if len(reference.columns) == 1:
        return reference.columns[0].in_(parent_rows)
    return sa.tuple_(*reference.columns).in_(parent_rows)


def plan(table: sa.Table, where: sa.ColumnElement[bool]) -> Iterator[sa.Delete]:
    """The DELETE statements that remove the rows of ``table`` matching ``where`` and every row
    that refers to them, transitively: children first, so every statement runs against a
    schema whose foreign keys still hold."""
    yield from _plan(table, where, seen=frozenset())


def _plan(
    table: sa.Table, where: sa.ColumnElement[bool], *, seen: frozenset[str]
) -> Iterator[sa.Delete]:
    for reference in references_to(table):
        if reference.child.name in seen or reference.child is table:
            continue
        yield from _plan(reference.child, _matching(reference, where), seen=seen | {table.name})
    yield sa.delete(table).where(where)


async def delete_tree(conn: AsyncConnection, table: sa.Table, where: sa.ColumnElement[bool]) -> int:
    """Run ``plan`` in the caller's transaction, the rows of ``LOCKED_FIRST`` it will delete
    locked before any (PostgreSQL; SQLite's one writer needs no row order); the number of rows
    removed from ``table``."""
    statements = list(plan(table, where))
    if conn.dialect.name == "postgresql":
        for locked in LOCKED_FIRST:
            key = list(locked.primary_key.columns)
            for statement in statements:
                if statement.table is locked and statement.whereclause is not None:
                    query = sa.select(*key).where(statement.whereclause)
                    await conn.execute(query.order_by(*key).with_for_update())
    removed = 0
    for statement in statements:
        result = await conn.execute(statement)
        if statement.table is table:
            removed = result.rowcount
    return removed
