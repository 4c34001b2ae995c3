"""Dependency aliases for routes: the process container and the authenticated caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from vitalcast.auth import Principal, bearer_from_header, verify_token
from vitalcast.container import Container


# Both are ``async`` although they never await: FastAPI runs a plain ``def`` dependency in its
# thread pool, and that hop costs more than the work (a cached telemetry GET doubled with it).
async def get_container(request: Request) -> Container:
    container: Container = request.app.state.container
    return container


async def get_principal(request: Request) -> Principal:
    container: Container = request.app.state.container
    token = bearer_from_header(request.headers.get("authorization"))
    principal = verify_token(container.secret, token)
    request.state.user_id = principal.user_id
    return principal


ContainerDep = Annotated[Container, Depends(get_container)]
CurrentUser = Annotated[Principal, Depends(get_principal)]
# Session ids are UUIDs; anything else is refused before it reaches a query (PostgreSQL rejects
# e.g. NUL bytes in text with an error, not an empty result).
SessionId = Annotated[
    str,
    Path(
        pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
        description="Session id (UUID).",
    ),
]
