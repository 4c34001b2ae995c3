"""/api/v1/me: the caller's whole account: export everything, erase it."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from vitalcast.api.deps import CurrentUser, Parts
from vitalcast.api.errors import problem_responses

router = APIRouter(prefix="/api/v1/me", tags=["account"])

ZIP = "application/zip"


@router.get(
    "/export",
    response_class=Response,
    responses={
        200: {
            "description": "A zip: account.json (user, sessions), samples.csv (every raw "
            "sample, the columns of export.csv?kind=samples) and sessions/<id>.json (one FHIR "
            "R4 bundle per session), streamed as it is built.",
            "content": {ZIP: {"schema": {"type": "string", "format": "binary"}}},
        },
        **problem_responses(401, 429, 503),
    },
)
async def export_account(user: CurrentUser, parts: Parts) -> Response:
    """Everything vitalcast holds of the caller, as one zip (data portability)."""
    await parts.export.check(user.user_id)
    return StreamingResponse(
        parts.export.archive(user.user_id),
        media_type=ZIP,
        headers={
            "Content-Disposition": 'attachment; filename="vitalcast-export.zip"',
            "Cache-Control": "private, no-store",
        },
    )


class ErasureOut(BaseModel):
    """Where the erasure stands: ``purging`` (tokens refused, rows being removed)."""

    state: str


class ErasureAccepted(BaseModel):
    erasure: ErasureOut


@router.delete(
    "",
    status_code=202,
    response_model=ErasureAccepted,
    responses=problem_responses(401, 503),
)
async def erase_account(user: CurrentUser, parts: Parts) -> ErasureAccepted:
    """Erase the caller's account: from this answer on every token of the user is refused
    (401) and its sockets close on every server; its rows are purged in the background, and
    afterwards nothing in the database or Redis names the user."""
    state = await parts.erasure.request(user.user_id)
    await parts.erasures.dispatch()
    return ErasureAccepted(erasure=ErasureOut(state=state.value))
