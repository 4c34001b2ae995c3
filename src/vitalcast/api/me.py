"""/api/v1/me: the caller's whole account: export everything (and, later, erase it)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse

from vitalcast.api.deps import CurrentUser, Parts
from vitalcast.api.errors import problem_responses
from vitalcast.api.ratelimits import TelemetryRateLimit

router = APIRouter(prefix="/api/v1/me", tags=["account"])

ZIP = "application/zip"


@router.get(
    "/export",
    dependencies=[TelemetryRateLimit],
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
