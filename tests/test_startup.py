"""Start-up, counted in modules rather than seconds: importing the CLI, or running a command that
needs no server, loads no web server, app, queue or migration library (each costs a large share
of a second; every CLI call and every process a test spawns would pay for it)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from tests.processes import run_cli, vitalcast_env
from vitalcast.db.migrate import alembic_config, database_revision, head_revision

#: what only `serve`, `worker` or a migration needs, and structlog (it imports rich), which
#: only commands that log set up
HEAVY = ("alembic", "uvicorn", "fastapi", "socketio", "bullmq", "vitalcast.app", "structlog")

# Runs the CLI in this interpreter (argv after -c), then names the HEAVY modules it loaded.
_RUN_AND_REPORT = """
import json, sys
from vitalcast.cli import app
try:
    app(sys.argv[2:], prog_name="vitalcast")
except SystemExit as exit:
    code = exit.code
heavy = json.loads(sys.argv[1])
print(json.dumps(sorted(m for m in heavy if m in sys.modules)), file=sys.stderr)
sys.exit(code)
"""


def _loaded(
    args: list[str], env: dict[str, str], modules: tuple[str, ...] = HEAVY
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", _RUN_AND_REPORT, json.dumps(modules), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done, json.loads(done.stderr.strip().splitlines()[-1])


def test_importing_the_cli_loads_no_server_queue_or_migration_library(tmp_path: Path) -> None:
    """A fresh interpreter that imports ``vitalcast.cli`` holds none of them afterwards."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys, vitalcast.cli; print([m for m in {HEAVY!r} if m in sys.modules])",
        ],
        env=vitalcast_env(tmp_path / "data"),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.strip() == "[]"


def test_token_create_on_a_current_database_loads_none_of_them(tmp_path: Path) -> None:
    """With the schema at head, ``token create`` reads the revision and runs no migration: it
    prints a token, and neither Alembic nor structlog is imported."""
    env = vitalcast_env(tmp_path / "data")
    run_cli(["db", "upgrade"], env).check_returncode()
    done, heavy = _loaded(["token", "create", "alice"], env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(".") == 2  # a JWT and nothing else
    assert heavy == []


def test_an_embedded_import_loads_no_socketio_and_no_token_verification(tmp_path: Path) -> None:
    """An import into the embedded database builds no server and no worker: Socket.IO (with
    aiohttp) and PyJWT, 0.2 s of CPU at every such command's start, stay unloaded."""
    env = vitalcast_env(tmp_path / "data")
    export = tmp_path / "export.xml"
    export.write_text('<?xml version="1.0"?>\n<HealthData locale="en_US">\n</HealthData>\n')
    args = ["import", "apple-health", str(export), "--user", "alice"]
    done, loaded = _loaded(args, env, modules=("socketio", "jwt", "vitalcast.wiring"))
    assert done.returncode == 0, done.stderr
    assert loaded == ["vitalcast.wiring"]


def test_token_create_migrates_a_new_database_first(tmp_path: Path) -> None:
    """On a database never migrated it runs the migrations (and so imports Alembic), then
    issues the token."""
    env = vitalcast_env(tmp_path / "data")
    done, heavy = _loaded(["token", "create", "alice"], env)
    assert done.returncode == 0, done.stderr
    assert heavy == ["alembic"]
    url = f"sqlite+aiosqlite:///{tmp_path / 'data' / 'vitalcast.db'}"
    assert asyncio.run(database_revision(url)) == head_revision() is not None


def test_the_head_revision_read_without_alembic_is_alembics() -> None:
    """``head_revision`` parses the revision files; Alembic's own script directory agrees."""
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert head_revision() == scripts.get_current_head()


def test_a_server_settles_the_garbage_collector_before_serving() -> None:
    """What ``serve`` loaded before it serves is frozen out of the collector's full scans, and
    the youngest generation is collected every GC_YOUNG_THRESHOLD allocations (a full
    collection stopped a loaded server's event loop for up to 0.6 s)."""
    script = (
        "import gc, json; from vitalcast import cli; before = gc.get_freeze_count(); "
        "cli._settle_garbage_collector(); "
        "print(json.dumps([before, gc.get_freeze_count(), gc.get_threshold()[0]]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    before, frozen, young = json.loads(done.stdout)
    from vitalcast.cli import GC_YOUNG_THRESHOLD

    assert before == 0 and frozen > 10_000 and young == GC_YOUNG_THRESHOLD
