"""Unauthenticated operations endpoints (/healthz, /readyz, /metrics) and the metric catalog."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from vitalcast import catalog
from vitalcast.api.deps import CurrentUser, Parts
from vitalcast.api.errors import problem_responses
from vitalcast.db.errors import DATABASE_RETRY_AFTER_S
from vitalcast.json_types import JsonObject

router = APIRouter()


@router.get("/healthz", tags=["ops"])
async def healthz() -> dict[str, str]:
    """The process is up (no dependency is checked)."""
    return {"status": "ok"}


@router.get("/readyz", tags=["ops"])
async def readyz(parts: Parts, response: Response) -> JsonObject:
    """Dependencies: the database, and Redis when configured (degraded = computes in-process)."""
    checks: dict[str, str] = {}
    try:
        async with parts.db.read() as conn:
            await conn.execute(sa.text("SELECT 1"))
        checks["database"] = "ok"
    except Exception:
        checks["database"] = "unavailable"
    mode = "embedded" if parts.settings.embedded else "scaled_out"
    if parts.queue is not None:
        checks["redis"] = "ok" if await parts.queue.ping() else "unavailable"
        if checks["redis"] != "ok":
            mode = "degraded"
    ready = checks["database"] == "ok"
    if not ready:
        response.status_code = 503
        response.headers["Retry-After"] = str(DATABASE_RETRY_AFTER_S)
    return {"status": "ok" if ready else "unavailable", "mode": mode, "checks": checks}


@router.get(
    "/metrics",
    tags=["ops"],
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
)
async def metrics(parts: Parts) -> Response:
    """Prometheus text format."""
    await parts.refresh_metrics()
    return Response(generate_latest(parts.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/v1/catalog", tags=["catalog"], responses=problem_responses(401))
async def get_catalog(_user: CurrentUser) -> JsonObject:
    """The metric catalog: units, accepted aliases, ranges, gap thresholds, LOINC."""
    return {
        "metrics": [m.describe() for m in catalog.METRICS],
        "default_metrics": list(catalog.DEFAULT_CODES),
    }
