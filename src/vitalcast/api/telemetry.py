"""GET /api/v1/sessions/{id}/telemetry: the state mapping of docs/design.md, ETag / If-None-Match.

The route every dashboard polls, so the app answers it below FastAPI (``api.hot_routes``): no
route matching, no dependency to resolve (``api.guard`` has authenticated the caller and spent
its budget) and its parameters validated in one call (``api.params``). FastAPI's route documents
it. The body is joined from the stored payload bytes (``TelemetryAnswer.body``); nothing here
decodes or validates it.
"""

from __future__ import annotations

from typing import ClassVar

from fastapi import APIRouter, Request, Response
from pydantic import Field
from pydantic.config import JsonDict
from starlette.types import Receive, Scope

from vitalcast import catalog
from vitalcast.api.deps import SESSION_ID_DESCRIPTION, SESSION_ID_PATTERN, get_parts, get_principal
from vitalcast.api.errors import problem_responses
from vitalcast.api.hot_routes import Answer, hot_route
from vitalcast.api.params import Location, RouteParams
from vitalcast.auth import Principal
from vitalcast.telemetry.keys import MAX_WINDOW_MINUTES, MIN_WINDOW_MINUTES
from vitalcast.wiring import ServerParts

router = APIRouter(prefix="/api/v1/sessions", tags=["telemetry"])

_NO_STORE = b"private, no-cache"
_JSON = (b"content-type", b"application/json")
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


ROUTE_PATH = "/api/v1/sessions/{session_id}/telemetry"


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
    # The app answers this route in ``api.hot_routes``; FastAPI's route documents it and
    # answers it in an app built without that (the same answer).
    params = TelemetryParams.read(request)
    status, headers, body = await _answer(
        await get_parts(request), await get_principal(request), params
    )
    response = Response(body, status_code=status)
    response.raw_headers = headers
    return response


async def _hot_get(
    parts: ServerParts, principal: Principal, scope: Scope, _receive: Receive
) -> Answer:
    """The telemetry GET as ``api.hot_routes`` answers it: what ``get_telemetry`` answers."""
    return await _answer(parts, principal, TelemetryParams.of_scope(scope, scope["path_params"]))


async def _answer(parts: ServerParts, user: Principal, params: TelemetryParams) -> Answer:
    """(status, headers, body) of a telemetry GET."""
    service = parts.telemetry
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
    headers = [(b"cache-control", _NO_STORE)]
    if answer.etag is not None:
        headers.append((b"etag", answer.etag.encode("latin-1")))
    if answer.retry_after_s is not None:
        headers.append((b"retry-after", str(answer.retry_after_s).encode()))
    if answer.not_modified:
        return 304, headers, b""
    body = answer.body()
    headers += [(b"content-length", str(len(body)).encode()), _JSON]
    return answer.http_status, headers, body


#: the telemetry GET answered below FastAPI (``api.hot_routes``)
HOT = hot_route(router.routes, ROUTE_PATH, "GET", _hot_get)
