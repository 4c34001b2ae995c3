"""Session lifecycle rules: idempotent create, ending twice changes nothing, never leak existence."""

from __future__ import annotations

import base64
import binascii
import uuid

from vitalcast import timerange
from vitalcast.clock import Clock
from vitalcast.db.engine import Database
from vitalcast.errors import Conflict, InvalidInput, NotFound
from vitalcast.sessions import repository
from vitalcast.sessions.changes import NO_DELETION_LISTENER, ChangeListener, DeletionListener
from vitalcast.sessions.models import Session, SessionStatus


def encode_cursor(session: Session) -> str:
    return base64.urlsafe_b64encode(f"{session.start_ms}|{session.id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        start, _, session_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        start_ms = int(start)
        # Both halves go into a query: keep them to what the columns hold (BIGINT, UUID text).
        if not -(2**63) <= start_ms < 2**63 or str(uuid.UUID(session_id)) != session_id:
            raise ValueError(cursor)
        return start_ms, session_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput("The cursor is not valid.", code="INVALID_CURSOR") from None


def _check_moment(field: str, moment_ms: int, *, now_ms: int) -> None:
    out_of_range = timerange.check(field, moment_ms, now_ms=now_ms)
    if out_of_range is not None:
        raise InvalidInput(out_of_range.message, code=out_of_range.code)


class SessionService:
    """Creates, lists, closes and deletes sessions, and tells ``listener`` (after commit) when a
    session started, ended or was cancelled, ``deletions`` when one was deleted."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        listener: ChangeListener,
        *,
        deletions: DeletionListener = NO_DELETION_LISTENER,
    ) -> None:
        self._db = db
        self._clock = clock
        self._listener = listener
        self._deletions = deletions

    async def create(
        self,
        user_id: str,
        *,
        client_session_id: str | None,
        start_ms: int | None,
        notes: str | None,
    ) -> tuple[Session, bool]:
        """The new session and True, or the existing one with that client_session_id and False."""
        now = self._clock.now_ms()
        start = now if start_ms is None else start_ms
        _check_moment("started_at", start, now_ms=now)
        async with self._db.write() as conn:
            if client_session_id is not None:
                existing = await repository.get_by_client_id(conn, user_id, client_session_id)
                if existing is not None:
                    return existing, False
            session = await repository.insert(
                conn,
                user_id=user_id,
                client_session_id=client_session_id,
                start_ms=start,
                notes=notes,
                now_ms=now,
            )
        await self._listener.session_status(session)
        return session, True

    async def get(self, user_id: str, session_id: str) -> Session:
        async with self._db.read() as conn:
            session = await repository.get(conn, user_id, session_id)
        if session is None:
            raise NotFound("Session not found.", code="SESSION_NOT_FOUND")
        return session

    async def list(
        self, user_id: str, *, status: SessionStatus | None, limit: int, cursor: str | None
    ) -> tuple[list[Session], str | None]:
        after = decode_cursor(cursor) if cursor else None
        async with self._db.read() as conn:
            page = await repository.list_page(
                conn, user_id, status=status, limit=limit + 1, after=after
            )
        next_cursor = encode_cursor(page[limit - 1]) if len(page) > limit else None
        return page[:limit], next_cursor

    async def end(self, user_id: str, session_id: str, *, end_ms: int | None) -> Session:
        """Complete the session (ending twice changes nothing and tells nobody)."""
        return await self._close(user_id, session_id, SessionStatus.COMPLETED, end_ms)

    async def cancel(self, user_id: str, session_id: str) -> Session:
        """Cancel the session (cancelling twice changes nothing and tells nobody)."""
        return await self._close(user_id, session_id, SessionStatus.CANCELLED, None)

    async def delete(self, user_id: str, session_id: str) -> None:
        """Remove the session with its views, history and change log; its samples stay (they
        are the user's stream, not the session's). Someone else's session is not found."""
        async with self._db.write() as conn:
            # The user's lock first, as every watermark move takes it: an ingest of this user
            # either committed before (and its watermark move is deleted with the session) or
            # runs after and no longer finds the session.
            if await repository.lock_user(conn, user_id) is None:
                raise NotFound("Session not found.", code="SESSION_NOT_FOUND")
            session = await repository.get(conn, user_id, session_id, for_update=True)
            if session is None:
                raise NotFound("Session not found.", code="SESSION_NOT_FOUND")
            await repository.delete(conn, session)
        await self._deletions.session_deleted(session)

    async def _close(
        self, user_id: str, session_id: str, status: SessionStatus, end_ms: int | None
    ) -> Session:
        now = self._clock.now_ms()
        async with self._db.write() as conn:
            session = await repository.get(conn, user_id, session_id)
            if session is None:
                raise NotFound("Session not found.", code="SESSION_NOT_FOUND")
            if session.status is status:
                return session
            if session.status is not SessionStatus.ACTIVE:
                raise Conflict(
                    f"The session is already {session.status.value}.", code="SESSION_NOT_ACTIVE"
                )
            end = now if end_ms is None else end_ms
            _check_moment("ended_at", end, now_ms=now)
            if end < session.start_ms:
                raise InvalidInput("ended_at is before the session start.", code="END_BEFORE_START")
            closed = await repository.close(conn, session, status=status, end_ms=end, now_ms=now)
        await self._listener.session_status(closed)
        return closed
