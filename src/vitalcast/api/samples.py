"""POST /api/v1/samples: 200 when every sample was accepted, 207 with per-sample rejections."""

from __future__ import annotations

import json

import orjson
from fastapi import APIRouter, Request, Response

from vitalcast.api.deps import CurrentUser, Parts
from vitalcast.api.errors import problem_responses
from vitalcast.api.ratelimits import IngestRateLimit
from vitalcast.api.schemas import IngestRequest, inline_json_schema
from vitalcast.errors import InvalidInput

router = APIRouter(prefix="/api/v1", tags=["samples"])


def _decode(raw: bytes) -> object:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    # Only the standard library reads NaN/Infinity/1e999, which must become NON_FINITE_VALUE
    # rejections rather than a malformed request.
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidInput("The body is not valid JSON.", code="MALFORMED_JSON") from None


@router.post(
    "/samples",
    dependencies=[IngestRateLimit],
    responses={
        207: {"description": "Some samples were rejected; the rest were stored."},
        **problem_responses(401, 409, 413, 422, 429, 503),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline_json_schema(IngestRequest)}},
        }
    },
)
async def ingest_samples(request: Request, user: CurrentUser, parts: Parts) -> Response:
    """Store a batch of samples idempotently and move the watermarks of the sessions it touches."""
    # api.guard has authenticated the caller and bounds the body (5 MB) while it streams in.
    body = _decode(await request.body())
    outcome = await parts.ingest.ingest(user.user_id, body)
    return Response(outcome.body, status_code=outcome.status_code, media_type="application/json")
