"""The dashboard: ``/`` serves the page, ``/static`` its script, styles and the npm libraries,
``/docs`` the API reference (Swagger UI) from the same npm set-up.

Both are unauthenticated: the page holds no data. It reads its bearer token from the URL
fragment (never sent to a server) and sends it only in an ``Authorization`` header and in the
Socket.IO auth packet.
"""

from __future__ import annotations

import os
from os import PathLike
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

# Every response also gets X-Content-Type-Options: nosniff from api.guard.
_PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers=_PAGE_HEADERS)


@router.get("/docs")
async def docs() -> FileResponse:
    """Swagger UI on ``/openapi.json``, every asset from this server (FastAPI's own page loads
    them from a CDN), under the dashboard's strict CSP."""
    return FileResponse(STATIC_DIR / "docs.html", headers=_PAGE_HEADERS)


class _StaticFiles(StaticFiles):
    """``/static``, where the pages are reachable too (``/static/index.html``): an HTML file
    gets the pages' headers, so no URL serves them framable or without their CSP."""

    def file_response(
        self,
        full_path: PathLike[str] | str,
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        if str(full_path).endswith((".html", ".htm")):
            response.headers.update(_PAGE_HEADERS)
        return response


def install(app: FastAPI) -> None:
    """Serve the page at ``/`` and its files under ``/static``."""
    app.include_router(router)
    app.mount("/static", _StaticFiles(directory=STATIC_DIR), name="static")
