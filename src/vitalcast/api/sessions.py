"""/api/v1/sessions: create (idempotent on client_session_id), list, get, end, cancel, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, Response

from vitalcast.api.deps import CurrentUser, Parts, SessionId
from vitalcast.api.errors import problem_responses
from vitalcast.api.schemas import SessionCreate, SessionEnd, SessionOut, SessionPage, to_ms
from vitalcast.sessions.models import SessionStatus

router = APIRouter(
    prefix="/api/v1/sessions", tags=["sessions"], responses=problem_responses(401, 413, 422, 503)
)
_NOT_FOUND = problem_responses(404)


_UNREADABLE_BODY = problem_responses(400)


@router.post(
    "",
    response_model=SessionOut,
    status_code=201,
    responses={
        200: {"model": SessionOut, "description": "Created before (same client_session_id)."},
        **_UNREADABLE_BODY,
        **problem_responses(429),
    },
)
async def create_session(
    body: SessionCreate, user: CurrentUser, parts: Parts, response: Response
) -> SessionOut:
    """Start a session; 200 with the first one when ``client_session_id`` was seen before."""
    session, created = await parts.sessions.create(
        user.user_id,
        client_session_id=body.client_session_id,
        start_ms=None if body.started_at is None else to_ms(body.started_at),
        notes=body.notes,
    )
    if not created:
        response.status_code = 200
    return SessionOut.of(session)


@router.get("", response_model=SessionPage)
async def list_sessions(
    user: CurrentUser,
    parts: Parts,
    status: SessionStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> SessionPage:
    """The caller's sessions, newest first."""
    items, next_cursor = await parts.sessions.list(
        user.user_id, status=status, limit=limit, cursor=cursor
    )
    return SessionPage(items=[SessionOut.of(s) for s in items], next_cursor=next_cursor)


@router.get("/{session_id}", response_model=SessionOut, responses=_NOT_FOUND)
async def get_session(session_id: SessionId, user: CurrentUser, parts: Parts) -> SessionOut:
    return SessionOut.of(await parts.sessions.get(user.user_id, session_id))


@router.post(
    "/{session_id}/end", response_model=SessionOut, responses=problem_responses(400, 404, 409)
)
async def end_session(
    session_id: SessionId,
    user: CurrentUser,
    parts: Parts,
    body: Annotated[SessionEnd | None, Body()] = None,
) -> SessionOut:
    """Complete the session; ending twice changes nothing."""
    ended_at = body.ended_at if body is not None else None
    session = await parts.sessions.end(
        user.user_id, session_id, end_ms=None if ended_at is None else to_ms(ended_at)
    )
    return SessionOut.of(session)


@router.post(
    "/{session_id}/cancel", response_model=SessionOut, responses=problem_responses(404, 409)
)
async def cancel_session(session_id: SessionId, user: CurrentUser, parts: Parts) -> SessionOut:
    session = await parts.sessions.cancel(user.user_id, session_id)
    return SessionOut.of(session)


@router.delete("/{session_id}", status_code=204, response_class=Response, responses=_NOT_FOUND)
async def delete_session(session_id: SessionId, user: CurrentUser, parts: Parts) -> Response:
    """Delete the session, its views, history and change log; its samples stay (they belong to
    the user's stream). Subscribers get ``session.status`` ``deleted`` and are unsubscribed."""
    await parts.sessions.delete(user.user_id, session_id)
    return Response(status_code=204)
