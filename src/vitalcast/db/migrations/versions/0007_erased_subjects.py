"""erased OpenID Connect subjects: tombstones that keep an erased person's old tokens refused

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "erased_subjects",
        sa.Column("subject_digest", sa.String(length=64), nullable=False),
        sa.Column("erased_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("subject_digest", name=op.f("pk_erased_subjects")),
    )


def downgrade() -> None:
    op.drop_table("erased_subjects")
