"""The one place that maps errors to HTTP: ``application/problem+json`` with a stable ``code``."""

from __future__ import annotations

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from vitalcast.db.errors import (
    DATABASE_ERRORS,
    DATABASE_RETRY_AFTER_S,
    is_outage,
    is_pool_timeout,
    sqlstate,
)
from vitalcast.errors import (
    Conflict,
    DependencyUnavailable,
    Forbidden,
    Gone,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unauthenticated,
    VitalcastError,
)
from vitalcast.json_types import JsonObject
from vitalcast.observability import get_logger

log = get_logger(__name__)

PROBLEM_JSON = "application/problem+json"

STATUS_BY_ERROR: dict[type[VitalcastError], int] = {
    NotFound: 404,
    InvalidInput: 422,
    PayloadTooLarge: 413,
    Conflict: 409,
    Unauthenticated: 401,
    Forbidden: 403,
    RateLimited: 429,
    DependencyUnavailable: 503,
    Gone: 410,
}

_CODE_BY_STATUS = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "BODY_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "VALIDATION_ERROR",
    410: "GONE",
    429: "RATE_LIMITED",
    503: "DEPENDENCY_UNAVAILABLE",
}


class Problem(BaseModel):
    """The body of every error answer (RFC 9457 problem details plus a stable ``code``)."""

    type: str
    title: str
    status: int
    code: str
    detail: str
    retry_after_seconds: int | None = None
    errors: list[JsonObject] | None = None


_PROBLEM_DESCRIPTIONS = {
    400: "The body could not be read as JSON text, e.g. invalid UTF-8 (BAD_REQUEST).",
    401: "No valid bearer token (UNAUTHENTICATED, TOKEN_EXPIRED, TOKEN_INVALID, TOKEN_REVOKED, "
    "SHARE_REVOKED, SHARE_EXPIRED).",
    403: "A share token outside the one session it reads (SHARE_SCOPE).",
    404: "No such session, or not the caller's (SESSION_NOT_FOUND).",
    409: "Conflicts with earlier state (REQUEST_ID_REUSED, SESSION_NOT_ACTIVE).",
    413: "Too large (TOO_MANY_SAMPLES, BODY_TOO_LARGE); nothing was applied.",
    422: "Malformed or unacceptable input (VALIDATION_ERROR and more precise codes).",
    410: "The session's raw samples expired (RAW_EXPIRED); its payload and bucket CSV remain.",
    429: "Rate limited (RATE_LIMITED); retry after Retry-After seconds.",
    503: "A dependency is down (DATABASE_UNAVAILABLE) or every database connection is busy "
    "(DATABASE_BUSY); retry after Retry-After seconds.",
}
_RETRY_AFTER_HEADER = {
    "Retry-After": {
        "description": "Seconds to wait; equals the body's retry_after_seconds.",
        "schema": {"type": "integer", "minimum": 0},
    }
}


def problem_responses(*statuses: int) -> dict[int | str, JsonObject]:
    """OpenAPI ``responses`` entries documenting these statuses as problem+json answers."""
    schema = Problem.model_json_schema()
    documented: dict[int | str, JsonObject] = {}
    for status in statuses:
        entry: JsonObject = {
            "description": _PROBLEM_DESCRIPTIONS[status],
            "content": {PROBLEM_JSON: {"schema": schema}},
        }
        if status in (429, 503):
            entry["headers"] = _RETRY_AFTER_HEADER
        documented[status] = entry
    return documented


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    retry_after_s: int | None = None,
    extra: JsonObject | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """A problem+json response; ``Retry-After`` and the body's ``retry_after_seconds`` agree."""
    body: JsonObject = {
        "type": "about:blank",
        "title": code.replace("_", " ").capitalize(),
        "status": status,
        "code": code,
        "detail": detail,
    }
    headers = dict(headers or {})
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
            return STATUS_BY_ERROR[cls]
    return 500


def domain_problem(exc: VitalcastError) -> Response:
    """The answer to a domain error."""
    return problem(status_of(exc), exc.code, exc.message, retry_after_s=exc.retry_after_s)


def validation_problem(exc: RequestValidationError) -> Response:
    """The answer to malformed input: only locations and messages, never the input (it may
    hold health values)."""
    errors = [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
        for e in exc.errors()[:20]
    ]
    return problem(422, "VALIDATION_ERROR", "The request is malformed.", extra={"errors": errors})


def unexpected_problem(exc: Exception) -> Response:
    """The answer to an error nothing else handled: a database outage or a busy pool is a 503,
    anything else a 500. Logs type and SQLSTATE only: a driver error's text may quote
    statement parameters."""
    if is_pool_timeout(exc):
        log.warning("database_pool_exhausted")
        return problem(
            503,
            "DATABASE_BUSY",
            "Every database connection is in use; retry shortly.",
            retry_after_s=DATABASE_RETRY_AFTER_S,
        )
    if is_outage(exc):
        log.warning("database_unavailable", error_type=type(exc).__name__, sqlstate=sqlstate(exc))
        return problem(
            503,
            "DATABASE_UNAVAILABLE",
            "The database is unavailable.",
            retry_after_s=DATABASE_RETRY_AFTER_S,
        )
    log.error("unhandled_error", error_type=type(exc).__name__, sqlstate=sqlstate(exc))
    return problem(500, "INTERNAL_ERROR", "An unexpected error occurred.")


#: errors answered by ``unexpected_problem`` where they are raised (by Starlette's exception
#: middleware, or a route answered below it); any other exception reaches the outermost
#: middleware, which answers the same and re-raises it for the server's log
ANSWERED_ERRORS: tuple[type[Exception], ...] = (*DATABASE_ERRORS, OSError)


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""

    @app.exception_handler(VitalcastError)
    async def _domain(_request: Request, exc: VitalcastError) -> Response:
        return domain_problem(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> Response:
        return validation_problem(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = _CODE_BY_STATUS.get(exc.status_code, "HTTP_ERROR")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request)
        return problem(exc.status_code, code, str(exc.detail), headers=headers)

    async def _unexpected(_request: Request, exc: Exception) -> Response:
        return unexpected_problem(exc)

    # Database and network errors are answered here (not only by the catch-all below, which
    # Starlette re-raises after answering, printing the error's text to the server log).
    for error_type in (*ANSWERED_ERRORS, Exception):
        app.add_exception_handler(error_type, _unexpected)


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str:
    """Every method some route answers on this path (Starlette names only the first route's)."""
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    )
