"""How logs look: for a person on a terminal (structlog's console renderer), JSON lines when
stderr is not a terminal or when VITALCAST_LOG_FORMAT=json; other libraries' lines (uvicorn's)
in the same format; redaction in both."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys

# Logs one event of ours (with a field that must be redacted) and one of uvicorn's.
_EMIT = """
import logging, sys
from vitalcast.observability import configure_logging, get_logger
configure_logging("info", sys.argv[1])
get_logger("test").info("session_opened", session_id="s-1", token="secret-token")
logging.getLogger("uvicorn.error").info("Uvicorn running on %s", "http://127.0.0.1:1")
get_logger("test").debug("routine_detail")
# a WebSocket's handshake, opening and closing: routine, so debug
logging.getLogger("uvicorn.error").info('%s - "WebSocket %s" [accepted]', "127.0.0.1:2", "/ws")
logging.getLogger("uvicorn.error").info("connection open")
logging.getLogger("uvicorn.error").info("connection closed")
"""
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _stderr_of(log_format: str, *, terminal: bool) -> list[str]:
    """The lines the snippet writes to stderr, a pseudo-terminal's or a pipe's."""
    command = [sys.executable, "-c", _EMIT, log_format]
    if not terminal:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
        return done.stderr.splitlines()
    leader, follower = pty.openpty()
    try:
        subprocess.run(command, stderr=follower, stdout=subprocess.DEVNULL, timeout=60, check=True)
    finally:
        os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the terminal's other side is closed and drained
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return _ANSI.sub("", b"".join(chunks).decode()).splitlines()


def _json_lines(lines: list[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in lines]


def test_a_pipe_gets_json_lines_from_every_logger():
    """Not a terminal: each line is one JSON object, uvicorn's too; debug stays out, and so do
    uvicorn's per-connection lines."""
    ours, uvicorn = _json_lines(_stderr_of("auto", terminal=False))
    assert (ours["event"], ours["level"], ours["session_id"]) == ("session_opened", "info", "s-1")
    assert ours["token"] == "[redacted]"
    assert (uvicorn["event"], uvicorn["level"]) == ("Uvicorn running on http://127.0.0.1:1", "info")


def test_a_terminal_gets_lines_a_person_reads():
    """On a terminal: time, level, event and key=value fields, not JSON; still redacted."""
    lines = _stderr_of("auto", terminal=True)
    assert len(lines) == 2, lines
    for line in lines:
        assert not line.lstrip().startswith("{"), line
    ours, uvicorn = lines
    assert re.match(
        r"\d\d:\d\d:\d\d \[info\s*\] session_opened\s+session_id=s-1 token=\[redacted\]", ours
    ), ours
    assert "secret-token" not in ours
    assert re.match(r"\d\d:\d\d:\d\d \[info\s*\] Uvicorn running on http://127\.0\.0\.1:1", uvicorn)


def test_json_on_a_terminal_when_asked():
    """VITALCAST_LOG_FORMAT=json: JSON lines even on a terminal (a shipper reading a pty)."""
    events = _json_lines(_stderr_of("json", terminal=True))
    assert [event["event"] for event in events] == [
        "session_opened",
        "Uvicorn running on http://127.0.0.1:1",
    ]


# Logging configured while stderr was another stream (as under pytest's capture), which is
# closed before the next line: the line goes to the stderr of that moment.
_SWAPPED = """
import io, sys
from vitalcast.observability import configure_logging, get_logger
real, sys.stderr = sys.stderr, io.StringIO()
configure_logging("info", "json")
sys.stderr.close()
sys.stderr = real
get_logger("test").info("after_the_swap")
"""


def test_lines_go_to_the_stderr_of_the_moment_not_a_closed_one() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _SWAPPED], capture_output=True, text=True, timeout=60, check=True
    )
    assert "Logging error" not in done.stderr
    assert [json.loads(line)["event"] for line in done.stderr.splitlines()] == ["after_the_swap"]
