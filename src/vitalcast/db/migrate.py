"""Apply the schema revisions in ``db/migrations`` (Alembic) to the configured database.

Importing Alembic costs about as much as the rest of a CLI command (it loads every dialect's DDL
and its template engine), so commands that only need a current schema call
``upgrade_if_behind``: it reads the database's revision and the head revision of the files in
``migrations/versions`` without Alembic, and runs Alembic only when they differ.
``tests/db/test_migrations.py`` checks that this head is the one Alembic finds.
"""

from __future__ import annotations

import ast
import asyncio
import re
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"
VERSIONS = MIGRATIONS / "versions"
# `revision = "0002"` and `down_revision = "0001"` (optionally annotated) in a revision file
_IDENTIFIERS = re.compile(r"^(revision|down_revision)\b[^=\n]*=\s*(.+?)\s*$", re.MULTILINE)


def alembic_config(database_url: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database at ``database_url`` to ``revision`` (idempotent)."""
    from alembic import command

    command.upgrade(alembic_config(database_url), revision)


def head_revision() -> str | None:
    """The revision no other revision file names as its ``down_revision`` (None unless there is
    exactly one: then Alembic decides)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in VERSIONS.glob("*.py"):
        for name, literal in _IDENTIFIERS.findall(path.read_text(encoding="utf-8")):
            value = ast.literal_eval(literal)
            named = {value} if isinstance(value, str) else set(value or ())
            (revisions if name == "revision" else parents).update(named)
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


async def database_revision(database_url: str) -> str | None:
    """The revision the database is at (None: never migrated)."""
    from vitalcast.db.engine import create_engine

    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            migrated = await conn.run_sync(
                lambda sync: sa.inspect(sync).has_table("alembic_version")
            )
            if not migrated:
                return None
            version = await conn.scalar(sa.text("SELECT version_num FROM alembic_version"))
            return None if version is None else str(version)
    finally:
        await engine.dispose()


def upgrade_if_behind(database_url: str) -> bool:
    """``upgrade`` unless the database is at the head revision already; whether it ran."""
    head = head_revision()
    if head is not None and asyncio.run(database_revision(database_url)) == head:
        return False
    upgrade(database_url)
    return True
