"""What every HTTP request passes before the app sees it, Socket.IO's polling included.

1. Under ``/api/`` the bearer token is checked from the headers alone, before a byte of the body
   is read: an unauthenticated 50 MB upload costs a 401, not a parse. Routes get the principal
   through ``api.deps.CurrentUser``. A share token is held to its one session here
   (``api.share_scope``), and each of its reads is logged for the owner. The request then
   spends its budget (``api.ratelimits``): a 429 costs no route either.
2. The body limit of the route (``body_limit``): a declared ``Content-Length`` above it is
   refused at once, and a body streaming in (chunked, or lying about its length) is counted and
   refused the moment it passes the limit. Both answer 413 ``BODY_TOO_LARGE``; nothing is
   parsed or applied. The server then discards the rest of the upload without buffering it.
3. A client that hangs up while its body streams in ends the request with one info line.
4. Every answer carries ``X-Content-Type-Options: nosniff``.

Plain ASGI like ``AccessLog``: Starlette's BaseHTTPMiddleware costs more than a cached telemetry
answer. Starlette's own ``max_body_size`` is not used: it lets the endpoint run before refusing
a declared length and answers text/plain, where the API promises problem+json.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vitalcast.api.errors import problem, status_of
from vitalcast.api.ratelimits import Budgets, budget_of
from vitalcast.api.share_scope import share_read
from vitalcast.auth import Authenticator, bearer_from_header
from vitalcast.errors import VitalcastError
from vitalcast.ingest.validation import MAX_BODY_BYTES as INGEST_MAX_BODY_BYTES
from vitalcast.observability import get_logger
from vitalcast.realtime.broadcaster import MAX_MESSAGE_BYTES
from vitalcast.realtime.frames import SOCKETIO_PATH
from vitalcast.shares import ShareAccessLog

log = get_logger("vitalcast.http")

AUTHENTICATED_PREFIX = "/api/"
# Every JSON body but ingest's is a few hundred bytes.
DEFAULT_MAX_BODY_BYTES = 64 * 1024
# The routes whose limit is not the default, by path or path prefix (ending in "/").
_BODY_LIMITS = {
    "/api/v1/samples": INGEST_MAX_BODY_BYTES,
    f"{SOCKETIO_PATH}/": MAX_MESSAGE_BYTES,
}
_NOSNIFF = (b"x-content-type-options", b"nosniff")


def body_limit(path: str) -> int:
    """The most body bytes a request to ``path`` may send."""
    exact = _BODY_LIMITS.get(path)
    if exact is not None:
        return exact
    for prefix, limit in _BODY_LIMITS.items():
        if prefix.endswith("/") and (path + "/").startswith(prefix):
            return limit
    return DEFAULT_MAX_BODY_BYTES


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when the body passes its limit. An ``HTTPException`` so that
    FastAPI's body reader passes it on (it turns other errors into a 400) and the API's handler
    answers it; the guard answers it itself when it escapes a mounted app."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large_detail(limit))


class RequestGuard:
    """Authentication and rate limits before the body, the body limit, nosniff (see the module
    docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        authenticator: Authenticator,
        share_access: ShareAccessLog | None = None,
        budgets: Budgets | None = None,
    ) -> None:
        self.app = app
        self._authenticator = authenticator
        self._share_access = share_access
        self._budgets = budgets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def send_nosniff(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                message["headers"] = [*message.get("headers", ()), _NOSNIFF]
            await send(message)

        path: str = scope["path"]
        authorization, declared = _headers(scope)
        if path.startswith(AUTHENTICATED_PREFIX):
            method: str = scope["method"]
            try:
                principal = await self._authenticator.authenticate(
                    bearer_from_header(authorization)
                )
                if principal.is_share:
                    kind = share_read(method, path, principal)
                    if kind is not None and self._share_access is not None:
                        self._share_access.record(str(principal.share_id), kind)
                budget = budget_of(method, path)
                if budget is not None and self._budgets is not None:
                    await self._budgets.spend(principal, budget)
            except VitalcastError as exc:
                answer = problem(
                    status_of(exc), exc.code, exc.message, retry_after_s=exc.retry_after_s
                )
                await answer(scope, receive, send_nosniff)
                return
            state = scope.setdefault("state", {})
            state["principal"] = principal
            state["user_id"] = principal.user_id
        limit = body_limit(path)
        if declared is not None and declared > limit:
            await _too_large(limit)(scope, receive, send_nosniff)
            return
        received = 0
        client_gone = False

        async def receive_counted() -> Message:
            nonlocal received, client_gone
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            elif message["type"] == "http.disconnect":
                client_gone = True
            return message

        try:
            await self.app(scope, receive_counted, send_nosniff)
        except BodyTooLarge:
            if response_started:
                raise
            await _too_large(limit)(scope, receive, send_nosniff)
        except ClientDisconnect:
            if not client_gone:
                raise
            log.info("client_left_mid_body", method=scope["method"], path=path, bytes=received)


def _headers(scope: Scope) -> tuple[str | None, int | None]:
    """The Authorization header and the declared Content-Length (None when absent or unreadable;
    the HTTP server refuses malformed ones before the app runs)."""
    authorization: str | None = None
    declared: int | None = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value.decode("latin-1")
        elif name == b"content-length" and value.isdigit():
            declared = int(value)
    return authorization, declared


def too_large_detail(limit: int) -> str:
    """ "The body is larger than 5 MB." (or KiB, or bytes): the limit as a person reads it."""
    for unit, size in (("MB", 1024 * 1024), ("KiB", 1024)):
        if limit % size == 0:
            return f"The body is larger than {limit // size} {unit}."
    return f"The body is larger than {limit} bytes."


def _too_large(limit: int) -> ASGIApp:
    return problem(413, "BODY_TOO_LARGE", too_large_detail(limit))
