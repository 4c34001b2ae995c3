"""``vitalcast import apple-health``: an export's batches through the ingest service.

Each batch is one ``IngestService.ingest`` call with a request-shaped body, so an import has the
HTTP API's validation codes, identity and watermarks, and a batch is stored whole or not at all.
Parsing and writing take turns in one thread: a parser thread gained nothing against the GIL
on two shared cores, and the ingest service's share of the time stays measurable.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from vitalcast.clock import now_ms
from vitalcast.errors import VitalcastError
from vitalcast.ingest.service import IngestService
from vitalcast.ingest.validation import MAX_SAMPLES
from vitalcast.interop.apple_health import (
    MALFORMED_RECORD,
    OTHER_TYPES,
    Batch,
    ExportError,
    Workout,
    count_type,
    open_export,
    read_batches,
)
from vitalcast.json_types import JsonObject
from vitalcast.samples import WriteCounts
from vitalcast.sessions.service import SessionService

#: unknown types listed by name in the summary; the rest are one line with their count
SUMMARY_TYPES = 10


@dataclass
class ImportSummary(WriteCounts):
    """Running totals of one import; ``on_progress`` receives it after every batch."""

    #: top-level Record elements read
    records: int = 0
    #: rejection code → records (the ingest service's codes, plus MALFORMED_RECORD)
    rejected: Counter[str] = field(default_factory=Counter)
    #: HealthKit type → records of a type the catalog does not know
    skipped_types: Counter[str] = field(default_factory=Counter)
    #: records starting before ``--since``
    before_since: int = 0
    batches: int = 0
    bytes_read: int = 0
    bytes_total: int = 0
    #: sessions created from Workout elements (``--workouts-as-sessions``)
    sessions_created: int = 0
    sessions_existing: int = 0

    @property
    def imported(self) -> int:
        return self.inserted + self.updated

    def add(self, batch: Batch, answer: JsonObject) -> None:
        """Count a stored batch and the ingest service's answer for it."""
        self.batches += 1
        self.records += batch.records
        self.before_since += batch.before_since
        for name, records in batch.skipped_types.items():
            count_type(self.skipped_types, name, records)
        if batch.malformed:
            self.rejected[MALFORMED_RECORD] += batch.malformed
        self.count_answer(answer)
        self.rejected.update(rejection["code"] for rejection in answer["rejected"])
        self.bytes_read = batch.bytes_read

    def lines(self) -> list[str]:
        """The human summary printed at the end of an import."""
        rejected = sum(self.rejected.values())
        skipped = sum(self.skipped_types.values())
        out = [
            f"records read: {self.records:,}",
            f"imported: {self.imported:,} (inserted {self.inserted:,}, updated {self.updated:,})",
            f"unchanged: {self.unchanged:,}",
            f"rejected: {rejected:,}"
            + "".join(f"\n  {code}: {n:,}" for code, n in sorted(self.rejected.items())),
            f"skipped by type: {skipped:,}" + self._type_lines(skipped),
        ]
        if self.before_since:
            out.append(f"skipped before --since: {self.before_since:,}")
        if self.sessions_created or self.sessions_existing:
            out.append(
                f"sessions from workouts: {self.sessions_created:,} created, "
                f"{self.sessions_existing:,} already there"
            )
        return out

    def _type_lines(self, skipped: int) -> str:
        """The most frequent unknown types by name, then one line for all the others (a file
        can invent any number of type names; the summary stays a few lines)."""
        named = [(n, c) for n, c in self.skipped_types.most_common() if n != OTHER_TYPES]
        shown = named[:SUMMARY_TYPES]
        lines = "".join(f"\n  {name}: {n:,}" for name, n in shown)
        rest = skipped - sum(n for _, n in shown)
        if rest:
            more = len(named) - len(shown)
            # past MAX_TYPE_NAMES the names are not kept, so their number is a lower bound
            over = "over " if OTHER_TYPES in self.skipped_types else ""
            lines += f"\n  ({over}{more:,} more types: {rest:,})"
        return lines


class ImportFailed(Exception):
    """The export broke off; ``summary`` holds what the complete batches before it stored."""

    def __init__(self, message: str, summary: ImportSummary) -> None:
        super().__init__(message)
        self.summary = summary


def workout_session_id(workout: Workout) -> str:
    """The ``client_session_id`` of a workout's session: the same workout, the same session."""
    key = f"{workout.activity}\x1f{workout.source_name}\x1f{workout.start_ms}\x1f{workout.end_ms}"
    return "healthkit-workout-" + hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


async def _sessions_from_workouts(
    sessions: SessionService, user_id: str, workouts: list[Workout], summary: ImportSummary
) -> None:
    """One completed session per workout, found again by its client_session_id on a re-import.
    A workout still running (ending in the future) is left for a later import. A workout the
    session service refuses is a rejected record; one it refuses to end after creating it is
    cancelled, so no import leaves a session active for ever (a re-run ends one it finds
    active)."""
    for workout in workouts:
        if workout.end_ms > now_ms():
            continue
        try:
            session, created = await sessions.create(
                user_id,
                client_session_id=workout_session_id(workout),
                start_ms=workout.start_ms,
                notes=f"{workout.activity} (Apple Health workout, {workout.source_name})"[:1000],
            )
        except VitalcastError as exc:
            summary.rejected[exc.code] += 1
            continue
        if session.live:
            try:
                await sessions.end(user_id, session.id, end_ms=workout.end_ms)
            except VitalcastError as exc:
                await sessions.cancel(user_id, session.id)
                summary.rejected[exc.code] += 1
                continue
        if created:
            summary.sessions_created += 1
        else:
            summary.sessions_existing += 1


def _known(user_id: str) -> Callable[[], Awaitable[str]]:
    async def known() -> str:
        return user_id

    return known


async def import_export(
    ingest: IngestService,
    user: str | Callable[[], Awaitable[str]],
    path: Path,
    *,
    since_ms: int | None = None,
    sessions: SessionService | None = None,
    batch_size: int = MAX_SAMPLES,
    on_progress: Callable[[ImportSummary], None] | None = None,
) -> ImportSummary:
    """Import the Apple Health export at ``path`` for ``user`` (an id, or a callable that
    finds or creates the user: called only once the first batch has parsed, so a file refused
    from the start creates nobody); with ``sessions``, each Workout also becomes a completed
    session. Raises ``ImportFailed`` (with the totals of the complete batches stored before
    the fault) when the file is unreadable, broken or hostile."""
    summary = ImportSummary()
    find_user = _known(user) if isinstance(user, str) else user
    user_id: str | None = None
    try:
        with open_export(path) as (stream, summary.bytes_total):
            batches = read_batches(stream, batch_size=batch_size, since_ms=since_ms, name=path.name)
            for batch in batches:
                if user_id is None:
                    user_id = await find_user()
                try:
                    outcome = await ingest.ingest(user_id, {"samples": batch.samples})
                except VitalcastError as exc:
                    # A whole-request refusal (e.g. a field longer than the API allows):
                    # nothing of this batch was stored, as with a 4xx over HTTP.
                    raise ImportFailed(
                        f"batch {summary.batches + 1} was refused ({exc.code}: {exc.message})",
                        summary,
                    ) from None
                summary.add(batch, orjson.loads(outcome.body))
                if sessions is not None and batch.workouts:
                    await _sessions_from_workouts(sessions, user_id, batch.workouts, summary)
                if on_progress is not None:
                    on_progress(summary)
    except ExportError as exc:
        raise ImportFailed(str(exc), summary) from None
    return summary
