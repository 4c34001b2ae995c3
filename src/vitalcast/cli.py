"""The ``vitalcast`` command: serve, worker, db upgrade, token create and revoke, simulate,
backfill, import apple-health, users list and erase.

Every command imports what it needs when it runs, not when this module loads: Alembic,
uvicorn, the app and BullMQ cost seconds to import, and a ``token create`` (or any process a test
spawns) should not pay for a server it never starts. ``tests/test_startup.py`` holds this.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vitalcast.clock import epoch_ms, now_ms
from vitalcast.settings import Settings

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from vitalcast.db.engine import Database
    from vitalcast.interop.importer import ImportSummary
    from vitalcast.lifecycle.retention import RetentionRun
    from vitalcast.queue.backfill import BackfillFilter, BackfillProgress
    from vitalcast.wiring import Seams

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="vitalcast: real-time session telemetry for wearable health samples. "
    "`vitalcast serve --demo` starts the embedded server with a live demo.",
)
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
token_app = typer.Typer(no_args_is_help=True, help="Bearer tokens.")
import_app = typer.Typer(no_args_is_help=True, help="Load data exported by other systems.")
app.add_typer(db_app, name="db")
app.add_typer(token_app, name="token")
app.add_typer(import_app, name="import")
users_app = typer.Typer(no_args_is_help=True, help="Accounts: list them, erase one.")
app.add_typer(users_app, name="users")
retention_app = typer.Typer(no_args_is_help=True, help="Raw-sample retention.")
app.add_typer(retention_app, name="retention")


@retention_app.command("run")
def retention_run() -> None:
    """Archive the sessions whose windows reach past VITALCAST_RAW_RETENTION_DAYS, then purge
    the raw samples older than that (what every server does daily)."""
    from vitalcast.db.migrate import upgrade_if_behind
    from vitalcast.observability import configure_logging

    settings = Settings()
    configure_logging("warning")
    if not settings.raw_retention_days:
        typer.echo("VITALCAST_RAW_RETENTION_DAYS is not set: raw samples are kept", err=True)
        raise typer.Exit(1)
    upgrade_if_behind(settings.resolved_database_url)
    done = asyncio.run(_retention_run(settings))
    typer.echo(
        f"cutoff {datetime.fromtimestamp(done.cutoff_ms / 1000, UTC).isoformat()}: "
        f"{done.sessions_archived} sessions archived, {done.samples_deleted} samples deleted, "
        f"{done.partitions_dropped} months dropped"
    )


async def _retention_run(settings: Settings) -> RetentionRun:
    from vitalcast.wiring import build_retention

    db, service = build_retention(settings)
    try:
        return await service.run()
    finally:
        await db.dispose()


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply every schema revision (idempotent)."""
    from vitalcast.db.migrate import upgrade
    from vitalcast.observability import configure_logging

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    upgrade(settings.resolved_database_url)
    typer.echo("database is up to date")


@token_app.command("create")
def token_create(
    name: str,
    ttl_days: int = typer.Option(30, min=1, max=3650, help="Days until the token expires."),
) -> None:
    """Create the user NAME if needed and print a bearer token for it (and nothing else)."""
    from vitalcast.db.migrate import upgrade_if_behind
    from vitalcast.local_tokens import issue_token

    # No logging set-up here: nothing on this path logs below WARNING, which Python's last-resort
    # handler prints to stderr, and structlog's import (with rich) would be a fifth of this
    # command's start-up (tests/test_startup.py keeps it out).
    settings = Settings()
    upgrade_if_behind(settings.resolved_database_url)
    user_id = asyncio.run(_ensure_user(settings, name))
    issued_ms = now_ms()
    typer.echo(
        issue_token(
            settings.resolved_secret(),
            user_id,
            now_s=issued_ms // 1000,
            ttl_s=ttl_days * 86_400,
            now_ms=issued_ms,
        )
    )


@token_app.command("revoke")
def token_revoke(name: str) -> None:
    """Refuse every local token issued to the user NAME before now, on every server: requests
    with them answer 401 TOKEN_REVOKED and their sockets are closed (within a second when
    scaled out; within VITALCAST_REVOCATION_POLL_MS when embedded). Exit 1 when there is no
    such user."""
    from vitalcast.db.migrate import upgrade_if_behind
    from vitalcast.observability import configure_logging

    settings = Settings()
    configure_logging("warning", settings.log_format)
    upgrade_if_behind(settings.resolved_database_url)
    if not asyncio.run(_revoke_tokens(settings, name)):
        typer.echo(f"no user called {name!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"local tokens of {name!r} issued before now are refused")


async def _revoke_tokens(settings: Settings, name: str) -> bool:
    from vitalcast import credentials
    from vitalcast.db.engine import Database, create_engine
    from vitalcast.revocations import Revocation, RevocationKind, channel_of, publish_once

    db = Database(create_engine(settings.resolved_database_url))
    at_ms = now_ms()
    try:
        async with db.write() as conn:
            user_id = await credentials.revoke_local_tokens(conn, name, now_ms=at_ms)
    finally:
        await db.dispose()
    if user_id is None:
        return False
    if settings.redis_url:
        revocation = Revocation(RevocationKind.USER, user_id, at_ms)
        try:
            await publish_once(
                settings.redis_url, channel_of(settings.socketio_channel), revocation
            )
        except Exception as exc:
            # The servers' poll finds it in the database instead, within a second or so.
            typer.echo(f"could not tell the servers through Redis ({type(exc).__name__})", err=True)
    return True


async def _ensure_user(settings: Settings, name: str) -> str:
    from vitalcast.db.engine import Database, create_engine

    db = Database(create_engine(settings.resolved_database_url))
    try:
        return await _user_id(db, name)
    finally:
        await db.dispose()


async def _user_id(db: Database, name: str) -> str:
    """The id of the user ``name``, created on first use."""
    from vitalcast.sessions import repository as session_repository

    async with db.write() as conn:
        return await session_repository.get_or_create_user(conn, name, now_ms=now_ms())


@import_app.command("apple-health")
def import_apple_health(
    path: Annotated[Path, typer.Argument(help="export.zip, or the export.xml inside it.")],
    user: str = typer.Option(..., help="Name of the user to import for (created if needed)."),
    since: str | None = typer.Option(
        None, help="Only records starting at or after this ISO date/time (naive = UTC)."
    ),
    workouts_as_sessions: bool = typer.Option(
        False, help="Also make each Workout a completed session (found again on re-import)."
    ),
) -> None:
    """Import an Apple Health export through the ingest service: the catalog's HealthKit types,
    in batches, with the HTTP API's validation, identity and watermarks. Importing the same
    file twice changes nothing. A broken file stops the import (exit 1) after the complete
    batches before the fault."""
    from sqlalchemy.exc import DBAPIError

    from vitalcast.db.migrate import upgrade_if_behind
    from vitalcast.interop.apple_health import since_ms_of
    from vitalcast.interop.importer import ImportFailed
    from vitalcast.observability import configure_logging

    since_ms = None
    if since is not None:
        try:
            since_ms = since_ms_of(since)
        except ValueError:
            raise typer.BadParameter(f"--since is not an ISO date or date-time: {since}") from None
    settings = Settings()
    configure_logging("warning", settings.log_format)
    upgrade_if_behind(settings.resolved_database_url)
    try:
        summary = asyncio.run(_import(settings, path, user, since_ms, workouts_as_sessions))
    except (DBAPIError, OSError) as exc:
        # The type only: a driver error's text may quote statement parameters (health values).
        typer.echo(f"import failed: the database is unavailable ({type(exc).__name__})", err=True)
        raise typer.Exit(1) from None
    except ImportFailed as exc:
        stored = exc.summary
        typer.echo(
            f"import failed: {exc} ({stored.batches} complete batches with "
            f"{stored.imported:,} new or updated samples were stored before it)",
            err=True,
        )
        raise typer.Exit(1) from None
    for line in summary.lines():
        typer.echo(line)


async def _import(
    settings: Settings, path: Path, user: str, since_ms: int | None, workouts: bool
) -> ImportSummary:
    from vitalcast.interop.importer import import_export
    from vitalcast.wiring import build_importer

    parts = build_importer(settings)

    async def find_user() -> str:
        # only once the file's first batch has parsed: a refused file creates no user
        return await _user_id(parts.db, user)

    try:
        with _import_progress(path.name) as progress:
            return await import_export(
                parts.ingest,
                find_user,
                path,
                since_ms=since_ms,
                sessions=parts.sessions if workouts else None,
                on_progress=progress,
            )
    finally:
        await parts.close()


@contextmanager
def _import_progress(name: str) -> Iterator[Callable[[ImportSummary], None]]:
    """A progress bar over the export's bytes on a terminal (stderr); nothing otherwise."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[records]} records"),
        TimeRemainingColumn(),
        console=console,
        disable=not sys.stderr.isatty(),
        transient=True,
    ) as bar:
        task = bar.add_task(name, total=None, records="0")

        def show(summary: ImportSummary) -> None:
            bar.update(
                task,
                completed=summary.bytes_read,
                total=summary.bytes_total or None,
                records=f"{summary.records:,}",
            )

        yield show


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="TCP port."),
    demo: bool = typer.Option(False, help="Also create a demo user and simulate sessions."),
    shutdown_grace: int = typer.Option(
        10, min=1, help="Seconds requests in flight may take after SIGTERM before they are cut."
    ),
) -> None:
    """Run the HTTP + Socket.IO server (applies migrations first)."""
    run_server(host=host, port=port, demo=demo, shutdown_grace_s=shutdown_grace)


def run_server(
    *,
    host: str,
    port: int,
    demo: bool = False,
    shutdown_grace_s: int = 10,
    seams: Seams | None = None,
) -> None:
    """``vitalcast serve``: settings from the environment, migrations, then the app (with the
    stand-ins of ``seams`` for a test entry point) until SIGTERM/SIGINT."""
    from vitalcast.app import create_app
    from vitalcast.db.migrate import upgrade_if_behind
    from vitalcast.observability import configure_logging
    from vitalcast.wiring import NO_SEAMS

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    upgrade_if_behind(settings.resolved_database_url)
    companions = []
    if demo:
        from vitalcast.demo import demo_companion

        companions.append(demo_companion(host=host, port=port, sync_ms=settings.demo_sync_ms))
    application = create_app(settings, seams or NO_SEAMS, companions=companions)
    serve_application(application, host=host, port=port, shutdown_grace_s=shutdown_grace_s)


def serve_application(
    application: ASGIApp, *, host: str, port: int, shutdown_grace_s: int = 10
) -> None:
    """Serve a built app as ``vitalcast serve`` does (its HTTP protocol, frame and head bounds,
    graceful shutdown and garbage collector settings) until SIGTERM/SIGINT; ``bench/`` serves
    its app the same way, so that it measures what a deployment runs."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    from vitalcast.api.http_protocol import BoundedHeadProtocol
    from vitalcast.api.quiet_server import QuietServer
    from vitalcast.realtime.broadcaster import MAX_MESSAGE_BYTES

    _settle_garbage_collector()
    config = uvicorn.Config(
        application,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        # A WebSocket frame larger than one Engine.IO packet is refused before it is buffered.
        ws_max_size=MAX_MESSAGE_BYTES,
        # One keepalive per socket: Engine.IO pings every client itself (every 25 s) and drops
        # one that does not answer. uvicorn's WebSocket ping (every 20 s) on top of it doubled
        # what an idle watcher costs the server.
        ws_ping_interval=None,
        timeout_graceful_shutdown=shutdown_grace_s,
        # A request head (line and headers) past 32 KiB is refused before it is buffered.
        http=BoundedHeadProtocol,
    )
    # uvicorn.run, without its reload and multi-process paths (not used), with a server that
    # wakes once a second rather than ten times (api/quiet_server.py)
    server = QuietServer(config)
    with suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)


#: allocations between two collections of the youngest generation (CPython's default: 700)
GC_YOUNG_THRESHOLD = 20_000


def _settle_garbage_collector() -> None:
    """What is loaded before serving (modules, the app, its routes and schemas) lives as long as
    the process: frozen out of the collector's reach, a full collection does not scan it again;
    and the youngest generation is collected less often, so full collections are rarer. A full
    collection stops the event loop for as long as it scans: in a server holding 3,500 sockets
    it took 0.1-0.6 s, the whole tail of the capacity benchmark at 700 live sessions."""
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


@app.command()
def simulate(
    url: str = typer.Option("http://127.0.0.1:8000", help="Server to post to."),
    token: Annotated[
        list[str] | None,
        typer.Option(help="Bearer token of a user to simulate (repeatable). Default: --users."),
    ] = None,
    users: int = typer.Option(1, min=1, max=100, help="Users to create locally when no --token."),
    past: int = typer.Option(2, min=0, max=60, help="Past sessions per user, one per day."),
    live: bool = typer.Option(True, help="Also run one live session per user."),
    speed: float = typer.Option(1.0, min=1.0, max=3600.0, help="Live time acceleration."),
    duration: int = typer.Option(45, min=1, max=720, help="Session length in minutes."),
    elapsed: int = typer.Option(10, min=0, help="Minutes the live session already ran."),
    padding: int = typer.Option(60, min=0, max=180, help="Minutes recorded before and after."),
    sync: float = typer.Option(60.0, min=1.0, help="Simulated seconds between phone syncs (live)."),
    dropouts: int = typer.Option(0, min=0, help="Watch-off periods per session (gaps)."),
    dropout_minutes: int = typer.Option(12, min=1, help="Length of each dropout."),
    outages: int = typer.Option(0, min=0, help="Phone-out-of-reach periods (late backfill)."),
    outage_minutes: int = typer.Option(15, min=1, help="Length of each outage."),
    seed: int = typer.Option(1, help="Same seed, same streams."),
    end_on_exit: bool = typer.Option(True, help="End the live session on Ctrl-C."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress lines."),
) -> None:
    """Post realistic wearable streams through the HTTP API, synced in batches like a phone."""
    import httpx

    from vitalcast.simulator import ApiError, SimulationConfig, Tally, until_terminated
    from vitalcast.simulator import simulate as run_simulation

    if elapsed > duration:
        raise typer.BadParameter("--elapsed cannot exceed --duration")
    if token:
        people = [(f"user-{i + 1}", value) for i, value in enumerate(token)]
    else:
        from vitalcast.db.migrate import upgrade_if_behind
        from vitalcast.local_tokens import issue_token
        from vitalcast.observability import configure_logging

        settings = Settings()
        configure_logging("warning", settings.log_format)
        upgrade_if_behind(settings.resolved_database_url)
        now_s = int(time.time())
        people = []
        for i in range(users):
            user_id = asyncio.run(_ensure_user(settings, f"sim-{i + 1}"))
            secret = settings.resolved_secret()
            people.append((f"sim-{i + 1}", issue_token(secret, user_id, now_s=now_s, ttl_s=86_400)))
    config = SimulationConfig(
        seed=seed,
        past_sessions=past,
        live=live,
        speed=speed,
        duration_min=duration,
        elapsed_min=elapsed,
        padding_min=padding,
        sync_s=sync,
        dropouts=dropouts,
        dropout_min=dropout_minutes,
        outages=outages,
        outage_min=outage_minutes,
        end_on_exit=end_on_exit,
    )
    progress = None if quiet else typer.echo
    totals = Tally()
    try:
        tallies = asyncio.run(
            until_terminated(run_simulation(url, people, config, progress=progress))
        )
    except (KeyboardInterrupt, asyncio.CancelledError):
        typer.echo("stopped")
        raise typer.Exit(130) from None
    except ApiError as exc:
        typer.echo(f"the server refused the simulation: {exc}", err=True)
        raise typer.Exit(1) from None
    except httpx.TransportError as exc:
        typer.echo(f"cannot reach {url}: {type(exc).__name__}", err=True)
        raise typer.Exit(1) from None
    for name, tally in tallies.items():
        totals.add(tally)
        typer.echo(
            f"{name}: sent {tally.sent} samples in {tally.batches} batches "
            f"(new {tally.inserted}, rejected {tally.rejected}, late {tally.late})"
        )
    if totals.rejected:
        raise typer.Exit(1)


@app.command()
def worker(
    concurrency: int | None = typer.Option(
        None, min=1, max=64, help="Jobs at once (default: VITALCAST_MAX_CONCURRENT_COMPUTES)."
    ),
    metrics_port: int | None = typer.Option(
        None, help="Serve Prometheus /metrics on this port (off when unset)."
    ),
    metrics_host: str = typer.Option("127.0.0.1", help="Interface of the metrics port."),
    shutdown_grace: float = typer.Option(
        8.0, min=0.0, help="Seconds running jobs may finish after SIGTERM before they are requeued."
    ),
) -> None:
    """Consume telemetry computes from the Redis queue until SIGTERM (needs VITALCAST_REDIS_URL;
    the database must be migrated: `vitalcast db upgrade`)."""
    import uvloop

    from vitalcast.observability import configure_logging
    from vitalcast.queue.runner import run_worker

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    if not settings.redis_url:
        raise typer.BadParameter("VITALCAST_REDIS_URL is not set: there is no queue to consume")
    _settle_garbage_collector()
    # uvloop, as uvicorn gives the server: a worker's loop wakes for every Redis and PostgreSQL
    # reply of every job, and asyncio's own loop was a tenth of a worker's CPU
    uvloop.run(
        run_worker(
            settings,
            concurrency=concurrency or settings.max_concurrent_computes,
            metrics_host=metrics_host,
            metrics_port=metrics_port,
            shutdown_grace_s=shutdown_grace,
        )
    )


@app.command()
def backfill(
    since: str | None = typer.Option(
        None, help="Only sessions starting at or after this ISO date/time (naive = UTC)."
    ),
    user: str | None = typer.Option(None, help="Only the sessions of the user with this name."),
) -> None:
    """Schedule a compute for every session whose default cache is missing or stale: queued
    for the workers when Redis is configured, else computed here."""
    from vitalcast.observability import configure_logging
    from vitalcast.queue.backfill import BackfillFilter
    from vitalcast.queue.service import QueueUnavailable

    settings = Settings()
    configure_logging("warning", settings.log_format)
    since_ms = None
    if since is not None:
        try:
            moment = datetime.fromisoformat(since)
        except ValueError:
            raise typer.BadParameter(f"--since is not an ISO date or date-time: {since}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        since_ms = epoch_ms(moment)

    def show(progress: BackfillProgress) -> None:
        typer.echo(
            f"backfill: {progress.checked}/{progress.total} sessions checked, "
            f"{progress.scheduled} computes scheduled, {progress.up_to_date} up to date"
            + (f", waited for the queue {progress.waits}x" if progress.waits else ""),
            err=True,
        )

    try:
        done = asyncio.run(
            _backfill(settings, BackfillFilter(since_ms=since_ms, user_name=user), show)
        )
    except QueueUnavailable as exc:
        typer.echo(f"backfill: Redis is unreachable ({exc})", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{done.scheduled} computes scheduled for {done.checked} sessions")


async def _backfill(
    settings: Settings,
    selection: BackfillFilter,
    on_progress: Callable[[BackfillProgress], None],
) -> BackfillProgress:
    """``vitalcast backfill``: through the queue when Redis is configured (workers compute),
    else through an in-process coordinator, waiting until every compute has run."""
    from vitalcast.observability import Metrics
    from vitalcast.queue.backfill import coordinator_submit, run_backfill
    from vitalcast.queue.service import SessionTelemetryQueueService
    from vitalcast.telemetry.keys import ScheduleReason, TelemetryKey
    from vitalcast.wiring import build_local_computes

    local = build_local_computes(settings)
    try:
        if settings.redis_url:
            queue = SessionTelemetryQueueService(settings, fallback=None, metrics=Metrics())
            try:

                async def enqueue(key: TelemetryKey, watermark: int) -> bool:
                    return await queue.enqueue(
                        key, watermark=watermark, reason=ScheduleReason.BACKFILL
                    )

                return await run_backfill(
                    local.db,
                    enqueue,
                    window_minutes=settings.default_window_minutes,
                    now_ms=local.clock.now_ms,
                    selection=selection,
                    on_progress=on_progress,
                )
            finally:
                await queue.close()
        progress = await run_backfill(
            local.db,
            coordinator_submit(local.coordinator),
            window_minutes=settings.default_window_minutes,
            now_ms=local.clock.now_ms,
            selection=selection,
            on_progress=on_progress,
        )
        await local.coordinator.wait_idle()
        return progress
    finally:
        await local.close()


@users_app.command("list")
def users_list() -> None:
    """Every user: name, id, sessions, samples, and whether an erasure is under way."""
    from vitalcast.db.migrate import upgrade_if_behind
    from vitalcast.observability import configure_logging

    settings = Settings()
    configure_logging("warning")
    upgrade_if_behind(settings.resolved_database_url)
    for line in asyncio.run(_users_list(settings)):
        typer.echo(line)


async def _users_list(settings: Settings) -> list[str]:
    import sqlalchemy as sa

    from vitalcast.db.engine import Database, create_engine
    from vitalcast.db.tables import erasures, health_samples, sessions, users

    db = Database(create_engine(settings.resolved_database_url))
    try:
        async with db.read() as conn:
            n_sessions = (
                sa.select(sa.func.count()).where(sessions.c.user_id == users.c.id).scalar_subquery()
            )
            n_samples = (
                sa.select(sa.func.count())
                .where(health_samples.c.user_id == users.c.id)
                .scalar_subquery()
            )
            erasing = sa.exists().where(erasures.c.user_id == users.c.id)
            rows = await conn.execute(
                sa.select(users.c.name, users.c.id, n_sessions, n_samples, erasing).order_by(
                    users.c.name
                )
            )
            lines = ["name\tid\tsessions\tsamples\tstate"]
            lines += [
                f"{r[0]}\t{r[1]}\t{r[2]}\t{r[3]}\t{'erasing' if r[4] else 'active'}" for r in rows
            ]
            return lines
    finally:
        await db.dispose()


@users_app.command("erase")
def users_erase(name: str) -> None:
    """Erase the user NAME: its tokens are refused at once, then every row and Redis key of it
    is purged (resumes an erasure that was cut short)."""
    from vitalcast.db.migrate import upgrade_if_behind
    from vitalcast.observability import configure_logging

    settings = Settings()
    configure_logging("warning")
    upgrade_if_behind(settings.resolved_database_url)
    rows = asyncio.run(_users_erase(settings, name))
    if rows is None:
        typer.echo(f"no user named {name!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"erased {name}: {rows} rows")


async def _users_erase(settings: Settings, name: str) -> int | None:
    import sqlalchemy as sa
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from vitalcast.db.tables import users
    from vitalcast.lifecycle.erasure import Progress as PurgeProgress
    from vitalcast.wiring import build_erasure

    db, erasure = build_erasure(settings)
    try:
        async with db.read() as conn:
            user_id = await conn.scalar(sa.select(users.c.id).where(users.c.name == name))
        if user_id is None:
            return None
        await erasure.request(str(user_id))
        with Progress(
            TextColumn("[bold]erasing {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rows"),
            console=Console(stderr=True),
            disable=not sys.stderr.isatty(),
            transient=True,
        ) as bar:
            task = bar.add_task(name, total=None)

            def show(progress: PurgeProgress) -> None:
                bar.update(task, completed=progress.purged, total=progress.total)

            return await erasure.purge(str(user_id), on_progress=show)
    finally:
        await db.dispose()


def main() -> None:
    app()
