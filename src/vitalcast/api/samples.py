"""POST /api/v1/samples: 200 when every sample was accepted, 207 with per-sample rejections;
POST /api/v1/samples/delete: a time range of the caller's samples removed for good.

Every live session's wearable posts a batch every few seconds, so the app answers the ingest
below FastAPI (``SamplesPost``), as it does the telemetry GET; FastAPI's route documents it.
"""

from __future__ import annotations

import json

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from vitalcast.api.deps import CurrentUser, Parts, get_parts, get_principal
from vitalcast.api.errors import (
    ANSWERED_ERRORS,
    domain_problem,
    problem_responses,
    unexpected_problem,
)
from vitalcast.api.schemas import (
    IngestRequest,
    SampleRangeDelete,
    SampleRangeDeleted,
    inline_json_schema,
    to_ms,
)
from vitalcast.auth import Principal
from vitalcast.errors import InvalidInput, VitalcastError
from vitalcast.wiring import ServerParts

router = APIRouter(prefix="/api/v1", tags=["samples"])

ROUTE_PATH = "/api/v1/samples"
_JSON = (b"content-type", b"application/json")


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
    # The app answers this route in ``SamplesPost`` below; FastAPI's route documents it and
    # answers it in an app built without that (the same answer). api.guard has authenticated
    # the caller, spent its budget and bounds the body (5 MB) while it streams in.
    user = await get_principal(request)
    parts = await get_parts(request)
    body = _decode(await request.body())
    outcome = await parts.ingest.ingest(user.user_id, body)
    return Response(outcome.body, status_code=outcome.status_code, media_type="application/json")


class SamplesPost:
    """ASGI: answers ``POST /api/v1/samples`` itself, between the request guard (which has
    authenticated the caller, spent its budget and bounds the body as it streams in) and
    FastAPI, as ``api.telemetry.TelemetryGet`` answers the telemetry GET: FastAPI's route
    matching, exception middleware and endpoint machinery cost about a tenth of a live update.
    It answers exactly as the route: the same body and status, the same problem+json for the
    errors the app's handlers answer (``api.errors``); a body over its limit and a client that
    left go back to the guard, and any other error on to the outermost middleware, as they would
    from the route. Other methods and paths pass through."""

    def __init__(self, app: ASGIApp, parts: ServerParts) -> None:
        self.app = app
        self._parts = parts
        #: named in the scope as the router would (for the access log)
        self._route = next(
            r for r in router.routes if isinstance(r, APIRoute) and r.path == ROUTE_PATH
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal: Principal | None = (
            scope.get("state", {}).get("principal")
            if scope["type"] == "http" and scope["path"] == ROUTE_PATH
            else None
        )
        if principal is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope["route"] = self._route
        try:
            body = _decode(await _body(receive))
            outcome = await self._parts.ingest.ingest(principal.user_id, body)
        except VitalcastError as exc:
            await domain_problem(exc)(scope, receive, send)
            return
        except ANSWERED_ERRORS as exc:
            await unexpected_problem(exc)(scope, receive, send)
            return
        headers = [(b"content-length", str(len(outcome.body)).encode()), _JSON]
        await send(
            {"type": "http.response.start", "status": outcome.status_code, "headers": headers}
        )
        await send({"type": "http.response.body", "body": outcome.body})


async def _body(receive: Receive) -> bytes:
    """The request's whole body, as ``Request.body`` reads it."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


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
