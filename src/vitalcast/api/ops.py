"""Unauthenticated operations endpoints (/healthz, /readyz, /metrics) and the metric catalog."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from vitalcast import catalog
from vitalcast.api.deps import ContainerDep, CurrentUser
from vitalcast.api.errors import problem_responses

router = APIRouter()


@router.get("/healthz", tags=["ops"])
async def healthz() -> dict[str, str]:
    """The process is up (no dependency is checked)."""
    return {"status": "ok"}


@router.get("/readyz", tags=["ops"])
async def readyz(container: ContainerDep, response: Response) -> dict[str, Any]:
    """Dependencies: the database, and Redis when configured (degraded = computes in-process)."""
    checks: dict[str, str] = {}
    try:
        async with container.db.read() as conn:
            await conn.execute(sa.text("SELECT 1"))
        checks["database"] = "ok"
    except Exception:
        checks["database"] = "unavailable"
    mode = "embedded" if container.settings.embedded else "scaled_out"
    if container.queue is not None:
        checks["redis"] = "ok" if await container.queue.ping() else "unavailable"
        if checks["redis"] != "ok":
            mode = "degraded"
    ready = checks["database"] == "ok"
    if not ready:
        response.status_code = 503
        response.headers["Retry-After"] = "2"
    return {"status": "ok" if ready else "unavailable", "mode": mode, "checks": checks}


@router.get(
    "/metrics",
    tags=["ops"],
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
)
async def metrics(container: ContainerDep) -> Response:
    """Prometheus text format."""
    refresh = container.extras.get("refresh_metrics")
    if refresh is not None:
        await refresh()
    return Response(generate_latest(container.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/v1/catalog", tags=["catalog"], responses=problem_responses(401))
async def get_catalog(_user: CurrentUser) -> dict[str, Any]:
    """The metric catalog: units, accepted aliases, ranges, gap thresholds, LOINC."""
    return {
        "metrics": [m.describe() for m in catalog.METRICS],
        "default_metrics": list(catalog.DEFAULT_CODES),
    }
