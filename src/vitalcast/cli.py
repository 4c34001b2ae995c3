"""The ``vitalcast`` command: serve, worker, db upgrade, token create, simulate, backfill."""

from __future__ import annotations

import asyncio
import time

import typer
import uvicorn

from vitalcast.auth import issue_token
from vitalcast.db.engine import Database, create_engine
from vitalcast.db.migrate import upgrade
from vitalcast.observability import configure_logging
from vitalcast.sessions import repository as session_repository
from vitalcast.settings import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
token_app = typer.Typer(no_args_is_help=True, help="Bearer tokens.")
app.add_typer(db_app, name="db")
app.add_typer(token_app, name="token")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply every schema revision (idempotent)."""
    settings = Settings()
    configure_logging(settings.log_level)
    upgrade(settings.resolved_database_url)
    typer.echo("database is up to date")


@token_app.command("create")
def token_create(
    name: str,
    ttl_days: int = typer.Option(30, min=1, max=3650, help="Days until the token expires."),
) -> None:
    """Create the user NAME if needed and print a bearer token for it (and nothing else)."""
    settings = Settings()
    configure_logging("warning")
    upgrade(settings.resolved_database_url)
    user_id = asyncio.run(_ensure_user(settings, name))
    now_s = int(time.time())
    typer.echo(
        issue_token(settings.resolved_secret(), user_id, now_s=now_s, ttl_s=ttl_days * 86_400)
    )


async def _ensure_user(settings: Settings, name: str) -> str:
    db = Database(create_engine(settings.resolved_database_url))
    try:
        async with db.write() as conn:
            return await session_repository.get_or_create_user(
                conn, name, now_ms=int(time.time() * 1000)
            )
    finally:
        await db.dispose()


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="TCP port."),
    demo: bool = typer.Option(False, help="Also create a demo user and simulate sessions."),
) -> None:
    """Run the HTTP + Socket.IO server (applies migrations first)."""
    from vitalcast.app import create_app

    settings = Settings()
    configure_logging(settings.log_level)
    upgrade(settings.resolved_database_url)
    application = create_app(settings)
    if demo:
        from vitalcast.demo import attach_demo

        attach_demo(application, settings, host=host, port=port)
    uvicorn.run(application, host=host, port=port, log_config=None, access_log=False)


def main() -> None:
    app()
