"""``GET /api/v1/me/export``: everything vitalcast holds of a user, as one zip, streamed.

- ``account.json``: the user (id, name, created) and every session (as the sessions API shows
  them);
- ``samples.csv``: every raw sample, the columns of ``export.csv?kind=samples``;
- ``sessions/<id>.json``: one FHIR R4 bundle per session (its window at the server's default
  padding), as ``GET …/fhir`` gives it.

Every part is read in pages, each in a short transaction of its own, and compressed as it
comes (``interop.zip_stream``), so memory stays flat whatever the account's size and a client
that stops reading pins no database connection. A sample ingested while the export runs may
be in one file and not in another.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import orjson
import sqlalchemy as sa

from vitalcast.clock import Clock, iso_ms
from vitalcast.db.engine import Database
from vitalcast.db.tables import sessions, users
from vitalcast.errors import NotFound
from vitalcast.interop import fhir_export
from vitalcast.interop.csv_export import samples_csv
from vitalcast.interop.raw_samples import stream_samples, stream_user_samples, window_of
from vitalcast.interop.zip_stream import Member, zip_stream
from vitalcast.samples import Sample
from vitalcast.sessions.models import Session

#: sessions read per partition when listing them
SESSION_ROWS = 500


def _session_json(session: Session) -> dict[str, object]:
    return {
        "id": session.id,
        "client_session_id": session.client_session_id,
        "status": session.status.value,
        "started_at": iso_ms(session.start_ms),
        "ended_at": None if session.end_ms is None else iso_ms(session.end_ms),
        "start_ms": session.start_ms,
        "end_ms": session.end_ms,
        "notes": session.notes,
        "source_watermark": session.source_watermark,
        "archived": session.archived_at_ms is not None,
    }


class AccountExport:
    """Builds the export archive of one user from the database."""

    def __init__(self, db: Database, clock: Clock, *, window_minutes: int) -> None:
        self._db = db
        self._clock = clock
        self._window_minutes = window_minutes

    async def check(self, user_id: str) -> None:
        """Fail before the answer starts: a stream cannot turn into an error half-way."""
        async with self._db.read() as conn:
            found = await conn.scalar(sa.select(users.c.id).where(users.c.id == user_id))
        if found is None:
            raise NotFound("User not found.", code="USER_NOT_FOUND")

    def archive(self, user_id: str) -> AsyncIterator[bytes]:
        """The zip's bytes in chunks."""
        return zip_stream(self._members(user_id))

    async def _members(self, user_id: str) -> AsyncIterator[Member]:
        yield Member("account.json", self._account(user_id))
        yield Member("samples.csv", samples_csv(self._samples(user_id)))
        async for partition in self._sessions(user_id):
            for session in partition:
                # An archived session's raw samples expired: no bundle of what is left.
                if session.archived_at_ms is None:
                    yield Member(f"sessions/{session.id}.json", self._bundle(session))

    async def _sessions(self, user_id: str) -> AsyncIterator[Sequence[Session]]:
        """The user's sessions by start, a page per short transaction: the archive is written
        at the client's pace, and a client that stops reading must not pin a connection."""
        c = sessions.c
        after: tuple[int, str] | None = None
        while True:
            query = sa.select(sessions).where(c.user_id == user_id)
            if after is not None:
                query = query.where(c.start_ms >= after[0], sa.tuple_(c.start_ms, c.id) > after)
            query = query.order_by(c.start_ms, c.id).limit(SESSION_ROWS)
            async with self._db.read() as conn:
                page = [Session.from_row(row) for row in await conn.execute(query)]
            if not page:
                return
            yield page
            if len(page) < SESSION_ROWS:
                return
            after = (page[-1].start_ms, page[-1].id)

    async def _account(self, user_id: str) -> AsyncIterator[bytes]:
        async with self._db.read() as conn:
            user = (
                await conn.execute(
                    sa.select(users.c.id, users.c.name, users.c.created_at_ms).where(
                        users.c.id == user_id
                    )
                )
            ).one()
        head = {
            "user": {
                "id": user.id,
                "name": user.name,
                "created_at": iso_ms(user.created_at_ms),
            },
            "exported_at": iso_ms(self._clock.now_ms()),
        }
        yield orjson.dumps(head)[:-1] + b',"sessions":['
        first = True
        async for partition in self._sessions(user_id):
            for session in partition:
                yield (b"" if first else b",") + orjson.dumps(_session_json(session))
                first = False
        yield b"]}"

    async def _samples(self, user_id: str) -> AsyncIterator[Sequence[Sample]]:
        """Every stored sample of the user, in the order of the (user, metric, start) index,
        each partition in a short transaction (a slow reader pins no connection)."""
        async for partition in stream_user_samples(self._db, user_id):
            yield partition

    def _bundle(self, session: Session) -> AsyncIterator[bytes]:
        now = self._clock.now_ms()
        window = window_of(session, self._window_minutes, now)
        return fhir_export.bundle_json(
            session, stream_samples(self._db, session.user_id, window), now_ms=now
        )
