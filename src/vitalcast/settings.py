"""Runtime configuration, read once from ``VITALCAST_*`` environment variables and passed down.

Every knob has a safe default so that the embedded mode needs none. There is no module-level
instance: the CLI (or a test) builds one ``Settings`` and hands it to ``create_app``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every setting of vitalcast; the README configuration table is generated from them."""

    model_config = SettingsConfigDict(env_prefix="VITALCAST_", extra="ignore")

    data_dir: Path = Field(
        Path("./.vitalcast"), description="Folder for the SQLite database and the generated secret."
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy async URL; unset = SQLite file in the data dir. "
        "Scaled out: postgresql+asyncpg://…",
    )
    redis_url: str | None = Field(
        None, description="Redis URL; unset = embedded mode (in-process computes and fan-out)."
    )
    secret: str | None = Field(
        None,
        description="HS256 key for bearer tokens; unset = generated into the data dir (mode 0600).",
    )
    max_concurrent_computes: int = Field(
        3,
        ge=1,
        le=64,
        description="Costly computes (reads' misses, late ingests, backfill) running at once per "
        "process; live updates are bounded by their batches.",
    )
    max_pending_computes: int = Field(
        50, ge=0, le=100_000, description="Computes waiting per process; beyond it they are shed."
    )
    compute_batch_max_views: int = Field(
        32,
        ge=1,
        le=256,
        description="Views one batch of computes holds at most (one claim, one GROUP BY, one save).",
    )
    inline_live_updates: bool = Field(
        True,
        description="Scaled out: a server computes the live updates of its own ingests (views "
        "already cached) in process while its bound has room; the rest goes to the workers. "
        "false = every compute goes to the workers.",
    )
    # Off by default: at 40 updates a second 30 ms made two views a batch and saved about a
    # sixth of an update's CPU, but every live update then waited the linger (the scaled-out
    # soak's p99 read 54 ms against 21 without it), and the live path's latency may not regress.
    compute_linger_ms: int = Field(
        0,
        ge=0,
        le=1_000,
        description="How long a worker woken for a job waits for more before it fetches, so that "
        "jobs arriving together run as one batch (fewer round trips per update, that much more "
        "latency); only when arrivals are that frequent. 0 = off.",
    )
    lease_ms: int = Field(
        30_000, ge=1_000, le=600_000, description="Compute lease; renewed while computing."
    )
    default_window_minutes: int = Field(
        60, ge=15, le=180, description="Padding around a session when a request gives none."
    )
    queue_name: str = Field("session-telemetry", description="BullMQ queue name.")
    queue_prefix: str = Field("bull", description="BullMQ Redis key prefix.")
    max_queue_depth: int = Field(
        10_000,
        ge=1,
        description="Waiting jobs beyond which GET answers computing, backfill waits.",
    )
    # A SIGKILLed worker's job runs elsewhere after its lock lapses and a stalled check finds it:
    # about queue_lock_ms … queue_lock_ms + 2 × queue_stalled_interval_ms (4 + 2 × 3 = 10 s worst
    # case). Locks and leases are renewed on the worker's event loop (a lock every half of it, a
    # lease every third), so a job must never block that loop that long. Tests that kill workers
    # shorten all four to hundreds of milliseconds.
    queue_lock_ms: int = Field(
        4_000, ge=200, le=600_000, description="BullMQ job lock of a worker, renewed every half."
    )
    queue_stalled_interval_ms: int = Field(
        3_000,
        ge=100,
        le=600_000,
        description="How often a worker looks for jobs whose lock lapsed (BullMQ stalled check).",
    )
    queue_backoff_ms: int = Field(
        1_000,
        ge=10,
        le=600_000,
        description="Wait before a failed job's first retry; doubled for each further retry.",
    )
    worker_lease_ms: int = Field(
        6_000,
        ge=200,
        le=600_000,
        description="A worker's compute lease (at most lease_ms): a dead worker's key is free "
        "this long after its last renewal, about when its job is redelivered.",
    )
    socketio_channel: str = Field("vitalcast-socketio", description="Redis channel for Socket.IO.")
    rate_limit_ingest: str = Field(
        "600/minute", description="Per-user ingest request limit (limits notation)."
    )
    rate_limit_telemetry: str = Field(
        "1200/minute", description="Per-user telemetry GET limit (limits notation)."
    )
    rate_limit_socket_events: str = Field(
        "20/second", description="Per-socket client event limit (limits notation)."
    )
    rate_limit_prefix: str = Field(
        "vitalcast-ratelimit", description="Redis key prefix of the rate-limit counters."
    )
    log_level: str = Field("info", description="Log level: debug, info, warning, error.")
    log_format: Literal["auto", "console", "json"] = Field(
        "auto",
        description="Log lines: `auto` is for a person on a terminal, JSON lines when stderr is "
        "not one; `json` always (log shippers); `console` always human-readable.",
    )
    demo_sync_ms: int = Field(
        10_000,
        ge=100,
        description="How often the simulated phone of `serve --demo` syncs its live session.",
    )
    gc_young_interval_ms: int = Field(
        0,
        ge=0,
        le=60_000,
        description="A server collects its young garbage every this many ms instead of by "
        "CPython's allocation count: shorter collector pauses for about five times the "
        "collector's CPU with thousands of sockets (0 = CPython's count).",
    )
    oidc_issuer: str | None = Field(
        None,
        description="OpenID Connect issuer whose bearer tokens are accepted (https, or http on a "
        "loopback address); unset = none.",
    )
    oidc_audience: str | None = Field(
        None, description="The `aud` an issuer's token must carry (required with the issuer)."
    )
    oidc_token_max_lifetime_s: int = Field(
        86_400,
        ge=60,
        le=30 * 86_400,
        description="The longest an issuer's token may be valid (`exp` after `iat`; without "
        "`iat`, after now): a longer one is refused. An erased subject's tombstone is kept this "
        "long (plus 60 s of leeway), until every token issued before the erasure has expired.",
    )
    oidc_jwks_refresh_s: float = Field(
        30.0,
        ge=0.1,
        le=3600,
        description="At most one JWKS fetch per this many seconds when an unknown `kid` arrives.",
    )
    local_tokens: bool = Field(
        True, description="Accept local HS256 tokens (`vitalcast token create`)."
    )
    auth_cache_s: float = Field(
        30.0,
        ge=0,
        le=300,
        description="How long a verified token is remembered (revocation drops it at once).",
    )
    revocation_poll_ms: int = Field(
        1000,
        ge=0,
        le=60_000,
        description="How often a server looks for token revocations made by another process "
        "(the CLI); 0 = never (Redis pub/sub still carries them when scaled out).",
    )
    rate_limit_share: str = Field(
        "600/minute", description="Per-share telemetry and export read limit (limits notation)."
    )
    webhook_allow_private: bool = Field(
        False,
        description="Allow webhook URLs over http and to private or loopback addresses "
        "(tests, local use); otherwise only https to public addresses.",
    )
    webhook_timeout_s: float = Field(
        5.0, gt=0, le=60, description="Per-phase timeout of one webhook attempt (twice it in all)."
    )
    webhook_concurrency: int = Field(
        8, ge=1, le=256, description="Webhook attempts in flight per server process."
    )
    webhook_retry_base_ms: int = Field(
        5_000, ge=10, description="First webhook retry delay; doubles with every failed attempt."
    )
    webhook_retry_max_ms: int = Field(
        14_400_000, ge=10, description="Longest wait between two attempts of a webhook (4 h)."
    )
    webhook_retry_window_ms: int = Field(
        86_400_000,
        ge=1_000,
        description="How long a webhook delivery is retried, and how long an endpoint may fail "
        "before it is disabled (24 h).",
    )
    rate_limit_sessions: str = Field(
        "120/minute", description="Per-user session creation limit (limits notation)."
    )
    database_pool_timeout_s: float = Field(
        10.0,
        gt=0,
        le=120,
        description="How long a request waits for a pooled database connection before it is "
        "answered 503 with Retry-After.",
    )
    raw_retention_days: int | None = Field(
        None,
        ge=1,
        description="Raw samples older than this many days are purged daily (views of the "
        "sessions they belonged to are archived first); unset = kept forever.",
    )
    erasure_batch_rows: int = Field(
        5_000, ge=1, le=100_000, description="Rows an erasure purge deletes per transaction."
    )

    @property
    def resolved_database_url(self) -> str:
        """The configured database URL, or the embedded SQLite file inside the data dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'vitalcast.db').resolve()}"

    @property
    def embedded(self) -> bool:
        """True when no Redis is configured: computes and fan-out stay in this process."""
        return not self.redis_url

    def resolved_secret(self) -> str:
        """The token key: configured, or read from (and on first use written to) the data dir."""
        if self.secret:
            return self.secret
        path = self.data_dir / "secret"
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        value = secrets.token_urlsafe(48)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(value)
        return value
