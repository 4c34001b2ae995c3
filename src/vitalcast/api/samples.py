"""POST /api/v1/samples: 200 when every sample was accepted, 207 with per-sample rejections."""

from __future__ import annotations

import json
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from vitalcast.api.deps import CurrentUser, Parts
from vitalcast.api.errors import problem_responses
from vitalcast.api.ratelimits import IngestRateLimit
from vitalcast.api.schemas import IngestRequest, inline_json_schema
from vitalcast.errors import InvalidInput, PayloadTooLarge
from vitalcast.ingest.validation import MAX_BODY_BYTES

router = APIRouter(prefix="/api/v1", tags=["samples"])


_TOO_LARGE = f"The body is larger than {MAX_BODY_BYTES // (1024 * 1024)} MB."


async def _read_body(request: Request) -> bytes:
    """The body, refusing more than MAX_BODY_BYTES before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise PayloadTooLarge(_TOO_LARGE, code="BODY_TOO_LARGE")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise PayloadTooLarge(_TOO_LARGE, code="BODY_TOO_LARGE")
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(raw: bytes) -> Any:
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
    body = _decode(await _read_body(request))
    outcome = await parts.ingest.ingest(user.user_id, body)
    return Response(outcome.body, status_code=outcome.status_code, media_type="application/json")
