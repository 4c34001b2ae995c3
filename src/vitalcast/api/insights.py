"""GET /api/v1/insights: one metric across the caller's last completed sessions (owner only: the
sessions listed are always the caller's), rate-limited like telemetry reads."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from vitalcast import catalog
from vitalcast.api.deps import CurrentUser, Parts
from vitalcast.api.errors import problem_responses
from vitalcast.api.schemas import InsightsPage, PlaceOut, SessionInsightsOut
from vitalcast.telemetry.keys import MAX_WINDOW_MINUTES, MIN_WINDOW_MINUTES
from vitalcast.telemetry.run.insights_service import MAX_SESSIONS

router = APIRouter(prefix="/api/v1", tags=["insights"])

# Documented bounds and codes only: the service checks them and answers with precise codes
# (UNKNOWN_METRIC, WINDOW_OUT_OF_RANGE).
_METRIC = {"enum": list(catalog.ALL_CODES)}
_WINDOW = {"minimum": MIN_WINDOW_MINUTES, "maximum": MAX_WINDOW_MINUTES}


@router.get(
    "/insights",
    response_model=InsightsPage,
    responses=problem_responses(401, 422, 429, 503),
)
async def get_insights(
    user: CurrentUser,
    parts: Parts,
    response: Response,
    metric: Annotated[
        str, Query(max_length=100, description="A metric code.", json_schema_extra=_METRIC)
    ] = "heart_rate",
    last: Annotated[
        int, Query(ge=1, le=MAX_SESSIONS, description="How many completed sessions.")
    ] = 20,
    window_minutes: Annotated[
        int | None, Query(description="Padding, 15…180 minutes.", json_schema_extra=_WINDOW)
    ] = None,
) -> InsightsPage:
    """The metric's insights in each of the caller's ``last`` completed sessions (newest first)
    and the newest one's place among them. Sessions whose payload is not current answer
    ``computing`` (or ``stale``) while their compute waits its turn; ``Retry-After`` says when
    to ask again."""
    service = parts.insights
    found = await service.across_sessions(
        user.user_id,
        metric=metric,
        last=last,
        window_minutes=service.default_window_minutes if window_minutes is None else window_minutes,
    )
    response.headers["Cache-Control"] = "private, no-cache"
    if found.retry_after_s is not None:
        response.headers["Retry-After"] = str(found.retry_after_s)
    place = found.place
    return InsightsPage(
        metric=found.metric.code,
        kind=found.metric.kind.value,
        unit=found.metric.unit,
        window_minutes=found.window_minutes,
        compared=found.compared,
        complete=found.complete,
        retry_after_seconds=found.retry_after_s,
        sessions=[
            SessionInsightsOut(
                session_id=line.session_id,
                start_ms=line.start_ms,
                end_ms=line.end_ms,
                state=line.state.value,
                value=line.value,
                insights=line.insights,
            )
            for line in found.sessions
        ],
        place=None
        if place is None
        else PlaceOut(
            session_id=place.session_id,
            value=place.value,
            median=place.median,
            percentile=place.percentile,
            compared_with=place.compared_with,
        ),
    )
