"""The one schema, as SQLAlchemy Core tables that run unchanged on SQLite and PostgreSQL.

Times are integer epoch milliseconds (``*_ms``) so that bucketing is one portable integer division.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only auto-increments an INTEGER PRIMARY KEY, PostgreSQL wants BIGINT for 10^9+ samples.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    # Incremented once by every ingest transaction that changes anything for this user.
    sa.Column("change_seq", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("created_at_ms", sa.BigInteger, nullable=False),
    # Local (HS256) tokens issued before this moment are refused (``vitalcast token revoke``).
    sa.Column("tokens_valid_after_ms", sa.BigInteger, nullable=True),
    # The ``sub`` of the deployment's OpenID Connect issuer; NULL for local users.
    sa.Column("oidc_subject", sa.String(255), nullable=True, unique=True),
)
# Servers poll it for revocations made by another process (``auth.RevocationPoll``).
sa.Index("ix_users_tokens_valid_after_ms", users.c.tokens_valid_after_ms)

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id"), nullable=False),
    sa.Column("client_session_id", sa.String(200), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("start_ms", sa.BigInteger, nullable=False),
    sa.Column("end_ms", sa.BigInteger, nullable=True),
    sa.Column("notes", sa.Text, nullable=True),
    # The user's change_seq of the last change that touched this session's widest window.
    sa.Column("source_watermark", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("created_at_ms", sa.BigInteger, nullable=False),
    sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
    # Set by retention when raw samples its windows show expire: views kept as they are.
    sa.Column("archived_at_ms", sa.BigInteger, nullable=True),
    sa.UniqueConstraint("user_id", "client_session_id"),
    sa.CheckConstraint("status in ('active', 'completed', 'cancelled')", name="status"),
    sa.CheckConstraint("end_ms is null or end_ms >= start_ms", name="end_after_start"),
)
# Serves both the newest-first listing and the overlap lookup (start_ms <= changed_to + pad).
sa.Index("ix_sessions_user_start", sessions.c.user_id, sessions.c.start_ms.desc(), sessions.c.id)

# On PostgreSQL partitioned by month of ``start_ms`` (db/partitions.py, docs/partitioning.md):
# there the primary key is (id, start_ms), since a partition key must be in every unique index,
# and ids stay unique because they all come from one sequence. SQLite keeps one table with ``id``
# alone as its key (it only auto-increments an INTEGER PRIMARY KEY). The identity of a sample,
# (user_id, source, record_id), is unique through ``sample_identities``.
health_samples = sa.Table(
    "health_samples",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id"), nullable=False),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("record_id", sa.String(200), nullable=False),
    sa.Column("metric", sa.String(64), nullable=False),
    sa.Column("value", sa.Float(precision=53), nullable=False),
    sa.Column("unit", sa.String(32), nullable=False),
    sa.Column("start_ms", sa.BigInteger, nullable=False),
    sa.Column("end_ms", sa.BigInteger, nullable=False),
    sa.Column("device", sa.String(200), nullable=True),
    sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("change_seq", sa.BigInteger, nullable=False),
    # Unique within a month; across months through ``sample_identities``. It is also how an
    # identity finds its row: the start_ms it holds selects the one partition to look in.
    sa.UniqueConstraint("user_id", "source", "record_id", "start_ms"),
)
# The telemetry aggregate scans exactly this range: one user, one metric, a time window.
sa.Index(
    "ix_health_samples_user_metric_start",
    health_samples.c.user_id,
    health_samples.c.metric,
    health_samples.c.start_ms,
)

# Where each sample identity lives: one row per (user, source, record_id), never partitioned,
# so its primary key makes the identity unique across every month of ``health_samples``. Written
# in the same transaction as the sample (insert, a re-send that moves its time, every deletion).
sample_identities = sa.Table(
    "sample_identities",
    metadata,
    sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id"), primary_key=True),
    sa.Column("source", sa.String(64), primary_key=True),
    sa.Column("record_id", sa.String(200), primary_key=True),
    # The sample's current start_ms: the month (partition) that holds it.
    sa.Column("start_ms", sa.BigInteger, nullable=False),
)

ingest_requests = sa.Table(
    "ingest_requests",
    metadata,
    sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id"), primary_key=True),
    sa.Column("request_id", sa.String(200), primary_key=True),
    sa.Column("body_sha256", sa.String(64), nullable=False),
    sa.Column("status_code", sa.Integer, nullable=False),
    sa.Column("response", sa.LargeBinary, nullable=False),
    sa.Column("created_at_ms", sa.BigInteger, nullable=False),
)

telemetry_cache = sa.Table(
    "telemetry_cache",
    metadata,
    sa.Column("session_id", sa.String(36), sa.ForeignKey("sessions.id"), primary_key=True),
    sa.Column("window_minutes", sa.Integer, primary_key=True),
    sa.Column("resolution", sa.String(8), primary_key=True),
    sa.Column("compute_version", sa.Integer, primary_key=True),
    sa.Column("user_id", sa.String(36), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    # The last good payload, encoded once; kept while a recompute runs so stale reads can serve it.
    sa.Column("payload", sa.LargeBinary, nullable=True),
    # The session watermark read before the samples of ``payload`` were aggregated.
    sa.Column("source_watermark", sa.BigInteger, nullable=True),
    sa.Column("computed_at_ms", sa.BigInteger, nullable=True),
    sa.Column("compute_ms", sa.Integer, nullable=True),
    sa.Column("raw_sample_count", sa.BigInteger, nullable=True),
    sa.Column("lease_owner", sa.String(64), nullable=True),
    sa.Column("lease_expires_ms", sa.BigInteger, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_ms", sa.BigInteger, nullable=True),
    sa.Column("error_code", sa.String(64), nullable=True),
    # When the first change after ``source_watermark`` arrived; feeds the freshness-lag metric.
    sa.Column("stale_since_ms", sa.BigInteger, nullable=True),
    sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
    # Saved with the payload: what the next compute of the view starts from (the GROUP BY rows
    # behind it, telemetry/compute/partials.py) and what a delta is built from (the view's saves and what
    # each changed, telemetry/compute/history.py). Last in the row, and written by the same UPDATE as the
    # payload: a table of their own cost a statement per save.
    sa.Column("partials", sa.LargeBinary, nullable=True),
    sa.Column("history", sa.LargeBinary, nullable=True),
    sa.CheckConstraint("status in ('computing', 'ready', 'no_data', 'failed')", name="status"),
)

# The invalidation log: per session and change, the sample times it changed. Every move of a
# session's watermark writes its entry in the same transaction, chained to the watermark before
# it, so a compute can prove it has seen every change between two watermarks (or see a hole).
session_changes = sa.Table(
    "session_changes",
    metadata,
    sa.Column("session_id", sa.String(36), sa.ForeignKey("sessions.id"), primary_key=True),
    # The session's new watermark (the user's change_seq of the change).
    sa.Column("change_seq", sa.BigInteger, primary_key=True),
    # The session's watermark before this change: the link of the chain.
    sa.Column("prev_seq", sa.BigInteger, nullable=False),
    # Packed [lo, hi) ranges of changed sample times (sessions/changelog.py); NULL: the whole
    # session changed (end, cancel, edit).
    sa.Column("ranges", sa.LargeBinary, nullable=True),
)

# Read-only links to one session (``shares.py``). The token is shown once and stored as its
# SHA-256: a leaked table opens nothing. Revoked shares stay (their access log is the owner's).
shares = sa.Table(
    "shares",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("session_id", sa.String(36), sa.ForeignKey("sessions.id"), nullable=False),
    sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id"), nullable=False),
    sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("label", sa.String(200), nullable=True),
    sa.Column("created_at_ms", sa.BigInteger, nullable=False),
    sa.Column("expires_at_ms", sa.BigInteger, nullable=False),
    sa.Column("revoked_at_ms", sa.BigInteger, nullable=True),
)
sa.Index("ix_shares_session_id", shares.c.session_id)

# Every read through a share, for its owner: when and what kind of read, never a value.
share_access = sa.Table(
    "share_access",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("share_id", sa.String(36), sa.ForeignKey("shares.id"), nullable=False),
    sa.Column("at_ms", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
)
sa.Index("ix_share_access_share_id_id", share_access.c.share_id, share_access.c.id)
# Live alerts (issue 25). One row per alert episode and rule of a session, whoever saw it first:
# the primary key is what makes "announced once across the cluster" an insert-if-absent. An
# episode is known by the 5-minute grid slot of its start (the grid is anchored at the session
# start, so a 1m view's episode and the 5m view's of the same crossing share the slot).
session_alerts = sa.Table(
    "session_alerts",
    metadata,
    sa.Column("session_id", sa.String(36), sa.ForeignKey("sessions.id"), primary_key=True),
    sa.Column("metric", sa.String(64), primary_key=True),
    sa.Column("rule", sa.String(16), primary_key=True),
    sa.Column("slot_ms", sa.BigInteger, primary_key=True),
    sa.Column("user_id", sa.String(36), nullable=False),
    sa.Column("level", sa.String(16), nullable=False),
    sa.Column("start_ms", sa.BigInteger, nullable=False),
    sa.Column("extreme", sa.Float(precision=53), nullable=False),
    # The watermark of the save that announced it: what a reconnecting client resumes from.
    sa.Column("source_watermark", sa.BigInteger, nullable=False),
    sa.Column("announced_at_ms", sa.BigInteger, nullable=False),
)
sa.Index(
    "ix_session_alerts_session_watermark",
    session_alerts.c.session_id,
    session_alerts.c.source_watermark,
)

# Webhook endpoints (Standard Webhooks): the secret is kept as issued because every delivery
# is signed with it. ``failing_since_ms``: since when every attempt failed (the creation of the
# oldest message failing since the last success); an endpoint failing for the whole retry window
# is disabled (``disabled_*``).
webhook_endpoints = sa.Table(
    "webhook_endpoints",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id"), nullable=False),
    sa.Column("url", sa.String(2048), nullable=False),
    # Comma-separated event types.
    sa.Column("events", sa.String(500), nullable=False),
    sa.Column("secret", sa.String(100), nullable=False),
    sa.Column("created_at_ms", sa.BigInteger, nullable=False),
    sa.Column("failing_since_ms", sa.BigInteger, nullable=True),
    sa.Column("last_success_ms", sa.BigInteger, nullable=True),
    sa.Column("disabled_at_ms", sa.BigInteger, nullable=True),
    sa.Column("disabled_reason", sa.String(200), nullable=True),
)
sa.Index("ix_webhook_endpoints_user", webhook_endpoints.c.user_id)

# One message to one endpoint: its id is the ``webhook-id`` of every attempt (at least once,
# never under two ids). The row is the durable outbox: a restart resumes what is pending.
webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column(
        "endpoint_id",
        sa.String(36),
        sa.ForeignKey("webhook_endpoints.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("user_id", sa.String(36), nullable=False),
    sa.Column("event_type", sa.String(64), nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at_ms", sa.BigInteger, nullable=False),
    sa.Column("next_attempt_ms", sa.BigInteger, nullable=False),
    # A sender's claim; an expired claim (its process died mid-send) is taken over.
    sa.Column("lease_until_ms", sa.BigInteger, nullable=True),
    sa.Column("finished_at_ms", sa.BigInteger, nullable=True),
    sa.CheckConstraint("status in ('pending', 'delivered', 'failed')", name="status"),
)
sa.Index(
    "ix_webhook_deliveries_due", webhook_deliveries.c.status, webhook_deliveries.c.next_attempt_ms
)
sa.Index(
    "ix_webhook_deliveries_endpoint",
    webhook_deliveries.c.endpoint_id,
    webhook_deliveries.c.created_at_ms,
)

# Every attempt of a delivery, for its owner (``GET /api/v1/webhooks/{id}/deliveries``).
webhook_attempts = sa.Table(
    "webhook_attempts",
    metadata,
    sa.Column(
        "delivery_id",
        sa.String(40),
        sa.ForeignKey("webhook_deliveries.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("attempt", sa.Integer, primary_key=True),
    sa.Column("at_ms", sa.BigInteger, nullable=False),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("status_code", sa.Integer, nullable=True),
    sa.Column("duration_ms", sa.Integer, nullable=False),
)

# Accounts being erased (DELETE /api/v1/me, ``vitalcast users erase``): the row is the purge's
# durable intent, so a purge cut by a crash resumes; while it exists every token of the user is
# refused. It goes in the purge's last transaction, with the user's row. No foreign key: the
# purge removes the user row it would point at.
erasures = sa.Table(
    "erasures",
    metadata,
    sa.Column("user_id", sa.String(36), primary_key=True),
    sa.Column("requested_at_ms", sa.BigInteger, nullable=False),
    # Rows removed so far (all tables), for progress.
    sa.Column("rows_purged", sa.BigInteger, nullable=False, server_default="0"),
)

# OpenID Connect subjects whose account was erased: the issuer's tokens of the subject issued
# before ``erased_at_ms`` stay refused after the purge removed the user (a token issued later
# opens a new, empty account). The subject is kept only as a keyed hash
# (``credentials.SubjectTombstones``): no user id, no name, no subject in clear, so the purge
# leaves it and it holds nothing of the person. No ``user_id``: the purge does not find it.
erased_subjects = sa.Table(
    "erased_subjects",
    metadata,
    sa.Column("subject_digest", sa.String(64), primary_key=True),
    sa.Column("erased_at_ms", sa.BigInteger, nullable=False),
)
