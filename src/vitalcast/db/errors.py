"""How a database error is told apart: an outage (down, restarting, full) that a client should
retry, or a bug. Backend specifics (SQLSTATE classes, driver exception types) stay here."""

from __future__ import annotations

import sqlite3

import asyncpg
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

#: what the database layer raises: SQLAlchemy's wrapped errors, and the drivers' own where the
#: hot paths run on them directly (the hot read and prepared statements on asyncpg, a SQLite unit
#: on ``sqlite3``)
DATABASE_ERRORS: tuple[type[Exception], ...] = (
    DBAPIError,
    asyncpg.PostgresError,
    sqlite3.Error,
    PoolTimeout,
)

# SQLSTATE classes of a database that is down, restarting or full, rather than of a bad query:
# 08 connection exception, 53 insufficient resources, 57P operator intervention (admin or crash
# shutdown, "the database system is starting up").
_OUTAGE_SQLSTATES = ("08", "53", "57P")
#: seconds a client should wait before retrying after an outage
DATABASE_RETRY_AFTER_S = 2


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a PostgreSQL error, raw (asyncpg) or wrapped (SQLAlchemy), if any."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return None
        code = getattr(seen, "sqlstate", None)
        if isinstance(code, str):
            return code
        seen = getattr(seen, "orig", None) or seen.__cause__
    return None


def is_pool_timeout(exc: Exception) -> bool:
    """Every pooled connection stayed in use for the pool's timeout: overload, not a bug."""
    return isinstance(exc, PoolTimeout)


def is_outage(exc: Exception) -> bool:
    """The database (or the network to it) is unavailable, as opposed to a bad query."""
    # SQLite's OperationalError is a locked or full database (or a file gone), raw from a
    # unit as SQLAlchemy wraps it elsewhere
    if isinstance(exc, (OperationalError, sqlite3.OperationalError)):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if (sqlstate(exc) or "").startswith(_OUTAGE_SQLSTATES):
        return True
    return isinstance(exc, (ConnectionError, OSError, TimeoutError))
