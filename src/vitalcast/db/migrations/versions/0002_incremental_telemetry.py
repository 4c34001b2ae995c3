"""incremental telemetry: the session change log, and the partials and history of cached views

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "session_changes",
        sa.Column("session_id", sa.String(length=36), nullable=False),
        sa.Column("change_seq", sa.BigInteger(), nullable=False),
        sa.Column("prev_seq", sa.BigInteger(), nullable=False),
        sa.Column("ranges", sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.id"], name=op.f("fk_session_changes_session_id_sessions")
        ),
        sa.PrimaryKeyConstraint("session_id", "change_seq", name=op.f("pk_session_changes")),
    )
    op.add_column("telemetry_cache", sa.Column("partials", sa.LargeBinary(), nullable=True))
    op.add_column("telemetry_cache", sa.Column("history", sa.LargeBinary(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        _store_cheaply()


def _store_cheaply() -> None:
    """Both blobs are rewritten on every live update of a view. The partials are deflated
    already: PostgreSQL's own compression of them is CPU for nothing. The payload is JSON: pglz
    compresses 77 kB of it (a 24-hour view) in about 4 ms per save, lz4 in a fraction of that,
    and reads decompress faster too. lz4 only where the server was built with it (PostgreSQL 14+,
    as Debian's and the official images are)."""
    op.execute("ALTER TABLE telemetry_cache ALTER COLUMN partials SET STORAGE EXTERNAL")
    lz4 = op.get_bind().scalar(
        sa.text(
            "SELECT count(*) FROM pg_settings "
            "WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals)"
        )
    )
    if lz4:
        op.execute("ALTER TABLE telemetry_cache ALTER COLUMN payload SET COMPRESSION lz4")


def downgrade() -> None:
    with op.batch_alter_table("telemetry_cache") as batch:
        batch.drop_column("history")
        batch.drop_column("partials")
    op.drop_table("session_changes")
