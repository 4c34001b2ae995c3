"""``vitalcast simulate`` as a real subprocess against a real server."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow


def simulate(served, *args: str, output: Path) -> subprocess.Popen[bytes]:
    with output.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "vitalcast", "simulate", "--url", served.url, *args],
            env=served.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            # A background job inherits SIGINT ignored; Ctrl-C at a terminal would not be.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )


def sessions(served, token: str) -> list[dict]:
    response = httpx.get(
        f"{served.url}/api/v1/sessions", headers={"Authorization": f"Bearer {token}"}
    )
    return response.json()["items"]


def test_ctrl_c_ends_the_live_session_and_exits_cleanly(served, tmp_path):
    """With --token, simulate replays a past session, streams a live one with progress lines,
    and on Ctrl-C ends the live session, prints "stopped" and exits 130."""
    token = served.token("cli-sigint")
    output = tmp_path / "simulate.out"
    process = simulate(
        served,
        *("--token", token, "--past", "1", "--duration", "30", "--elapsed", "5"),
        *("--padding", "20", "--sync", "1", "--dropouts", "1", "--seed", "3"),
        output=output,
    )
    try:
        deadline = time.monotonic() + 60
        while output.read_text().count(" live ") < 2:
            assert process.poll() is None and time.monotonic() < deadline, output.read_text()
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 130
    finally:
        if process.poll() is None:
            process.kill()
    text = output.read_text()
    assert "stopped" in text and "Traceback" not in text
    assert " past " in text and "rejected 0" in text
    past, live = sorted(sessions(served, token), key=lambda s: s["start_ms"])
    assert past["status"] == "completed" and live["status"] == "completed"
    assert live["start_ms"] + 5 * 60_000 <= live["end_ms"] <= time.time() * 1000


def test_creates_its_own_users_when_given_no_token(served, tmp_path):
    """Without --token it creates --users users on the server's data dir and simulates each;
    the summary reports what every user sent and nothing was rejected."""
    output = tmp_path / "simulate.out"
    process = simulate(
        served,
        *("--users", "2", "--past", "1", "--no-live", "--duration", "20", "--padding", "15"),
        output=output,
    )
    assert process.wait(120) == 0, output.read_text()
    text = output.read_text()
    for name in ("sim-1", "sim-2"):
        summary = next(line for line in text.splitlines() if line.startswith(f"{name}: sent "))
        assert int(summary.split()[2]) > 300 and "rejected 0" in summary


def test_a_refused_token_is_a_short_error_not_a_traceback(served, tmp_path):
    """A token the server refuses ends simulate with exit 1 and the reason, without a traceback."""
    output = tmp_path / "simulate.out"
    process = simulate(served, "--token", "not-a-token", "--no-live", "--past", "1", output=output)
    assert process.wait(60) == 1
    text = output.read_text()
    assert "the server refused the simulation: HTTP 401 TOKEN_INVALID" in text
    assert "Traceback" not in text
