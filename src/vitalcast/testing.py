"""Builders that the test suite and the benchmarks share, shipped with the package (as structlog
ships ``structlog.testing``) so neither keeps its own copy: request-shaped samples and users with
bearer tokens. Nothing here is imported by the service itself."""

from __future__ import annotations

import uuid

from vitalcast.clock import iso_ms, now_ms
from vitalcast.db.engine import Database, create_engine
from vitalcast.json_types import JsonObject
from vitalcast.local_tokens import issue_token
from vitalcast.sessions import repository as session_repository


def hr_sample(
    record_id: str, at_ms: int, value: float = 72.0, *, source: str = "healthkit", **extra: object
) -> JsonObject:
    """One heart-rate sample as ``POST /api/v1/samples`` takes it (``extra`` adds or overrides
    fields, e.g. ``device`` or ``end``)."""
    return {
        "source": source,
        "record_id": record_id,
        "metric": "heart_rate",
        "value": value,
        "unit": "bpm",
        "start": iso_ms(at_ms),
    } | extra


async def ensure_user(db: Database, name: str) -> str:
    """The id of the user ``name``, created if missing."""
    async with db.write() as conn:
        return await session_repository.get_or_create_user(conn, name, now_ms=now_ms())


async def user_with_token(
    database_url: str, secret: str, name: str | None = None, *, ttl_s: int = 3600
) -> tuple[str, str]:
    """(user id, bearer token valid ``ttl_s``) of the user ``name`` (a fresh random one when
    omitted) in the database at ``database_url``."""
    db = Database(create_engine(database_url))
    try:
        user_id = await ensure_user(db, name or f"u-{uuid.uuid4().hex[:8]}")
    finally:
        await db.dispose()
    issued_ms = now_ms()
    return user_id, issue_token(
        secret, user_id, now_s=issued_ms // 1000, ttl_s=ttl_s, now_ms=issued_ms
    )
