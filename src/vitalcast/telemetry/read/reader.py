"""The hot read of a telemetry GET: ownership, session watermark and cache row in one statement.

A cached answer should cost well under a millisecond, and the generic async path (SQLAlchemy over
aiosqlite or asyncpg: pool checkout, pre-ping, BEGIN, COMMIT, a thread hop per call on SQLite)
costs more than that by itself. So this one read-only statement gets its own driver-level path:

- SQLite: a plain ``sqlite3`` connection used on the event loop thread. In WAL mode a reader
  never waits for writers, and an indexed point read of a few pages takes microseconds, far less
  than handing it to a thread and back.
- PostgreSQL: a small asyncpg pool running the statement prepared, in autocommit.

Both run the same SQL, a single statement, so it reads one consistent snapshot. ``auto``
resolution is resolved inside it (``keys.AUTO_RESOLUTION_SQL``, written beside the Python rule)
so that the right cache row comes back with the session in one round trip.

The payload column comes back NULL when it is the payload the caller names as the one it holds
(``kept``, see ``kept.py``): its bytes cross only once per save and process.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Protocol

import sqlalchemy as sa

from vitalcast.clock import MINUTE_MS
from vitalcast.telemetry.keys import AUTO_1M_MAX_SPAN_MS, AUTO_RESOLUTION_SQL, COMPUTE_VERSION
from vitalcast.telemetry.read.kept import PayloadId
from vitalcast.telemetry.store.rows import HotRow

_SQL = """
SELECT s.status, s.start_ms, s.end_ms, s.source_watermark,
       c.resolution, c.status, c.source_watermark, c.computed_at_ms, c.error_code,
       c.next_attempt_ms, {payload}, {history}, s.archived_at_ms
FROM sessions s
LEFT JOIN telemetry_cache c
  ON c.session_id = s.id
 AND c.window_minutes = :window_minutes
 AND c.compute_version = :compute_version
 AND c.resolution = COALESCE(:resolution,
       {auto})
WHERE s.id = :session_id AND s.user_id = :user_id
"""
# the payload unless it is the one the caller keeps (a read without the payload, the first read
# of a delta request, binds no kept payload at all)
_PAYLOAD = """CASE WHEN c.resolution = :kept_resolution
             AND c.source_watermark = :kept_watermark
             AND c.computed_at_ms = :kept_computed_at_ms
            THEN NULL ELSE c.payload END"""
# the save history kept beside the payload, read in the same statement (one snapshot), so that a
# delta is built from the history of the very payload it leads to
_HISTORY = "c.history"
#: what a read brings beside the session and the cache row's state: (payload, history)
_VARIANTS = ((False, False), (True, False), (True, True))


class CacheReader(Protocol):
    """Runs the hot read; ``resolution`` None means auto; ``with_history`` (for a delta) also
    reads the payload; the payload is left out (None) when it is ``kept``."""

    async def read(
        self,
        *,
        user_id: str,
        session_id: str,
        window_minutes: int,
        resolution: str | None,
        now_ms: int,
        with_payload: bool,
        with_history: bool = False,
        kept: PayloadId | None = None,
    ) -> HotRow | None: ...

    async def close(self) -> None: ...


#: the order of ``_params``'s values, and each one's name as the SQL binds it
_PARAM_NAMES = (
    "kept_resolution",
    "kept_watermark",
    "kept_computed_at_ms",
    "window_minutes",
    "compute_version",
    "resolution",
    "now_ms",
    "pad_ms",
    "auto_max_ms",
    "session_id",
    "user_id",
)


def _params(
    user_id: str,
    session_id: str,
    window_minutes: int,
    resolution: str | None,
    now_ms: int,
    kept: PayloadId | None,
) -> tuple[object, ...]:
    """The values of ``_PARAM_NAMES``, in that order: a tuple, built once per read, that each
    driver takes as it is (SQLite by position, asyncpg through ``_Statement.order``)."""
    if kept is None:
        kept_resolution, kept_watermark, kept_computed_at_ms = None, None, None
    else:
        kept_resolution = kept.resolution
        kept_watermark, kept_computed_at_ms = kept.source_watermark, kept.computed_at_ms
    return (
        kept_resolution,
        kept_watermark,
        kept_computed_at_ms,
        window_minutes,
        COMPUTE_VERSION,
        resolution,
        now_ms,
        window_minutes * MINUTE_MS,
        AUTO_1M_MAX_SPAN_MS,
        session_id,
        user_id,
    )


def _sql(variant: tuple[bool, bool]) -> str:
    with_payload, with_history = variant
    return _SQL.format(
        auto=AUTO_RESOLUTION_SQL,
        payload=_PAYLOAD if with_payload else "NULL",
        history=_HISTORY if with_history else "NULL",
    )


class SqliteCacheReader:
    """The hot read on the loop thread through one ``sqlite3`` connection (WAL, read-only)."""

    def __init__(self, path: str, *, busy_timeout_ms: int = 200) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._conn: sqlite3.Connection | None = None
        self._sql = {variant: _to_numbered(_sql(variant)) for variant in _VARIANTS}

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
            conn.execute("PRAGMA query_only=1")
            self._conn = conn
        return self._conn

    async def read(
        self,
        *,
        user_id: str,
        session_id: str,
        window_minutes: int,
        resolution: str | None,
        now_ms: int,
        with_payload: bool,
        with_history: bool = False,
        kept: PayloadId | None = None,
    ) -> HotRow | None:
        row = (
            self._connection()
            .execute(
                self._sql[(with_payload or with_history, with_history)],
                _params(user_id, session_id, window_minutes, resolution, now_ms, kept),
            )
            .fetchone()
        )
        return None if row is None else HotRow._make(row)

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class PostgresCacheReader:
    """The hot read through a small asyncpg pool (prepared statement, autocommit).

    The connections are taken from the pool once and kept here between reads: the pool's own
    acquire and release (its release is shielded, a task per call) cost about 30 us of CPU per
    read, as much as the read itself. At most ``max_size`` reads run at once (a burst waits on
    ``_slots``, never in the pool's acquire, which a kept connection would not come back to);
    the pool still opens the connections and takes back one whose read failed, which it then
    replaces: a connection lost with a database restart is not kept."""

    def __init__(self, dsn: str, *, max_size: int = 4) -> None:
        self._dsn = dsn
        self._max_size = max_size
        self._pool: Any = None  # Any: an asyncpg.Pool (asyncpg ships no type hints)
        self._lock = asyncio.Lock()
        self._sql = {variant: _Statement.of(_sql(variant)) for variant in _VARIANTS}
        #: connections taken from the pool and free for the next read (asyncpg.Connection)
        self._idle: list[Any] = []
        #: reads running at once: each holds one connection, so never more than the pool opens
        self._slots = asyncio.Semaphore(max_size)
        #: each kept connection's statements, prepared once (asyncpg.PreparedStatement by SQL)
        self._prepared: dict[Any, dict[str, Any]] = {}

    async def _get_pool(self) -> Any:  # Any: see _pool
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    import asyncpg

                    self._pool = await asyncpg.create_pool(
                        self._dsn, min_size=1, max_size=self._max_size, reset=_keep_session
                    )
        return self._pool

    async def read(
        self,
        *,
        user_id: str,
        session_id: str,
        window_minutes: int,
        resolution: str | None,
        now_ms: int,
        with_payload: bool,
        with_history: bool = False,
        kept: PayloadId | None = None,
    ) -> HotRow | None:
        statement = self._sql[(with_payload or with_history, with_history)]
        args = statement.order(
            _params(user_id, session_id, window_minutes, resolution, now_ms, kept)
        )
        pool = self._pool if self._pool is not None else await self._get_pool()
        async with self._slots:
            conn = self._idle.pop() if self._idle else await pool.acquire()
            try:
                row = await self._fetchrow(conn, statement.sql, args)
            except BaseException:
                self._prepared.pop(conn, None)
                await pool.release(conn)
                raise
            if self._pool is pool:
                self._idle.append(conn)
            else:  # closed while reading
                self._prepared.pop(conn, None)
                await pool.release(conn)
        return None if row is None else HotRow._make(row)

    async def _fetchrow(self, conn: Any, sql: str, args: tuple[object, ...]) -> Any:  # Any: asyncpg
        """The row of ``sql`` through the connection's prepared statement (prepared on its
        first read): ``Connection.fetchrow`` looked it up in the connection's statement cache
        on every read, 27 µs of CPU per read where the prepared statement's own costs 18
        (uvloop). A statement PostgreSQL no longer accepts (a migration altered a table it
        reads) is prepared again, as the cache would do, and the read runs once more."""
        import asyncpg

        statements = self._prepared.setdefault(conn, {})
        prepared = statements.get(sql)
        if prepared is None:
            prepared = statements[sql] = await conn.prepare(sql)
        try:
            return await prepared.fetchrow(*args)
        except asyncpg.exceptions.InvalidCachedStatementError:
            statements[sql] = await conn.prepare(sql)
            return await statements[sql].fetchrow(*args)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            idle, self._idle = self._idle, []
            self._prepared.clear()
            for conn in idle:
                await pool.release(conn)
            await pool.close()


async def _keep_session(_connection: object) -> None:
    """Release without asyncpg's reset round trip: these connections only ever run one
    read-only statement in autocommit, so there is no session state to reset."""


_PLACEHOLDER = re.compile(r"(?<!:):([a-z_]+)")


def _to_numbered(sql: str) -> str:
    """``:name`` placeholders to SQLite's ``?n``, n the name's place in ``_PARAM_NAMES`` (a
    statement that leaves some out still takes the whole tuple)."""
    return _PLACEHOLDER.sub(lambda m: f"?{_PARAM_NAMES.index(m.group(1)) + 1}", sql)


@dataclass(frozen=True, slots=True)
class _Statement:
    """One variant for asyncpg: its SQL with ``$n`` placeholders numbered in the order they
    first appear (PostgreSQL refuses a parameter the statement does not use) and ``order``,
    which picks their values out of ``_params``'s tuple."""

    sql: str
    order: Callable[[tuple[object, ...]], tuple[object, ...]]

    @classmethod
    def of(cls, sql: str) -> _Statement:
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in names:
                names.append(name)
            return f"${names.index(name) + 1}"

        dollar = _PLACEHOLDER.sub(number, sql)
        at = [_PARAM_NAMES.index(name) for name in names]
        pick = itemgetter(*at)
        # itemgetter of one index returns the value, not a 1-tuple
        return cls(dollar, pick if len(at) > 1 else lambda values: (pick(values),))


def open_reader(database_url: str) -> CacheReader:
    """The hot reader for ``database_url`` (SQLite file or PostgreSQL)."""
    url = sa.make_url(database_url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        if not url.database or url.database == ":memory:":
            raise ValueError("the telemetry hot read needs a SQLite file")
        return SqliteCacheReader(url.database)
    if backend == "postgresql":
        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        return PostgresCacheReader(dsn)
    raise ValueError(f"unsupported database backend: {backend}")
