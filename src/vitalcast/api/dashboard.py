"""The dashboard: ``/`` serves the page, ``/static`` its script, styles and the npm libraries,
``/docs`` the API reference (Swagger UI) from the same npm set-up.

Both are unauthenticated: the page holds no data. It reads its bearer token from the URL
fragment (never sent to a server) and sends it only in an ``Authorization`` header and in the
Socket.IO auth packet.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

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


def install(app: FastAPI) -> None:
    """Serve the page at ``/`` and its files under ``/static``."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
