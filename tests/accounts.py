"""Users in a database that subprocesses share (the ``users`` fixture serves the in-process app)."""

from __future__ import annotations

from tests.conftest import TEST_SECRET
from vitalcast.testing import user_with_token


async def new_user(database_url: str, name: str | None = None) -> tuple[str, str]:
    """(user_id, bearer token valid for an hour) of the user ``name`` (a fresh random one when
    omitted), created in the database at ``database_url`` if it does not exist."""
    return await user_with_token(database_url, TEST_SECRET, name)
