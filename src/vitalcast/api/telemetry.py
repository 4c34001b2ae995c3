"""GET /api/v1/sessions/{id}/telemetry: the state mapping of docs/design.md, ETag / If-None-Match.

The route every dashboard polls, so it takes FastAPI's cheapest path: no dependency to resolve
(``api.guard`` has authenticated the caller and spent its budget) and its parameters validated
in one call (``api.params``). The body is joined from the stored payload bytes
(``TelemetryAnswer.body``); nothing here decodes or validates it.
"""

from __future__ import annotations

from typing import ClassVar

from fastapi import APIRouter, Request, Response
from pydantic import Field
from pydantic.config import JsonDict

from vitalcast import catalog
from vitalcast.api.deps import SESSION_ID_DESCRIPTION, SESSION_ID_PATTERN, get_parts, get_principal
from vitalcast.api.errors import problem_responses
from vitalcast.api.params import Location, RouteParams
from vitalcast.telemetry.keys import MAX_WINDOW_MINUTES, MIN_WINDOW_MINUTES

router = APIRouter(prefix="/api/v1/sessions", tags=["telemetry"])

_NO_STORE = "private, no-cache"
# Documented bounds only: the service checks them itself and answers with precise codes
# (WINDOW_OUT_OF_RANGE, INVALID_RESOLUTION, UNKNOWN_METRIC).
_WINDOW: JsonDict = {"minimum": MIN_WINDOW_MINUTES, "maximum": MAX_WINDOW_MINUTES}
_RESOLUTION: JsonDict = {"enum": ["1m", "5m", "auto"]}
_CODES = "|".join(catalog.ALL_CODES)
_METRICS: JsonDict = {"pattern": f"^(all|({_CODES})(,({_CODES}))*)?$"}


class TelemetryParams(RouteParams):
    """The parameters of a telemetry GET."""

    LOCATIONS: ClassVar[dict[str, Location]] = {"session_id": "path", "if_none_match": "header"}

    session_id: str = Field(pattern=SESSION_ID_PATTERN, description=SESSION_ID_DESCRIPTION)
    window_minutes: int | None = Field(
        None, description="Padding, 15…180 minutes.", json_schema_extra=_WINDOW
    )
    resolution: str = Field("auto", description="1m, 5m or auto.", json_schema_extra=_RESOLUTION)
    metrics: str | None = Field(
        None,
        max_length=500,
        description="Comma list of metric codes, or all.",
        json_schema_extra=_METRICS,
    )
    since_watermark: int | None = Field(
        None,
        ge=0,
        le=2**63 - 1,
        description="Watermark of the payload the client holds: a ready answer is then "
        "`{state, delta}` when the server can express the change, else the full payload.",
    )
    if_none_match: str | None = Field(None, max_length=1000, title="If-None-Match")


@router.get(
    "/{session_id}/telemetry",
    responses={
        200: {"description": "ready, stale, no_data or failed (see `state`)"},
        202: {"description": "computing: nothing cached yet, retry after `Retry-After`"},
        304: {"description": "ready and unchanged since `If-None-Match`"},
        **problem_responses(401, 404, 422, 429, 503),
    },
    openapi_extra={"parameters": TelemetryParams.openapi_parameters()},
)
async def get_telemetry(request: Request) -> Response:
    """Session telemetry ``{state, retry_after_seconds?, error?, telemetry}``, or ``{state,
    delta}`` for a client that sent ``since_watermark``."""
    params = TelemetryParams.read(request)
    user = await get_principal(request)
    service = (await get_parts(request)).telemetry
    answer = await service.get(
        user.user_id,
        params.session_id,
        window_minutes=(
            service.default_window_minutes
            if params.window_minutes is None
            else params.window_minutes
        ),
        resolution=params.resolution,
        metrics=None if params.metrics is None else params.metrics.split(","),
        if_none_match=params.if_none_match,
        since_watermark=params.since_watermark,
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
