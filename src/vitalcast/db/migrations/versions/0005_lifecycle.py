"""data lifecycle: accounts being erased, sessions archived by retention

Revision ID: 0005
Revises: 0004_alerts
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004_alerts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "erasures",
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("requested_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("rows_purged", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_erasures")),
    )
    op.add_column("sessions", sa.Column("archived_at_ms", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column("sessions", "archived_at_ms")
    op.drop_table("erasures")
