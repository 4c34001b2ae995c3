"""A missing service or program skips a test locally and fails it in CI, never skips it there.

The tests run pytest in a subprocess on a small test file that looks for ``redis-server`` and
PostgreSQL's server programs the way the fixtures do (``tests/services.py``), with PATH emptied
and the Debian program folders pointed at an empty directory, so that nothing can be found.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: JUnit XML child element of a test case → pytest outcome
OUTCOMES = (("failure", "failed"), ("error", "error"), ("skipped", "skipped"))

PROBE = """
from tests.services import executable, postgres_bin_dir


def test_redis_server():
    executable("redis-server")


def test_postgres_server_programs():
    postgres_bin_dir(installed={installed!r})
"""


def run_probe(tmp_path: Path, *, require: bool) -> dict[str, str]:
    """Outcome (passed, skipped, failed) of each probe test, by test name."""
    empty = tmp_path / "empty"
    empty.mkdir()
    probe = tmp_path / "test_probe.py"
    probe.write_text(PROBE.format(installed=str(empty / "*" / "bin")))
    report = tmp_path / "report.xml"
    env = {k: v for k, v in os.environ.items() if k != "VITALCAST_REQUIRE_SERVICES"}
    # No plugin autoloading: the probe needs none of them, and loading them (schemathesis,
    # hypothesis, …) cost seconds of CPU per run.
    env |= {"PATH": str(empty), "PYTHONPATH": str(REPO), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    if require:
        env["VITALCAST_REQUIRE_SERVICES"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(probe),
         f"--junitxml={report}", f"--rootdir={tmp_path}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        tags = {child.tag for child in case}
        outcome = next((o for tag, o in OUTCOMES if tag in tags), "passed")
        outcomes[case.get("name", "")] = outcome
    assert done.returncode == (1 if require else 0), done.stdout + done.stderr
    return outcomes


def test_missing_programs_fail_when_services_are_required(tmp_path: Path) -> None:
    """With VITALCAST_REQUIRE_SERVICES=1 a missing redis-server or PostgreSQL fails the test."""
    assert run_probe(tmp_path, require=True) == {
        "test_redis_server": "failed",
        "test_postgres_server_programs": "failed",
    }


def test_missing_programs_skip_without_the_requirement(tmp_path: Path) -> None:
    """On a developer machine without them, the same tests are skipped (and say why)."""
    assert run_probe(tmp_path, require=False) == {
        "test_redis_server": "skipped",
        "test_postgres_server_programs": "skipped",
    }
