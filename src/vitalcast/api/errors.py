"""The one place that maps errors to HTTP: ``application/problem+json`` with a stable ``code``."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from vitalcast.errors import (
    Conflict,
    DependencyUnavailable,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unauthenticated,
    VitalcastError,
)
from vitalcast.observability import get_logger

log = get_logger(__name__)

PROBLEM_JSON = "application/problem+json"

STATUS_BY_ERROR: dict[type[VitalcastError], int] = {
    NotFound: 404,
    InvalidInput: 422,
    PayloadTooLarge: 413,
    Conflict: 409,
    Unauthenticated: 401,
    RateLimited: 429,
    DependencyUnavailable: 503,
}

_CODE_BY_STATUS = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "VALIDATION_ERROR",
    429: "RATE_LIMITED",
    503: "DEPENDENCY_UNAVAILABLE",
}


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    retry_after_s: int | None = None,
    extra: dict[str, Any] | None = None,
) -> Response:
    """A problem+json response; ``Retry-After`` and the body's ``retry_after_seconds`` agree."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": code.replace("_", " ").capitalize(),
        "status": status,
        "code": code,
        "detail": detail,
    }
    headers: dict[str, str] = {}
    if retry_after_s is not None:
        body["retry_after_seconds"] = retry_after_s
        headers["Retry-After"] = str(retry_after_s)
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if extra:
        body.update(extra)
    return Response(
        orjson.dumps(body), status_code=status, media_type=PROBLEM_JSON, headers=headers
    )


def status_of(error: VitalcastError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]  # type: ignore[index]
    return 500


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""

    @app.exception_handler(VitalcastError)
    async def _domain(_request: Request, exc: VitalcastError) -> Response:
        return problem(status_of(exc), exc.code, exc.message, retry_after_s=exc.retry_after_s)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> Response:
        # Only locations and messages: never echo the input, it may hold health values.
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
            for e in exc.errors()[:20]
        ]
        return problem(
            422, "VALIDATION_ERROR", "The request is malformed.", extra={"errors": errors}
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> Response:
        code = _CODE_BY_STATUS.get(exc.status_code, "HTTP_ERROR")
        return problem(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> Response:
        log.error("unhandled_error", error_type=type(exc).__name__)
        if _is_database_outage(exc):
            return problem(
                503, "DATABASE_UNAVAILABLE", "The database is unavailable.", retry_after_s=2
            )
        return problem(500, "INTERNAL_ERROR", "An unexpected error occurred.")


def _is_database_outage(exc: Exception) -> bool:
    from sqlalchemy.exc import DBAPIError, OperationalError

    if isinstance(exc, OperationalError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (ConnectionError, OSError, TimeoutError))
