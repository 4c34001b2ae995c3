"""Dependency aliases for routes: the server's parts and the authenticated caller.

The two routes called every few seconds per live session (the telemetry GET, the ingest POST)
call ``get_principal`` and ``get_parts`` themselves instead: FastAPI's resolution of a
dependency costs more than either does.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from vitalcast.auth import Principal, bearer_from_header
from vitalcast.wiring import ServerParts


# Both are ``async`` although they never await: FastAPI runs a plain ``def`` dependency in its
# thread pool, and that hop costs more than the work (a cached telemetry GET doubled with it).
async def get_parts(request: Request) -> ServerParts:
    parts: ServerParts = request.app.state.parts
    return parts


async def get_principal(request: Request) -> Principal:
    """The caller ``api.guard.RequestGuard`` authenticated before the body was read; a route
    outside ``/api/`` that asks for a caller is authenticated here, by the same rule."""
    principal: Principal | None = request.scope.get("state", {}).get("principal")
    if principal is None:
        parts: ServerParts = request.app.state.parts
        token = bearer_from_header(request.headers.get("authorization"))
        principal = await parts.authenticator.authenticate(token)
        request.state.principal = principal
        request.state.user_id = principal.user_id
    return principal


Parts = Annotated[ServerParts, Depends(get_parts)]
CurrentUser = Annotated[Principal, Depends(get_principal)]
# Session ids are UUIDs; anything else is refused before it reaches a query (PostgreSQL rejects
# e.g. NUL bytes in text with an error, not an empty result).
SESSION_ID_PATTERN = (
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
SESSION_ID_DESCRIPTION = "Session id (UUID)."
SessionId = Annotated[str, Path(pattern=SESSION_ID_PATTERN, description=SESSION_ID_DESCRIPTION)]
