"""raw samples partitioned by month (PostgreSQL), sample identities in a table of their own

On PostgreSQL ``health_samples`` becomes a table partitioned by range of ``start_ms``, one
partition per UTC month (every month that holds rows, this month and the next three); the rows
are moved, the names swapped, the indexes rebuilt under their old names and the id sequence
kept, so ids go on where they were. A partition key must be in every unique index, so the
identity (user_id, source, record_id) moves to ``sample_identities`` (docs/partitioning.md).
SQLite keeps one table with the same logical schema. Runs in one transaction: a failure leaves
the database at 0005.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

import time
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_COLUMNS = (
    "id, user_id, source, record_id, metric, value, unit, start_ms, end_ms, device, deleted, "
    "change_seq"
)
_AHEAD = 3


def _month_start_ms(year: int, month: int) -> int:
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp() * 1000)


def _next(year: int, month: int) -> tuple[int, int]:
    return year + month // 12, month % 12 + 1


def _months_to_create(bind: sa.Connection, table: str) -> set[tuple[int, int]]:
    """Every UTC month that holds a row of ``table``, this month and the next ``_AHEAD``."""
    rows = bind.execute(
        sa.text(
            "SELECT DISTINCT CAST(EXTRACT(YEAR FROM t) AS int), CAST(EXTRACT(MONTH FROM t) AS int) "
            f"FROM (SELECT to_timestamp(start_ms / 1000.0) AT TIME ZONE 'UTC' AS t FROM {table}) m"
        )
    ).all()
    months = {(int(y), int(m)) for y, m in rows}
    now = datetime.fromtimestamp(time.time(), UTC)
    month = (now.year, now.month)
    for _ in range(_AHEAD + 1):
        months.add(month)
        month = _next(*month)
    return months


def _samples_table_pg(name: str, *, partitioned: bool) -> str:
    tail = " PARTITION BY RANGE (start_ms)" if partitioned else ""
    return f"""
        CREATE TABLE {name} (
            id BIGINT NOT NULL DEFAULT nextval('health_samples_id_seq'),
            user_id VARCHAR(36) NOT NULL,
            source VARCHAR(64) NOT NULL,
            record_id VARCHAR(200) NOT NULL,
            metric VARCHAR(64) NOT NULL,
            value DOUBLE PRECISION NOT NULL,
            unit VARCHAR(32) NOT NULL,
            start_ms BIGINT NOT NULL,
            end_ms BIGINT NOT NULL,
            device VARCHAR(200),
            deleted BOOLEAN DEFAULT false NOT NULL,
            change_seq BIGINT NOT NULL
        ){tail}
    """


def _create_identities() -> None:
    op.create_table(
        "sample_identities",
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("record_id", sa.String(length=200), nullable=False),
        sa.Column("start_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_sample_identities_user_id_users")
        ),
        sa.PrimaryKeyConstraint(
            "user_id", "source", "record_id", name=op.f("pk_sample_identities")
        ),
    )
    op.execute(
        "INSERT INTO sample_identities (user_id, source, record_id, start_ms) "
        "SELECT user_id, source, record_id, start_ms FROM health_samples"
    )


def upgrade() -> None:
    _create_identities()
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        with op.batch_alter_table("health_samples") as batch:
            batch.drop_constraint("uq_health_samples_user_id_source_record_id", type_="unique")
            batch.create_unique_constraint(
                "uq_health_samples_user_id_source_record_id_start_ms",
                ["user_id", "source", "record_id", "start_ms"],
            )
        return
    op.execute("ALTER TABLE health_samples RENAME TO health_samples_unpartitioned")
    # The sequence outlives the old table: ids go on from where they were.
    op.execute("ALTER SEQUENCE health_samples_id_seq OWNED BY NONE")
    op.execute(_samples_table_pg("health_samples", partitioned=True))
    for year, month in sorted(_months_to_create(bind, "health_samples_unpartitioned")):
        end = _next(year, month)
        op.execute(
            f"CREATE TABLE health_samples_p{year:04d}_{month:02d} PARTITION OF health_samples "
            f"FOR VALUES FROM ({_month_start_ms(year, month)}) TO ({_month_start_ms(*end)})"
        )
    op.execute(
        f"INSERT INTO health_samples ({_COLUMNS}) "
        f"SELECT {_COLUMNS} FROM health_samples_unpartitioned"
    )
    op.execute("DROP TABLE health_samples_unpartitioned")
    op.execute("ALTER SEQUENCE health_samples_id_seq OWNED BY health_samples.id")
    # Built once the rows are in (faster than maintaining them row by row), with the old names.
    op.execute(
        "ALTER TABLE health_samples ADD CONSTRAINT pk_health_samples PRIMARY KEY (id, start_ms)"
    )
    op.execute(
        "ALTER TABLE health_samples ADD CONSTRAINT "
        "uq_health_samples_user_id_source_record_id_start_ms "
        "UNIQUE (user_id, source, record_id, start_ms)"
    )
    _add_user_key_and_index()
    op.execute("ANALYZE health_samples")
    op.execute("ANALYZE sample_identities")


def _add_user_key_and_index() -> None:
    """The foreign key and the read index, named as before, on the new ``health_samples``."""
    op.execute(
        "ALTER TABLE health_samples ADD CONSTRAINT fk_health_samples_user_id_users "
        "FOREIGN KEY (user_id) REFERENCES users (id)"
    )
    op.execute(
        "CREATE INDEX ix_health_samples_user_metric_start "
        "ON health_samples (user_id, metric, start_ms)"
    )


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        with op.batch_alter_table("health_samples") as batch:
            batch.drop_constraint(
                "uq_health_samples_user_id_source_record_id_start_ms", type_="unique"
            )
            batch.create_unique_constraint(
                "uq_health_samples_user_id_source_record_id", ["user_id", "source", "record_id"]
            )
        op.drop_table("sample_identities")
        return
    op.execute("ALTER TABLE health_samples RENAME TO health_samples_partitioned")
    op.execute("ALTER SEQUENCE health_samples_id_seq OWNED BY NONE")
    op.execute("ALTER TABLE health_samples_partitioned DROP CONSTRAINT pk_health_samples")
    op.execute(
        "ALTER TABLE health_samples_partitioned DROP CONSTRAINT "
        "uq_health_samples_user_id_source_record_id_start_ms"
    )
    op.execute(
        "ALTER TABLE health_samples_partitioned DROP CONSTRAINT fk_health_samples_user_id_users"
    )
    op.execute("DROP INDEX ix_health_samples_user_metric_start")
    op.execute(_samples_table_pg("health_samples", partitioned=False))
    op.execute(
        f"INSERT INTO health_samples ({_COLUMNS}) SELECT {_COLUMNS} FROM health_samples_partitioned"
    )
    op.execute("DROP TABLE health_samples_partitioned")
    op.execute("ALTER SEQUENCE health_samples_id_seq OWNED BY health_samples.id")
    op.execute("ALTER TABLE health_samples ADD CONSTRAINT pk_health_samples PRIMARY KEY (id)")
    op.execute(
        "ALTER TABLE health_samples ADD CONSTRAINT uq_health_samples_user_id_source_record_id "
        "UNIQUE (user_id, source, record_id)"
    )
    _add_user_key_and_index()
    op.drop_table("sample_identities")
