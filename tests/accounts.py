"""Users in a database that subprocesses share (the ``users`` fixture serves the in-process app)."""

from __future__ import annotations

import time
import uuid

from tests.conftest import TEST_SECRET
from vitalcast.auth import issue_token
from vitalcast.db.engine import Database, create_engine
from vitalcast.sessions import repository as session_repository


async def new_user(database_url: str, name: str | None = None) -> tuple[str, str]:
    """(user_id, bearer token valid for an hour) of the user ``name`` (a fresh random one when
    omitted), created in the database at ``database_url`` if it does not exist."""
    db = Database(create_engine(database_url))
    try:
        async with db.write() as conn:
            user_id = await session_repository.get_or_create_user(
                conn, name or f"u-{uuid.uuid4().hex[:8]}", now_ms=time.time_ns() // 1_000_000
            )
    finally:
        await db.dispose()
    return user_id, issue_token(TEST_SECRET, user_id, now_s=int(time.time()), ttl_s=3600)
