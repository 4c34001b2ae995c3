"""HTTP, metrics and worker-process helpers for the scaled-out queue tests (servers and workers
run as real ``python -m vitalcast`` subprocesses, see ``tests.processes``)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.processes import (
    BIND_ATTEMPTS,
    CLIENT_TLS,
    Child,
    entry_point,
    free_port,
    log_since,
    log_size,
    port_taken,
    spawn,
)

#: the start and stop bounds of the queue's servers and workers (longer than the defaults of
#: ``tests.processes``; these tests were written against them)
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0
#: how soon an idle worker must start a new job (job added → processing). The bug this guards
#: against left an idle worker deaf until a 5 s socket timeout or for minutes; below 5 s it is
#: caught, and a loaded CI machine still gets seconds, not the sub-second of a quiet one.
IDLE_PICKUP_BOUND_MS = 4_000


class Api:
    """The public HTTP API of one server, as one user."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self._headers = {"Authorization": f"Bearer {token}"}

    async def create_session(self, **body: Any) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.url, verify=CLIENT_TLS) as http:
            response = await http.post("/api/v1/sessions", json=body, headers=self._headers)
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def end_session(self, session_id: str, **body: Any) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.url, verify=CLIENT_TLS) as http:
            response = await http.post(
                f"/api/v1/sessions/{session_id}/end", json=body, headers=self._headers
            )
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def ingest(
        self, samples: list[dict[str, Any]], http: httpx.AsyncClient | None = None
    ) -> int:
        """POST the samples; the user's change_seq after it."""
        async with contextlib.AsyncExitStack() as stack:
            client = http or await stack.enter_async_context(
                httpx.AsyncClient(base_url=self.url, verify=CLIENT_TLS)
            )
            response = await client.post(
                f"{self.url}/api/v1/samples", json={"samples": samples}, headers=self._headers
            )
        assert response.status_code == 200, response.text
        return int(response.json()["change_seq"])

    async def telemetry(self, session_id: str, **params: Any) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.url, verify=CLIENT_TLS) as http:
            return await http.get(
                f"/api/v1/sessions/{session_id}/telemetry", params=params, headers=self._headers
            )

    async def wait_state(
        self,
        session_id: str,
        state: str,
        *,
        watermark: int | None = None,
        timeout_s: float = 60,
        **params: Any,
    ) -> dict[str, Any]:
        """Poll the telemetry GET until it answers ``state`` (at ``watermark`` when given)."""
        deadline = time.monotonic() + timeout_s
        while True:
            response = await self.telemetry(session_id, **params)
            assert response.status_code < 500, response.text
            body = dict(response.json())
            payload = body.get("telemetry") or {}
            if body["state"] == state and (
                watermark is None or payload.get("source_watermark") == watermark
            ):
                return body
            assert time.monotonic() < deadline, body
            await asyncio.sleep(0.1)


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` in Prometheus text whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        metric, _, label_text = series.partition("{")
        if metric != name:
            continue
        if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            total += float(value)
    return total


async def scrape(url: str) -> str:
    async with httpx.AsyncClient(verify=CLIENT_TLS) as http:
        return (await http.get(f"{url}/metrics")).text


async def computes(url: str) -> float:
    """Computes that ran in the process behind ``url`` (every outcome)."""
    return metric_sum(await scrape(url), "vitalcast_computes_total")


@dataclass
class WorkerProcess(Child):
    """One ``vitalcast worker`` subprocess with its /metrics port."""

    metrics_url: str = ""

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)


@contextlib.contextmanager
def worker_subprocess(
    env: dict[str, str],
    log_path: Path,
    *args: str,
    hold_ms: int | None = None,
    hold_until: Path | None = None,
    clock_file: Path | None = None,
) -> Iterator[WorkerProcess]:
    """``vitalcast worker`` consuming the env's queue, started (``worker_started`` logged); with
    ``hold_ms`` every compute first holds its lease that long, with ``hold_until`` until that
    file exists (``tests.held_worker``); with ``clock_file`` it runs on the test-set clock
    (``tests.stepped_clock``). It logs at debug (unless the env asks for warning or above):
    the tests read each job's ``job_done`` line."""
    if env.get("VITALCAST_LOG_LEVEL", "info") == "info":
        env = env | {"VITALCAST_LOG_LEVEL": "debug"}
    with contextlib.ExitStack() as stack:
        for attempt in range(1, BIND_ATTEMPTS + 1):
            port = free_port()
            options = ["--metrics-port", str(port), *args]
            if hold_ms is None and hold_until is None:
                command, module = entry_point(["worker", *options], clock_file)
            else:
                gate = [] if hold_until is None else ["--until", str(hold_until)]
                command, module = [str(hold_ms or 0), *gate, *options], "tests.held_worker"
            offset = log_size(log_path)
            child = stack.enter_context(
                spawn(command, env, log_path, stop_timeout_s=STOP_TIMEOUT_S, module=module)
            )
            worker = WorkerProcess(child.process, log_path, f"http://127.0.0.1:{port}")
            if wait_started(worker, offset):
                break
            if attempt == BIND_ATTEMPTS or not port_taken(worker, offset):
                raise RuntimeError(f"worker did not start:\n{worker.log()}")
        yield worker


def wait_started(worker: WorkerProcess, log_offset: int) -> bool:
    """Until the worker logs ``worker_started`` (True), exits or runs out of START_TIMEOUT_S
    (False)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while "worker_started" not in log_since(worker.log_path, log_offset):
        if worker.process.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
