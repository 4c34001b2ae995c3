"""Schemathesis fuzzing of every operation in the served OpenAPI schema, with a valid token, against
a running ``vitalcast serve`` on PostgreSQL (the stricter backend: its text type refuses NUL
bytes, its integers overflow at 2^63).

The run is the ``schemathesis run`` command as a user would type it: examples, coverage (boundary
and type-violating values) and fuzzing phases, every built-in check plus the error contract of
``fuzz_hooks.py``, and a fixed seed so that a CI failure reproduces. Path ids are drawn from the
caller's real sessions (active, ended, with samples), another user's session and random UUIDs.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import PG_ADMIN_URL, TEST_SECRET, _pg_admin_sync, in_thread
from tests.ingest.helpers import MINUTE_MS, hr, iso, now_ms
from tests.processes import ServerProcess, serve_subprocess, vitalcast_env
from tests.services import service_missing
from vitalcast.auth import issue_token
from vitalcast.db.engine import Database, create_engine
from vitalcast.db.migrate import upgrade
from vitalcast.sessions import repository as session_repository

MAX_EXAMPLES = 30
#: the unknown user's run: every answer is a 401 decided before any input is read, so its
#: random phase needs fewer examples per operation; the coverage phase's boundary and
#: type-violating values (about 900 requests) are all sent whatever this is
UNKNOWN_USER_MAX_EXAMPLES = 10
SEED = 7
# A 4xx that a schema-violating request may rightly get (413: more than 5,000 samples).
REJECTIONS = [400, 401, 404, 405, 406, 409, 413, 415, 422, 428, 429]

CONFIG = """
[dictionaries.sessions]
values = [{ids}]

[dictionaries.doomed]
values = [{doomed}]

[parameters]
"path.session_id" = {{ dictionary = "sessions", probability = 0.8 }}

[checks.negative_data_rejection]
expected-statuses = {rejections}

# Rules no static schema can state, so a schema-valid request may still be a 422: a cursor is
# opaque (only the ones the server issued are valid) and a session time may not lie in the
# future of the server's clock (FUTURE_TIMESTAMP).
[[operations]]
include-name = "GET /api/v1/sessions"
checks.positive_data_acceptance.expected-statuses = [200, 422]

[[operations]]
include-name = "POST /api/v1/sessions"
checks.positive_data_acceptance.expected-statuses = [200, 201, 422]

[[operations]]
include-name = "POST /api/v1/sessions/{{session_id}}/end"
checks.positive_data_acceptance.expected-statuses = [200, 404, 409, 422]

# Erasing runs with the token of a user of its own (the run's user must outlive it); once
# erased, that token is refused.
[[operations]]
include-name = "DELETE /api/v1/me"
headers = {{ Authorization = "Bearer {doomed_token}" }}
checks.positive_data_acceptance.expected-statuses = [202, 401]

# A range must not be empty (to after from) and may not end in the server's future.
[[operations]]
include-name = "POST /api/v1/samples/delete"
checks.positive_data_acceptance.expected-statuses = [200, 422]

# Deleting draws from sessions of its own (and the stranger's), so the other operations keep
# theirs; a session deleted once is a 404 afterwards.
[[operations]]
include-name = "DELETE /api/v1/sessions/{{session_id}}"
parameters = {{ "path.session_id" = {{ dictionary = "doomed", probability = 0.8 }} }}
checks.positive_data_acceptance.expected-statuses = [204, 404]

# A webhook URL must resolve to a public address when it is registered (DNS, SSRF rules).
[[operations]]
include-name = "POST /api/v1/webhooks"
checks.positive_data_acceptance.expected-statuses = [201, 409, 422]
"""


async def _users(url: str) -> list[str]:
    db = Database(create_engine(url))
    try:
        async with db.write() as conn:
            return [
                await session_repository.get_or_create_user(conn, name, now_ms=0)
                for name in ("fuzzer", "stranger", "erased")
            ]
    finally:
        await db.dispose()


def _seed(base: str, owner: dict[str, str], stranger: dict[str, str]) -> list[str]:
    """The owner's sessions (live, ended with samples) and one of the stranger's; then three
    more of the owner's for the deleting operations alone."""
    with httpx.Client(base_url=base, timeout=10) as client:
        t0 = now_ms() - 3 * 60 * MINUTE_MS
        ended = client.post("/api/v1/sessions", json={"started_at": iso(t0)}, headers=owner)
        ended_id = ended.json()["id"]
        samples = [hr(f"f{i}", t0 + i * MINUTE_MS, value=60 + i % 30) for i in range(120)]
        assert client.post("/api/v1/samples", json={"samples": samples}, headers=owner).is_success
        end = client.post(
            f"/api/v1/sessions/{ended_id}/end",
            json={"ended_at": iso(t0 + 90 * MINUTE_MS)},
            headers=owner,
        )
        assert end.status_code == 200
        live_id = client.post("/api/v1/sessions", json={}, headers=owner).json()["id"]
        theirs = client.post("/api/v1/sessions", json={}, headers=stranger).json()["id"]
        doomed = [
            client.post("/api/v1/sessions", json={}, headers=owner).json()["id"] for _ in range(3)
        ]
    return [ended_id, live_id, theirs, *doomed]


@pytest.fixture(scope="module")
def fuzz_database() -> Iterator[str]:
    """A fresh migrated PostgreSQL database of this module, dropped afterwards."""
    name = f"vc_fuzz_{uuid.uuid4().hex[:10]}"
    try:
        in_thread(_pg_admin_sync, f'CREATE DATABASE "{name}"')
    except Exception:
        service_missing("PostgreSQL")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        in_thread(upgrade, url)
        yield url
    finally:
        in_thread(_pg_admin_sync, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _schemathesis(
    base: str,
    token: str,
    config: Path,
    hook_env: dict[str, str],
    *,
    exclude_checks: str = "",
    max_examples: int = MAX_EXAMPLES,
) -> subprocess.CompletedProcess[str]:
    """``schemathesis run`` on the server's schema with this token, as a user would type it:
    every check (the hooks' custom ones run only with ``all``) but ``exclude_checks``."""
    return subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "--config-file",
            str(config),
            "run",
            f"{base}/openapi.json",
            "--header",
            f"Authorization: Bearer {token}",
            "--checks",
            "all",
            *(["--exclude-checks", exclude_checks] if exclude_checks else []),
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            str(max_examples),
            "--seed",
            str(SEED),
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--no-color",
        ],
        env=os.environ | {"SCHEMATHESIS_HOOKS": "tests.hardening.fuzz_hooks"} | hook_env,
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _assert_every_operation_passed(run: subprocess.CompletedProcess[str], server_log: str) -> None:
    report = run.stdout[-20_000:] + run.stderr[-5_000:]
    assert run.returncode == 0, report + "\n--- server log ---\n" + server_log[-5_000:]
    selected = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", run.stdout)
    assert selected is not None, report
    assert selected.group(1) == selected.group(2) == selected.group(3), "every operation fuzzed"
    assert "Traceback" not in server_log


def _fuzz_env(tmp_path: Path, database_url: str) -> dict[str, str]:
    return vitalcast_env(
        tmp_path / "data",
        log_level="warning",
        database_url=database_url,
        rate_limit_ingest="100000/minute",
        rate_limit_telemetry="100000/minute",
    )


@pytest.fixture(scope="module")
def fuzz_server(
    fuzz_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One ``vitalcast serve`` on the module's database for both runs: the unknown user's run
    changes nothing, so the order of the two does not matter."""
    folder = tmp_path_factory.mktemp("fuzz-server")
    with serve_subprocess(_fuzz_env(folder, fuzz_database), folder / "server.log") as server:
        yield server


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_only_problem_errors(
    fuzz_database, fuzz_server, tmp_path
):
    """Every operation, fuzzed with valid and invalid inputs and a valid token: no 5xx, every
    4xx a problem+json with a stable code, statuses/types/schemas as documented, nosniff on
    every answer, and another user's session never answered with anything but 404."""
    now_s = int(time.time())
    owner_id, stranger_id, erased_id = in_thread(asyncio.run, _users(fuzz_database))
    token = issue_token(TEST_SECRET, owner_id, now_s=now_s, ttl_s=3600)
    doomed_token = issue_token(TEST_SECRET, erased_id, now_s=now_s, ttl_s=3600)
    owner = {"Authorization": f"Bearer {token}"}
    stranger = {
        "Authorization": f"Bearer {issue_token(TEST_SECRET, stranger_id, now_s=now_s, ttl_s=3600)}"
    }
    server = fuzz_server
    ids = _seed(server.url, owner, stranger)
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        CONFIG.format(
            ids=", ".join(f'"{i}"' for i in ids[:3]),
            doomed=", ".join(f'"{i}"' for i in ids[2:]),
            doomed_token=doomed_token,
            rejections=REJECTIONS,
        )
    )
    run = _schemathesis(server.url, token, config, {"VITALCAST_FUZZ_STRANGER_SESSION": ids[2]})
    server_log = server.log()
    _assert_every_operation_passed(run, server_log)


@pytest.mark.slow
def test_schemathesis_with_an_unknown_users_token_gets_401_everywhere(fuzz_server, tmp_path):
    """A well-signed token of a user the database does not hold, on every operation with valid
    and invalid inputs: every /api answer is 401 TOKEN_INVALID (never a 422 from a body read
    before authentication, never a 500), every answer carries nosniff and is problem+json."""
    now_s = int(time.time())
    unknown = issue_token(TEST_SECRET, str(uuid.uuid4()), now_s=now_s, ttl_s=3600)
    server = fuzz_server
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        CONFIG.format(
            ids=f'"{uuid.uuid4()}"',
            doomed=f'"{uuid.uuid4()}"',
            doomed_token=unknown,
            rejections=REJECTIONS,
        )
    )
    # An undeclared method is a 401 too, not the 405 that would tell a stranger the path
    # exists; and nothing is ever accepted.
    run = _schemathesis(
        server.url,
        unknown,
        config,
        {"VITALCAST_FUZZ_REFUSED_WITH": "TOKEN_INVALID"},
        exclude_checks="unsupported_method,positive_data_acceptance",
        max_examples=UNKNOWN_USER_MAX_EXAMPLES,
    )
    server_log = server.log()
    _assert_every_operation_passed(run, server_log)
