"""``IngestService.ingest``: validate, write in one transaction, bump watermarks, report.

One request is one transaction: either everything valid in it is stored and every affected
session's watermark moves, or nothing is (a 4xx/5xx leaves no partial state).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from vitalcast.clock import Clock
from vitalcast.db.engine import Database
from vitalcast.db.partitions import is_missing_partition
from vitalcast.errors import Conflict, Unauthenticated
from vitalcast.ingest import repository
from vitalcast.ingest.validation import ValidatedBatch, validate_batch
from vitalcast.observability import Metrics, debug_enabled, get_logger
from vitalcast.sessions import repository as session_repository
from vitalcast.sessions.changes import CachedView, ChangeListener
from vitalcast.sessions.models import Session

log = get_logger(__name__)

#: samples and deletions of an ingest whose unit is short (``Database.unit``): a live sync
#: sends a few; an import's batch of thousands writes long enough to hold the loop
SHORT_INGEST_SAMPLES = 100


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    """The HTTP answer (status + encoded body) and the sessions whose telemetry went stale."""

    status_code: int
    body: bytes
    touched: list[Session]
    #: the touched sessions' cached views
    views: list[CachedView]


#: what an ingest's transaction did: what was written, the sessions touched, their cached views,
#: the new change_seq, the status and the encoded answer
_Applied = tuple[repository.WriteResult, list[Session], list[CachedView], int, int, bytes]


def _answer_head(written: repository.WriteResult, batch: ValidatedBatch) -> tuple[int, bytes]:
    """The status of an applied ingest, and its encoded body up to the value of its last key,
    ``change_seq`` (``repository.PendingRequest``)."""
    status = 207 if batch.rejected else 200
    body = orjson.dumps(
        {
            "inserted": written.inserted,
            "updated": written.updated,
            "unchanged": written.unchanged,
            "deleted": written.deleted,
            "rejected": [r.as_dict() for r in batch.rejected],
        }
    )
    return status, body[:-1] + b',"change_seq":'


def _answer_with(head: bytes, seq: int) -> bytes:
    """An applied ingest's encoded body: its head (``_answer_head``) and its ``change_seq``."""
    return head + b"%d}" % seq


def _answer(written: repository.WriteResult, batch: ValidatedBatch, seq: int) -> tuple[int, bytes]:
    """The status and encoded body of an applied ingest."""
    status, head = _answer_head(written, batch)
    return status, _answer_with(head, seq)


def _replayed(replay: tuple[str, int, bytes], fingerprint: str) -> IngestOutcome:
    """The stored answer of a request replayed with the same body; ``Conflict`` for another."""
    stored_hash, status, response = replay
    if stored_hash != fingerprint:
        raise Conflict("This request_id was used with another body.", code="REQUEST_ID_REUSED")
    return IngestOutcome(status, response, [], [])


def body_fingerprint(body: object) -> str:
    """Hash of the decoded body with sorted keys: key order or spacing is not "another body"."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


class IngestService:
    """Applies ingest requests and tells ``listener`` (after commit) which sessions they touched,
    so every caller (route, simulator, importer) triggers the same recomputes."""

    def __init__(
        self, db: Database, clock: Clock, metrics: Metrics, listener: ChangeListener
    ) -> None:
        self._db = db
        self._clock = clock
        self._listener = listener
        #: a live sync may be one statement (``_unit``): PostgreSQL on asyncpg
        self._one_statement = db.alone_units
        self._samples = {
            outcome: metrics.ingest_samples.labels(outcome=outcome)
            for outcome in ("inserted", "updated", "unchanged", "deleted", "rejected")
        }

    async def ingest(self, user_id: str, body: object) -> IngestOutcome:
        """Apply one decoded request body for ``user_id``. Raises for whole-request errors."""
        now_ms = self._clock.now_ms()
        batch = validate_batch(body, now_ms=now_ms)
        fingerprint = body_fingerprint(body) if batch.request_id else ""
        months = [s.start_ms for s in batch.samples]
        # a live sync's few samples: its unit may run on the loop's thread (``Database.unit``)
        short = len(batch.samples) + len(batch.deletions) <= SHORT_INGEST_SAMPLES
        # Before the transaction: attaching a month waits for the locks a writer holds.
        await self._db.partitions.ensure(months)
        try:
            applied = await self._unit(user_id, batch, fingerprint, now_ms, short=short)
        except Exception as exc:
            if not is_missing_partition(exc):
                raise
            # Another process (retention) dropped a month this process believed was there:
            # nothing was written; look again, create it, and apply once more.
            self._db.partitions.forget()
            await self._db.partitions.ensure(months)
            applied = await self._unit(user_id, batch, fingerprint, now_ms, short=short)
        if isinstance(applied, IngestOutcome):
            log.info("ingest_replayed", user_id=user_id)
            return applied
        written, touched, views, seq, status, response = applied
        self._count(written, len(batch.rejected))
        # Routine, one per request: at debug, so a terminal stays readable at the default level.
        if debug_enabled():
            log.debug(
                "ingest",
                user_id=user_id,
                inserted=written.inserted,
                updated=written.updated,
                unchanged=written.unchanged,
                deleted=written.deleted,
                rejected=len(batch.rejected),
                sessions_touched=len(touched),
                change_seq=seq,
            )
        await self._listener.sessions_changed(touched, views)
        return IngestOutcome(status, response, touched, views)

    async def _unit(
        self, user_id: str, batch: ValidatedBatch, fingerprint: str, now_ms: int, *, short: bool
    ) -> IngestOutcome | _Applied:
        """The ingest's unit of work. A live sync on PostgreSQL (new samples, no deletions) is
        first tried as one statement outside a transaction (``_apply_new``); a batch it
        declines (a sample it already knows) then runs as a transaction (``_apply``), as every
        other ingest does."""
        if (
            self._one_statement
            and not batch.deletions
            and 0 < len(batch.samples) <= repository.ONE_STATEMENT_MAX
        ):
            done = await self._db.unit(
                lambda conn: self._apply_new(conn, user_id, batch, fingerprint, now_ms),
                write=True,
                alone=True,
                short=short,
            )
            if done is not None:
                return done
        return await self._db.unit(
            lambda conn: self._apply(conn, user_id, batch, fingerprint, now_ms),
            write=True,
            short=short,
        )

    async def _apply_new(
        self,
        conn: AsyncConnection,
        user_id: str,
        batch: ValidatedBatch,
        fingerprint: str,
        now_ms: int,
    ) -> IngestOutcome | _Applied | None:
        """A batch of new samples in one statement that locks the user, answers a replayed
        request, or writes the samples, records the change and the request
        (``repository.insert_new_pg``), committed by itself; None when a sample's identity
        existed (nothing was written)."""
        written = repository.WriteResult(inserted=len(batch.samples))
        status, head = _answer_head(written, batch)
        request = (
            None
            if batch.request_id is None
            else repository.PendingRequest(batch.request_id, fingerprint, status, head)
        )
        new = await repository.insert_new_pg(
            conn,
            user_id,
            batch.samples,
            now_ms=now_ms,
            complete=True,
            all_or_nothing=True,
            request=request,
        )
        if not new.user_found:
            raise Unauthenticated("The token's user does not exist.", code="TOKEN_INVALID")
        if new.replay is not None:
            return _replayed(new.replay, fingerprint)
        if not new.written or new.seq is None or new.recorded is None:
            return None
        touched, views = new.recorded
        seq = new.seq + 1
        return written, touched, views, seq, status, _answer_with(head, seq)

    async def _apply(
        self,
        conn: AsyncConnection,
        user_id: str,
        batch: ValidatedBatch,
        fingerprint: str,
        now_ms: int,
    ) -> IngestOutcome | _Applied:
        """The transaction of one ingest (a unit: on SQLite it runs on a database thread in
        one hop): the stored answer of a replayed request, or what was written, the sessions
        touched, the new change_seq, the status and the encoded answer."""
        seq = await session_repository.lock_user(conn, user_id)
        if seq is None:
            raise Unauthenticated("The token's user does not exist.", code="TOKEN_INVALID")
        if batch.request_id is not None:
            replay = await repository.find_replay(conn, user_id, batch.request_id)
            if replay is not None:
                return _replayed(replay, fingerprint)
        written = await repository.write_samples(
            conn, user_id, batch.samples, batch.deletions, change_seq=seq + 1, now_ms=now_ms
        )
        touched: list[Session] = []
        views: list[CachedView] = []
        if written.changed:
            seq += 1
            touched, views = (
                written.recorded
                if written.recorded is not None
                else await repository.record_change(
                    conn, user_id, seq, written.changed_times_ms, now_ms=now_ms
                )
            )
        status, response = _answer(written, batch, seq)
        if batch.request_id is not None:
            await repository.record_request(
                conn,
                user_id=user_id,
                request_id=batch.request_id,
                body_sha256=fingerprint,
                status_code=status,
                response=response,
                now_ms=now_ms,
            )
        return written, touched, views, seq, status, response

    def _count(self, written: repository.WriteResult, rejected: int) -> None:
        for outcome, n in (
            ("inserted", written.inserted),
            ("updated", written.updated),
            ("unchanged", written.unchanged),
            ("deleted", written.deleted),
            ("rejected", rejected),
        ):
            if n:
                self._samples[outcome].inc(n)
