"""Dependency aliases for routes: the process container and the authenticated caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from vitalcast.auth import Principal, bearer_from_header, verify_token
from vitalcast.container import Container


def get_container(request: Request) -> Container:
    container: Container = request.app.state.container
    return container


def get_principal(request: Request) -> Principal:
    container: Container = request.app.state.container
    token = bearer_from_header(request.headers.get("authorization"))
    principal = verify_token(container.secret, token)
    request.state.user_id = principal.user_id
    return principal


ContainerDep = Annotated[Container, Depends(get_container)]
CurrentUser = Annotated[Principal, Depends(get_principal)]
