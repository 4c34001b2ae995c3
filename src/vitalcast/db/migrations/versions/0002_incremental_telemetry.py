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
    op.create_table(
        "telemetry_partials",
        sa.Column("session_id", sa.String(length=36), nullable=False),
        sa.Column("window_minutes", sa.Integer(), nullable=False),
        sa.Column("resolution", sa.String(length=8), nullable=False),
        sa.Column("compute_version", sa.Integer(), nullable=False),
        sa.Column("partials", sa.LargeBinary(), nullable=False),
        sa.Column("history", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.id"], name=op.f("fk_telemetry_partials_session_id_sessions")
        ),
        sa.PrimaryKeyConstraint(
            "session_id",
            "window_minutes",
            "resolution",
            "compute_version",
            name=op.f("pk_telemetry_partials"),
        ),
    )


def downgrade() -> None:
    op.drop_table("telemetry_partials")
    op.drop_table("session_changes")
