"""``vitalcast import apple-health``: an export's batches through the ingest service.

Each batch is one ``IngestService.ingest`` call with a request-shaped body, so an import has the
HTTP API's validation codes, identity and watermarks, and a batch is stored whole or not at all.
Parsing and writing take turns in one thread: a parser thread gained nothing against the GIL
on two shared cores, and the ingest service's share of the time stays measurable.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from vitalcast.clock import now_ms
from vitalcast.errors import VitalcastError
from vitalcast.ingest.service import IngestService
from vitalcast.ingest.validation import MAX_SAMPLES
from vitalcast.interop.apple_health import (
    MALFORMED_RECORD,
    Batch,
    ExportError,
    Workout,
    open_export,
    read_batches,
)
from vitalcast.json_types import JsonObject
from vitalcast.sessions.service import SessionService


@dataclass
class ImportSummary:
    """Running totals of one import; ``on_progress`` receives it after every batch."""

    #: top-level Record elements read
    records: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
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
        self.skipped_types.update(batch.skipped_types)
        if batch.malformed:
            self.rejected[MALFORMED_RECORD] += batch.malformed
        self.inserted += answer["inserted"]
        self.updated += answer["updated"]
        self.unchanged += answer["unchanged"]
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
            f"skipped by type: {skipped:,}"
            + "".join(f"\n  {name}: {n:,}" for name, n in self.skipped_types.most_common()),
        ]
        if self.before_since:
            out.append(f"skipped before --since: {self.before_since:,}")
        if self.sessions_created or self.sessions_existing:
            out.append(
                f"sessions from workouts: {self.sessions_created:,} created, "
                f"{self.sessions_existing:,} already there"
            )
        return out


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
    A workout still running (ending in the future) is left for a later import."""
    for workout in workouts:
        if workout.end_ms > now_ms():
            continue
        session, created = await sessions.create(
            user_id,
            client_session_id=workout_session_id(workout),
            start_ms=workout.start_ms,
            notes=f"{workout.activity} (Apple Health workout, {workout.source_name})"[:1000],
        )
        if created:
            await sessions.end(user_id, session.id, end_ms=workout.end_ms)
            summary.sessions_created += 1
        else:
            summary.sessions_existing += 1


async def import_export(
    ingest: IngestService,
    user_id: str,
    path: Path,
    *,
    since_ms: int | None = None,
    sessions: SessionService | None = None,
    batch_size: int = MAX_SAMPLES,
    on_progress: Callable[[ImportSummary], None] | None = None,
) -> ImportSummary:
    """Import the Apple Health export at ``path`` for ``user_id``; with ``sessions``, each
    Workout also becomes a completed session. Raises ``ImportFailed`` (with the totals of the
    complete batches stored before the fault) when the file is unreadable, broken or hostile."""
    summary = ImportSummary()
    try:
        with open_export(path) as (stream, summary.bytes_total):
            batches = read_batches(stream, batch_size=batch_size, since_ms=since_ms, name=path.name)
            for batch in batches:
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
