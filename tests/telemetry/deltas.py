"""The receiving side of a telemetry delta is the dashboard's own ``static/deltas.js``, run by
node (``deltas.mjs`` beside this file): the tests check that what the server sends rebuilds the
payload it holds in the code the browser runs, not in a copy of it. One node process answers
every call of a test module."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from tests.services import executable

SCRIPT = Path(__file__).with_name("deltas.mjs")

#: what the ``apply_delta`` fixture gives: (base payload, delta) → payload
ApplyDelta = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]


class NodeDeltas:
    """A node process applying deltas, one JSON line each way."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [executable("node"), str(SCRIPT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )

    def apply(self, base: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
        """``base`` brought to the delta's payload; AssertionError when it is not its base."""
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        stdin.write(orjson.dumps({"base": base, "delta": delta}) + b"\n")
        stdin.flush()
        line = stdout.readline()
        assert line, f"deltas.mjs exited with {self.process.wait()}"
        payload = orjson.loads(line)
        assert payload is not None, ("not the delta's base", delta["base_watermark"])
        assert isinstance(payload, dict)
        return payload

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=10)
