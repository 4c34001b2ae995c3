"""POST /api/v1/samples (placeholder until ingest lands)."""

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1", tags=["samples"])
