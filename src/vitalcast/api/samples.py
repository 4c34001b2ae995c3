"""POST /api/v1/samples: 200 when every sample was accepted, 207 with per-sample rejections;
POST /api/v1/samples/delete: a time range of the caller's samples removed for good.

Every live session's wearable posts a batch every few seconds, so the app answers the ingest
below FastAPI (``api.hot_routes``), as it does the telemetry GET; FastAPI's route documents it.
"""

from __future__ import annotations

import json
import re

import orjson
from fastapi import APIRouter, Request, Response
from starlette.types import Receive, Scope

from vitalcast.api.deps import CurrentUser, Parts, get_parts, get_principal
from vitalcast.api.errors import problem_responses
from vitalcast.api.hot_routes import Answer, hot_route
from vitalcast.api.schemas import (
    IngestRequest,
    SampleRangeDelete,
    SampleRangeDeleted,
    inline_json_schema,
    to_ms,
)
from vitalcast.auth import Principal
from vitalcast.errors import InvalidInput
from vitalcast.wiring import ServerParts

router = APIRouter(prefix="/api/v1", tags=["samples"])

ROUTE_PATH = "/api/v1/samples"
_JSON = (b"content-type", b"application/json")


#: the deepest nesting handed to the standard library's parser (an ingest body nests 3 deep)
FALLBACK_MAX_DEPTH = 32
#: a JSON string once its escaped backslashes and quotes are gone
_PLAIN_STRING = re.compile(rb'"[^"]*"')
#: braces read as brackets: only the depth counts here (the parser refuses a mismatch)
_AS_BRACKETS = bytes.maketrans(b"{}", b"[]")
#: every byte but the four brackets (``bytes.translate`` deletes them)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _decode(raw: bytes) -> object:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    # Only the standard library reads NaN/Infinity/1e999, which must become NON_FINITE_VALUE
    # rejections rather than a malformed request. It recurses on the interpreter's stack, one
    # level per bracket: handed a deep body, whether it raised RecursionError or parsed it
    # depended on the caller's stack depth and the process's recursion limit at that moment
    # (Hypothesis raises it while its tests run). So it is never handed one (orjson refuses
    # more than 1024 levels).
    if _nests_deeper_than(raw, FALLBACK_MAX_DEPTH):
        raise InvalidInput("The body is not valid JSON.", code="MALFORMED_JSON")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidInput("The body is not valid JSON.", code="MALFORMED_JSON") from None


def _nests_deeper_than(raw: bytes, depth: int) -> bool:
    """True when the JSON text ``raw`` nests brackets more than ``depth`` deep (or leaves some
    unbalanced), found without recursing and at C speed: escaped backslashes and quotes dropped
    (pairs of backslashes first, as a parser reads a run of them), then strings, then all but
    the brackets; then the innermost pairs removed, one level per pass (``bytes.replace`` does
    not rescan what it joined). Up to a parser's first error, strings are where it sees them."""
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = _PLAIN_STRING.sub(b"", unescaped).translate(_AS_BRACKETS, _NOT_BRACKETS)
    for _ in range(depth):
        if not brackets:
            return False
        brackets = brackets.replace(b"[]", b"")
    return bool(brackets)


@router.post(
    "/samples",
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
async def ingest_samples(request: Request) -> Response:
    """Store a batch of samples idempotently and move the watermarks of the sessions it touches."""
    # The app answers this route in ``api.hot_routes``; FastAPI's route documents it and
    # answers it in an app built without that (the same answer). api.guard has authenticated
    # the caller, spent its budget and bounds the body (5 MB) while it streams in.
    user = await get_principal(request)
    parts = await get_parts(request)
    body = _decode(await request.body())
    outcome = await parts.ingest.ingest(user.user_id, body)
    return Response(outcome.body, status_code=outcome.status_code, media_type="application/json")


async def _hot_ingest(
    parts: ServerParts, principal: Principal, scope: Scope, receive: Receive
) -> Answer:
    """The ingest as ``api.hot_routes`` answers it: what ``ingest_samples`` answers."""
    outcome = await parts.ingest.ingest(
        principal.user_id, _decode(await Request(scope, receive).body())
    )
    headers = [(b"content-length", str(len(outcome.body)).encode()), _JSON]
    return outcome.status_code, headers, outcome.body


@router.post(
    "/samples/delete",
    response_model=SampleRangeDeleted,
    responses=problem_responses(400, 401, 413, 422, 429, 503),
)
async def delete_samples(
    body: SampleRangeDelete, user: CurrentUser, parts: Parts
) -> SampleRangeDeleted:
    """Remove the caller's samples starting in ``[from, to)`` (rows gone, not flagged) and move
    the watermarks of the sessions whose windows held them, as an ingest does."""
    done = await parts.sample_deletion.delete_range(
        user.user_id, from_ms=to_ms(body.from_), to_ms=to_ms(body.to), metrics=body.metrics
    )
    return SampleRangeDeleted(deleted=done.deleted, change_seq=done.change_seq)


#: the ingest answered below FastAPI (``api.hot_routes``)
HOT = hot_route(router.routes, ROUTE_PATH, "POST", _hot_ingest)
