"""The programs and services the tests need, and the one rule for a missing one: skipped on a
developer machine, a failure under ``VITALCAST_REQUIRE_SERVICES=1`` (CI), so that CI can never
turn green by skipping. A module of its own, light to import: ``test_service_missing`` runs it
in a subprocess, which importing the whole ``conftest`` (the app and its dependencies) made
seconds slower."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest

REQUIRE_SERVICES = os.environ.get("VITALCAST_REQUIRE_SERVICES") == "1"
#: where Debian and Ubuntu install each PostgreSQL major version's server programs
DEBIAN_PG_BIN_DIRS = "/usr/lib/postgresql/*/bin"
#: what a private PostgreSQL cluster needs (``tests/hardening``)
PG_SERVER_PROGRAMS = ("initdb", "pg_ctl", "psql")


def service_missing(what: str) -> NoReturn:
    """Skip the test, or fail it under VITALCAST_REQUIRE_SERVICES=1: every test that cannot run
    for want of a service or a program comes here, and nowhere else decides."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{what} is required (VITALCAST_REQUIRE_SERVICES=1) but missing")
    pytest.skip(f"{what} missing")


def executable(name: str) -> str:
    """The full path of program ``name`` on PATH (``service_missing`` when there is none)."""
    found = shutil.which(name)
    if found is None:
        service_missing(f"program {name!r} (not on PATH)")
    return found


def postgres_bin_dir(installed: str = DEBIAN_PG_BIN_DIRS) -> Path:
    """The folder of PostgreSQL's server programs, whatever the installed version: the one
    ``pg_config --bindir`` names, else the one ``initdb`` on PATH lives in, else the newest
    version among the folders matching ``installed``. ``service_missing`` when no candidate holds
    initdb, pg_ctl and psql."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        done = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if done.returncode == 0 and done.stdout.strip():
            candidates.append(Path(done.stdout.strip()))
    initdb = shutil.which("initdb")
    if initdb is not None:
        candidates.append(Path(initdb).resolve().parent)
    candidates += sorted(map(Path, glob.glob(installed)), key=_version_key, reverse=True)
    for folder in candidates:
        if all((folder / program).is_file() for program in PG_SERVER_PROGRAMS):
            return folder
    service_missing(
        f"PostgreSQL server programs {', '.join(PG_SERVER_PROGRAMS)} "
        f"(pg_config --bindir, PATH, {installed})"
    )


def _version_key(folder: Path) -> tuple[int, ...]:
    """(16,) for .../postgresql/16/bin, so that 16 sorts above 9.6 and 15."""
    return tuple(int(n) for n in re.findall(r"\d+", folder.parent.name))
