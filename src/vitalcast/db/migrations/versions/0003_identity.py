"""identity and sharing: local-token revocation, OpenID Connect subjects, shares, their access log

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("tokens_valid_after_ms", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("oidc_subject", sa.String(length=255), nullable=True))
        batch.create_unique_constraint(op.f("uq_users_oidc_subject"), ["oidc_subject"])
        batch.create_index("ix_users_tokens_valid_after_ms", ["tokens_valid_after_ms"])
    op.create_table(
        "shares",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("session_id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=True),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("revoked_at_ms", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.id"], name=op.f("fk_shares_session_id_sessions")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_shares_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shares")),
        sa.UniqueConstraint("token_sha256", name=op.f("uq_shares_token_sha256")),
    )
    op.create_index("ix_shares_session_id", "shares", ["session_id"])
    op.create_table(
        "share_access",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("share_id", sa.String(length=36), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["share_id"], ["shares.id"], name=op.f("fk_share_access_share_id_shares")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_share_access")),
    )
    op.create_index("ix_share_access_share_id_id", "share_access", ["share_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_share_access_share_id_id", table_name="share_access")
    op.drop_table("share_access")
    op.drop_index("ix_shares_session_id", table_name="shares")
    op.drop_table("shares")
    with op.batch_alter_table("users") as batch:
        batch.drop_index("ix_users_tokens_valid_after_ms")
        batch.drop_constraint(op.f("uq_users_oidc_subject"), type_="unique")
        batch.drop_column("oidc_subject")
        batch.drop_column("tokens_valid_after_ms")
