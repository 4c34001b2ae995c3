"""What the incremental-compute tests share: a full recompute to compare against, the cached rows
of a session, compute paths from /metrics, and a counter of SQL statements over the samples."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.telemetry.conftest import TelemetryClient
from vitalcast.db.tables import session_changes, telemetry_cache
from vitalcast.telemetry.compute.aggregate import aggregate_rows
from vitalcast.telemetry.compute.incremental import (
    ViewInput,
    compute_view,
    compute_views,
    guess_tails,
)
from vitalcast.telemetry.compute.memo import ViewMemo
from vitalcast.telemetry.compute.results import ComputedTelemetry, StoredView, TailRows
from vitalcast.telemetry.keys import COMPUTE_VERSION, Resolution, TelemetryKey
from vitalcast.testing import load_session


@dataclass(frozen=True)
class CachedView:
    key: TelemetryKey
    payload: bytes
    source_watermark: int
    computed_at_ms: int
    stored: StoredView


async def cached_views(tc: TelemetryClient, session_id: str, user_id: str) -> list[CachedView]:
    """Every cached payload of the session at the current compute version."""
    c = telemetry_cache.c
    async with tc.db.read() as conn:
        rows = await conn.execute(
            sa.select(
                c.window_minutes,
                c.resolution,
                c.payload,
                c.source_watermark,
                c.computed_at_ms,
                c.partials,
                c.history,
            ).where(
                c.session_id == session_id,
                c.compute_version == COMPUTE_VERSION,
                c.payload.is_not(None),
            )
        )
        return [
            CachedView(
                TelemetryKey(session_id, r[0], Resolution(r[1]), COMPUTE_VERSION, user_id),
                r[2],
                r[3],
                r[4],
                StoredView(r[3], r[5], r[6]),
            )
            for r in rows
        ]


async def recompute(
    tc: TelemetryClient,
    key: TelemetryKey,
    now_ms: int,
    stored: StoredView | None,
    *,
    memo: ViewMemo | None = None,
) -> ComputedTelemetry:
    """A compute of ``key`` at ``now_ms`` from ``stored`` (None: full), not saved; ``memo`` None
    decodes the stored partials instead of using what this process remembers of them."""
    async with tc.db.read() as conn:
        session = await load_session(conn, key)
        assert session is not None
        return await compute_view(conn, session, key, now_ms, stored, memo=memo)


async def recompute_from_tail(
    tc: TelemetryClient, key: TelemetryKey, now_ms: int, stored: StoredView, memo: ViewMemo
) -> tuple[ComputedTelemetry, bool]:
    """``recompute`` from ``stored`` with the tail ``memo`` guesses for ``key`` at ``now_ms``
    and its rows, as a claim on PostgreSQL reads them (here on either database: the portable
    GROUP BY of the tail's range), not saved; and whether a tail was guessed."""
    tail = guess_tails([key], memo, now_ms).get(key)
    if tail is None:
        return await recompute(tc, key, now_ms, stored, memo=None), False
    async with tc.db.read() as conn:
        session = await load_session(conn, key)
        assert session is not None
        rows = await aggregate_rows(
            conn, session.user_id, tail.window, tail.bucket_ms, [(tail.lo, tail.hi)]
        )
        tailed = dataclasses.replace(stored, tail=TailRows(tail, tuple(rows)))
        return await compute_view(conn, session, key, now_ms, tailed, memo=None), True


async def compute_paths(tc: TelemetryClient) -> dict[str, float]:
    """vitalcast_compute_paths_total by path, read from /metrics."""
    text = (await tc.http.get("/metrics")).text
    paths: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("vitalcast_compute_paths_total{"):
            label = line.split('path="', 1)[1].split('"', 1)[0]
            paths[label] = float(line.rsplit(" ", 1)[1])
    return paths


async def log_seqs(tc: TelemetryClient, session_id: str) -> list[int]:
    """The change_seq of every change-log entry the session still has."""
    async with tc.db.read() as conn:
        rows = await conn.execute(
            sa.select(session_changes.c.change_seq)
            .where(session_changes.c.session_id == session_id)
            .order_by(session_changes.c.change_seq)
        )
        return [row[0] for row in rows]


class SampleQueries:
    """Counts the SQL statements that read ``health_samples`` on an engine while active, but a
    compute's claim: on PostgreSQL it names the samples for a live view's tail, which it reads
    only when a change was logged since the stored payload (``leases._claim_statement``)."""

    def __init__(self) -> None:
        self.count = 0

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "health_samples" in statement and not Statements.KINDS["claim"](statement):
            self.count += 1

    @contextlib.contextmanager
    def watching(self, engine: AsyncEngine) -> Iterator[SampleQueries]:
        sa.event.listen(engine.sync_engine, "before_cursor_execute", self._seen)
        try:
            yield self
        finally:
            sa.event.remove(engine.sync_engine, "before_cursor_execute", self._seen)


async def recompute_batch(
    tc: TelemetryClient, views: Sequence[tuple[TelemetryKey, int, StoredView | None]]
) -> list[ComputedTelemetry]:
    """``recompute`` of every view in one batch (``compute_views``: one change-log read, one
    GROUP BY), not saved; a view that failed raises."""
    async with tc.db.read() as conn:
        inputs = []
        for key, now_ms, stored in views:
            session = await load_session(conn, key)
            assert session is not None
            inputs.append(ViewInput(session, key, now_ms, stored))
        batch = await compute_views(conn, inputs)
    results = []
    for result in batch.results:
        if isinstance(result, Exception):
            raise result
        results.append(result)
    return results


class Statements:
    """The SQL statements every engine of this process runs while ``watching`` (the app's own
    and, on SQLite, its unit threads' engines), sorted into what a compute batch runs."""

    KINDS: ClassVar[dict[str, Callable[[str], bool]]] = {
        "claim": lambda s: s.startswith("UPDATE telemetry_cache SET lease_owner"),
        "save": lambda s: s.startswith("WITH saved"),
        "group_by": lambda s: "health_samples" in s,
        "log_read": lambda s: s.startswith("SELECT") and "FROM session_changes" in s,
        "prune": lambda s: s.startswith("DELETE FROM session_changes"),
        "cache_other": lambda s: "telemetry_cache" in s,
    }

    def __init__(self, *, task: asyncio.Task[Any] | None = None) -> None:
        self.seen: list[str] = []
        #: only the statements this task runs on the loop (the app's periodic work, such as the
        #: revocation look or the webhook dispatcher, runs its own units meanwhile); those of a
        #: database thread, which has no running loop, all count
        self._task = task

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if self._task is not None and _running_task() not in (None, self._task):
            return
        self.seen.append(statement.strip())

    def count(self, kind: str) -> int:
        matches = self.KINDS[kind]
        earlier = list(self.KINDS)[: list(self.KINDS).index(kind)]
        return sum(
            1 for s in self.seen if matches(s) and not any(self.KINDS[k](s) for k in earlier)
        )

    @contextlib.contextmanager
    def watching(self) -> Iterator[Statements]:
        sa.event.listen(sa.engine.Engine, "before_cursor_execute", self._seen)
        try:
            yield self
        finally:
            sa.event.remove(sa.engine.Engine, "before_cursor_execute", self._seen)


def _running_task() -> asyncio.Task[Any] | None:
    """The task running on this thread's loop; None on a thread without a running loop."""
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None
