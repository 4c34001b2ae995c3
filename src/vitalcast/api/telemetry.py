"""GET /api/v1/sessions/{id}/telemetry: the state mapping of docs/design.md, ETag / If-None-Match.

The body is joined from the stored payload bytes (``TelemetryAnswer.body``); nothing here decodes
or validates it, so the route stays as cheap as the cache hit it serves.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response

from vitalcast import catalog
from vitalcast.api.deps import CurrentUser, Parts, SessionId
from vitalcast.api.errors import problem_responses
from vitalcast.api.ratelimits import TelemetryRateLimit
from vitalcast.telemetry.keys import MAX_WINDOW_MINUTES, MIN_WINDOW_MINUTES

router = APIRouter(prefix="/api/v1/sessions", tags=["telemetry"])

_NO_STORE = "private, no-cache"
# Documented bounds only: the service checks them itself and answers with precise codes
# (WINDOW_OUT_OF_RANGE, INVALID_RESOLUTION, UNKNOWN_METRIC).
_WINDOW = {"minimum": MIN_WINDOW_MINUTES, "maximum": MAX_WINDOW_MINUTES}
_RESOLUTION = {"enum": ["1m", "5m", "auto"]}
_CODES = "|".join(catalog.ALL_CODES)
_METRICS = {"pattern": f"^(all|({_CODES})(,({_CODES}))*)?$"}


@router.get(
    "/{session_id}/telemetry",
    dependencies=[TelemetryRateLimit],
    responses={
        200: {"description": "ready, stale, no_data or failed (see `state`)"},
        202: {"description": "computing: nothing cached yet, retry after `Retry-After`"},
        304: {"description": "ready and unchanged since `If-None-Match`"},
        **problem_responses(401, 404, 422, 429, 503),
    },
)
async def get_telemetry(
    session_id: SessionId,
    user: CurrentUser,
    parts: Parts,
    window_minutes: Annotated[
        int | None, Query(description="Padding, 15…180 minutes.", json_schema_extra=_WINDOW)
    ] = None,
    resolution: Annotated[
        str, Query(description="1m, 5m or auto.", json_schema_extra=_RESOLUTION)
    ] = "auto",
    metrics: Annotated[
        str | None,
        Query(
            max_length=500,
            description="Comma list of metric codes, or all.",
            json_schema_extra=_METRICS,
        ),
    ] = None,
    since_watermark: Annotated[
        int | None,
        Query(
            ge=0,
            le=2**63 - 1,
            description="Watermark of the payload the client holds: a ready answer is then "
            "`{state, delta}` when the server can express the change, else the full payload.",
        ),
    ] = None,
    if_none_match: Annotated[str | None, Header(max_length=1000)] = None,
) -> Response:
    """Session telemetry ``{state, retry_after_seconds?, error?, telemetry}``, or ``{state,
    delta}`` for a client that sent ``since_watermark``."""
    service = parts.telemetry
    answer = await service.get(
        user.user_id,
        session_id,
        window_minutes=service.default_window_minutes if window_minutes is None else window_minutes,
        resolution=resolution,
        metrics=None if metrics is None else metrics.split(","),
        if_none_match=if_none_match,
        since_watermark=since_watermark,
    )
    headers = {"Cache-Control": _NO_STORE}
    if answer.etag is not None:
        headers["ETag"] = answer.etag
    if answer.retry_after_s is not None:
        headers["Retry-After"] = str(answer.retry_after_s)
    if answer.not_modified:
        return Response(status_code=304, headers=headers)
    return Response(
        answer.body(),
        status_code=answer.http_status,
        headers=headers,
        media_type="application/json",
    )
