"""Bulk loads for tests that need many rows: COPY on PostgreSQL (asyncpg's
``copy_records_to_table``), one executemany in one transaction on SQLite. Row by row, or one
transaction per batch, a day of 1 Hz samples took most of such a test's time."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import sqlalchemy as sa

from vitalcast.db.engine import Database, create_engine
from vitalcast.db.tables import health_samples, sample_identities
from vitalcast.ingest.repository import IDENTITY_COLUMNS


async def insert_records(
    database_url: str,
    table: sa.Table,
    columns: Sequence[str],
    batches: Iterable[list[tuple[object, ...]]],
) -> int:
    """Insert every record (values in ``columns`` order) of every batch into ``table``, in one
    transaction; how many there were."""
    db = Database(create_engine(database_url))
    count = 0
    batches = list(batches)
    identities: list[list[tuple[object, ...]]] = []
    if table is health_samples:
        # As an ingest would: the months exist, and every sample has its identity row.
        at = [columns.index(c) for c in IDENTITY_COLUMNS]
        await db.partitions.ensure(int(str(r[at[-1]])) for b in batches for r in b)
        identities = [[tuple(r[i] for i in at) for r in b] for b in batches]
    try:
        async with db.write() as conn:
            if conn.dialect.name == "postgresql":
                driver = (await conn.get_raw_connection()).driver_connection
                for records in batches:
                    await driver.copy_records_to_table(
                        table.name, records=records, columns=list(columns)
                    )
                    count += len(records)
                for keys in identities:
                    await driver.copy_records_to_table(
                        sample_identities.name, records=keys, columns=list(IDENTITY_COLUMNS)
                    )
            else:
                placeholders = ", ".join("?" for _ in columns)
                statement = (
                    f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({placeholders})"
                )
                for records in batches:
                    await conn.exec_driver_sql(statement, records)
                    count += len(records)
                for keys in identities:
                    await conn.exec_driver_sql(
                        f"INSERT INTO {sample_identities.name} ({', '.join(IDENTITY_COLUMNS)}) "
                        "VALUES (?, ?, ?, ?)",
                        keys,
                    )
    finally:
        await db.dispose()
    return count
