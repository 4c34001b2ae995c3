"""Shares of one session with a caregiver: create, list, revoke, and who read what when.

Owner only: a share token is refused here (403 ``SHARE_SCOPE``, by ``api.share_scope``), and
someone else's session or share is 404. The token is in the creation's answer and nowhere else.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import Field
from sqlalchemy.ext.asyncio import AsyncConnection

from vitalcast import shares as share_repository
from vitalcast.api.deps import CurrentUser, Parts, SessionId
from vitalcast.api.errors import problem_responses
from vitalcast.api.schemas import NO_NUL, StrictModel, iso
from vitalcast.errors import NotFound
from vitalcast.sessions import repository as session_repository
from vitalcast.shares import MAX_EXPIRES_IN_MINUTES, Share

router = APIRouter(prefix="/api/v1", tags=["shares"])

ShareId = Annotated[
    str,
    Path(
        pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
        description="Share id (UUID).",
    ),
]
_OWNER_ONLY = problem_responses(401, 403, 404, 422, 503)


class ShareCreate(StrictModel):
    expires_in_minutes: int = Field(
        ge=1, le=MAX_EXPIRES_IN_MINUTES, description="Minutes until the link stops working."
    )
    label: str | None = Field(None, min_length=1, max_length=200, pattern=NO_NUL)


class ShareOut(StrictModel):
    id: str
    session_id: str
    label: str | None
    state: str
    created_at: str | None
    created_at_ms: int
    expires_at: str | None
    expires_at_ms: int
    revoked_at_ms: int | None

    @classmethod
    def of(cls, share: Share, now_ms: int) -> ShareOut:
        return cls(
            id=share.id,
            session_id=share.session_id,
            label=share.label,
            state=share.state(now_ms).value,
            created_at=iso(share.created_at_ms),
            created_at_ms=share.created_at_ms,
            expires_at=iso(share.expires_at_ms),
            expires_at_ms=share.expires_at_ms,
            revoked_at_ms=share.revoked_at_ms,
        )


class ShareCreated(ShareOut):
    #: shown once: only its hash is stored
    token: str
    #: the dashboard opened on this one session
    url: str


class SharePage(StrictModel):
    items: list[ShareOut]


class AccessOut(StrictModel):
    at: str | None
    at_ms: int
    kind: str


class AccessPage(StrictModel):
    items: list[AccessOut]
    next_cursor: str | None


@router.post(
    "/sessions/{session_id}/shares",
    status_code=201,
    response_model=ShareCreated,
    responses=problem_responses(400, 401, 403, 404, 413, 422, 503),
)
async def create_share(
    session_id: SessionId, body: ShareCreate, user: CurrentUser, parts: Parts, request: Request
) -> ShareCreated:
    """A read-only link to this session for ``expires_in_minutes`` (at most 7 days)."""
    now_ms = parts.clock.now_ms()
    async with parts.db.write() as conn:
        if not await _owns_session(conn, user.user_id, session_id):
            raise NotFound("Session not found.", code="SESSION_NOT_FOUND")
        share, token = await share_repository.create(
            conn,
            user_id=user.user_id,
            session_id=session_id,
            label=body.label,
            now_ms=now_ms,
            expires_in_minutes=body.expires_in_minutes,
        )
    url = str(request.base_url).rstrip("/") + f"/#share={token}"
    return ShareCreated(**ShareOut.of(share, now_ms).model_dump(), token=token, url=url)


@router.get("/sessions/{session_id}/shares", response_model=SharePage, responses=_OWNER_ONLY)
async def list_shares(session_id: SessionId, user: CurrentUser, parts: Parts) -> SharePage:
    """The session's shares, newest first, revoked and expired ones included (never a token)."""
    async with parts.db.read() as conn:
        if not await _owns_session(conn, user.user_id, session_id):
            raise NotFound("Session not found.", code="SESSION_NOT_FOUND")
        found = await share_repository.of_session(conn, user.user_id, session_id)
    now_ms = parts.clock.now_ms()
    return SharePage(items=[ShareOut.of(share, now_ms) for share in found])


@router.delete(
    "/shares/{share_id}", status_code=204, response_class=Response, responses=_OWNER_ONLY
)
async def revoke_share(share_id: ShareId, user: CurrentUser, parts: Parts) -> Response:
    """Revoke the share: its token answers 401 ``SHARE_REVOKED`` from now on and its sockets
    are closed within a second on every server. Revoking twice changes nothing."""
    async with parts.db.write() as conn:
        found = await share_repository.revoke(
            conn, user.user_id, share_id.lower(), now_ms=parts.clock.now_ms()
        )
    if not found:
        raise NotFound("Share not found.", code="SHARE_NOT_FOUND")
    await parts.authenticator.revoke_share(share_id.lower())
    return Response(status_code=204)


@router.get("/shares/{share_id}/access", response_model=AccessPage, responses=_OWNER_ONLY)
async def share_access(
    share_id: ShareId,
    user: CurrentUser,
    parts: Parts,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=20, pattern=r"^[0-9]+$")] = None,
) -> AccessPage:
    """Every read through the share, newest first: when, and what kind (``session``,
    ``telemetry``, ``export_csv``, ``fhir``, ``subscribe``); never what it returned. Reads on
    other servers appear within about a second."""
    await parts.share_access.flush()
    async with parts.db.read() as conn:
        share = await share_repository.get(conn, user.user_id, share_id.lower())
        if share is None:
            raise NotFound("Share not found.", code="SHARE_NOT_FOUND")
        found = await share_repository.accesses(
            conn, share.id, limit=limit + 1, before_id=None if cursor is None else int(cursor)
        )
    page = found[:limit]
    next_cursor = str(page[-1].id) if len(found) > limit else None
    return AccessPage(
        items=[AccessOut(at=iso(a.at_ms), at_ms=a.at_ms, kind=a.kind) for a in page],
        next_cursor=next_cursor,
    )


class ShareSelf(StrictModel):
    share_id: str
    session_id: str
    label: str | None
    expires_at: str | None
    expires_at_ms: int


@router.get("/share", response_model=ShareSelf, responses=problem_responses(401, 404))
async def this_share(user: CurrentUser, parts: Parts) -> ShareSelf:
    """What the presented share token opens (the dashboard's ``/#share=…`` asks it first); a
    user's own token is 404 ``SHARE_NOT_FOUND``."""
    if user.share_id is None or user.session_id is None:
        raise NotFound("The token is not a share token.", code="SHARE_NOT_FOUND")
    async with parts.db.read() as conn:
        share = await share_repository.get(conn, user.user_id, user.share_id)
    if share is None:
        raise NotFound("Share not found.", code="SHARE_NOT_FOUND")
    return ShareSelf(
        share_id=share.id,
        session_id=share.session_id,
        label=share.label,
        expires_at=iso(share.expires_at_ms),
        expires_at_ms=share.expires_at_ms,
    )


async def _owns_session(conn: AsyncConnection, user_id: str, session_id: str) -> bool:
    return await session_repository.get(conn, user_id, session_id.lower()) is not None
