"""GET /api/v1/sessions/{id}/export.csv and /fhir: a session's data in other systems' formats.

Raw samples are streamed (a server-side cursor, one partition in memory at a time). Buckets come
from the telemetry service's payload and follow its request states: ``computing`` answers 202
with ``Retry-After`` exactly as the telemetry GET does. Owner only (404 otherwise); each export
spends one telemetry read of the caller's rate budget.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse

from vitalcast.api.deps import CurrentUser, Parts, SessionId
from vitalcast.api.errors import problem_responses
from vitalcast.errors import DependencyUnavailable, Gone
from vitalcast.interop import fhir_export
from vitalcast.interop.csv_export import buckets_csv, samples_csv
from vitalcast.interop.raw_samples import stream_samples, window_of
from vitalcast.sessions.models import Session
from vitalcast.telemetry.keys import MAX_WINDOW_MINUTES, MIN_WINDOW_MINUTES, CacheState
from vitalcast.telemetry.read.answer import ERROR_MESSAGES

router = APIRouter(prefix="/api/v1/sessions", tags=["exports"])

CSV = "text/csv; charset=utf-8"
_NO_STORE = "private, no-store"
_WINDOW_DOC = f"Padding, {MIN_WINDOW_MINUTES}…{MAX_WINDOW_MINUTES} minutes (default: the server's)."
_WINDOW = {"minimum": MIN_WINDOW_MINUTES, "maximum": MAX_WINDOW_MINUTES}
WindowMinutes = Annotated[int | None, Query(description=_WINDOW_DOC, json_schema_extra=_WINDOW)]


def _raw_kept(session: Session) -> None:
    """Raw exports need every raw sample of the window: an archived session no longer has them."""
    if session.archived_at_ms is not None:
        raise Gone(
            "The raw samples of this session have expired; its telemetry and bucket CSV remain.",
            code="RAW_EXPIRED",
        )


def _attachment(session_id: str, name: str) -> dict[str, str]:
    return {
        "Content-Disposition": f'attachment; filename="session-{session_id}-{name}"',
        "Cache-Control": _NO_STORE,
    }


@router.get(
    "/{session_id}/export.csv",
    response_class=Response,
    responses={
        200: {
            "description": "CSV: one row per raw sample, or per bucket of the payload.",
            "content": {CSV: {"schema": {"type": "string"}}},
        },
        202: {"description": "kind=buckets while nothing is cached yet (as the telemetry GET)."},
        **problem_responses(401, 404, 410, 422, 429, 503),
    },
)
async def export_csv(
    session_id: SessionId,
    user: CurrentUser,
    parts: Parts,
    kind: Annotated[
        Literal["samples", "buckets"], Query(description="Raw samples or the payload's buckets.")
    ] = "samples",
    window_minutes: WindowMinutes = None,
    resolution: Annotated[
        Literal["1m", "5m", "auto"], Query(description="Bucket width (kind=buckets).")
    ] = "auto",
) -> Response:
    """The session's window as CSV, with ISO times and units."""
    minutes = parts.settings.default_window_minutes if window_minutes is None else window_minutes
    if kind == "buckets":
        return await _buckets_csv(session_id, user.user_id, parts, minutes, resolution)
    session = await parts.sessions.get(user.user_id, session_id)
    _raw_kept(session)
    window = window_of(session, minutes, parts.clock.now_ms())
    return StreamingResponse(
        samples_csv(stream_samples(parts.db, user.user_id, window)),
        media_type=CSV,
        headers=_attachment(session_id, "samples.csv"),
    )


async def _buckets_csv(
    session_id: str, user_id: str, parts: Parts, minutes: int, resolution: str
) -> Response:
    answer = await parts.telemetry.get(
        user_id, session_id, window_minutes=minutes, resolution=resolution, metrics=["all"]
    )
    headers = {"Cache-Control": _NO_STORE}
    if answer.retry_after_s is not None:
        headers["Retry-After"] = str(answer.retry_after_s)
    if answer.state is CacheState.COMPUTING:
        return Response(
            answer.body(), status_code=202, headers=headers, media_type="application/json"
        )
    if answer.payload is None:
        code = answer.error_code or "COMPUTE_FAILED"
        raise DependencyUnavailable(
            ERROR_MESSAGES.get(code, "The telemetry is unavailable."),
            code=code,
            retry_after_s=answer.retry_after_s,
        )
    # stale / failed still serve the last payload, as the telemetry GET does; say which.
    headers |= _attachment(session_id, "buckets.csv") | {"X-Telemetry-State": answer.state.value}
    return Response(buckets_csv(answer.payload), media_type=CSV, headers=headers)


@router.get(
    "/{session_id}/fhir",
    response_class=Response,
    responses={
        200: {
            "description": "A FHIR R4 Bundle (collection): the session as an Encounter and "
            "one vital-signs or activity Observation per raw sample of its window.",
            "content": {fhir_export.MEDIA_TYPE: {"schema": {"type": "object"}}},
        },
        **problem_responses(401, 404, 410, 422, 429, 503),
    },
)
async def export_fhir(
    session_id: SessionId,
    user: CurrentUser,
    parts: Parts,
    window_minutes: WindowMinutes = None,
) -> Response:
    """The session's samples as a FHIR R4 Bundle, streamed."""
    minutes = parts.settings.default_window_minutes if window_minutes is None else window_minutes
    session = await parts.sessions.get(user.user_id, session_id)
    _raw_kept(session)
    now = parts.clock.now_ms()
    window = window_of(session, minutes, now)
    return StreamingResponse(
        fhir_export.bundle_json(
            session, stream_samples(parts.db, user.user_id, window), now_ms=now
        ),
        media_type=fhir_export.MEDIA_TYPE,
        headers=_attachment(session_id, "fhir.json"),
    )
