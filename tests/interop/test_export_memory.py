"""A 24-hour session exports with flat server memory: the CSV and the FHIR bundle are streamed
from a server-side cursor, so the server's resident memory does not grow with the download
(which is tens of MB). Real server subprocess, both databases."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.accounts import new_user
from tests.bulk import insert_records
from tests.processes import serve_subprocess, vitalcast_env
from vitalcast.clock import iso_ms, now_ms
from vitalcast.db.tables import health_samples

pytestmark = pytest.mark.slow

HOUR = 3_600_000
# heart rate, active energy and steps at 1 Hz over the session and its ±1 h window
METRICS = (
    ("heart_rate", 72.0, "bpm"),
    ("active_energy_burned", 0.02, "kcal"),
    ("steps", 1.0, "count"),
)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


COLUMNS = (
    "user_id", "source", "record_id", "metric", "value", "unit", "start_ms", "end_ms", "device",
    "deleted", "change_seq",
)  # fmt: skip


async def load_day(database_url: str, user_id: str, start_ms: int, end_ms: int) -> int:
    """Every metric of ``METRICS`` at 1 Hz from ``start_ms`` to ``end_ms`` (a bulk load)."""
    device = "Apple Watch (Watch6,2)"
    batches = (
        [
            (user_id, "watch", f"{metric}-{t}", metric, value, unit, t, t, device, False, 1)
            for t in range(start_ms, end_ms, 1000)
        ]
        for metric, value, unit in METRICS
    )
    return await insert_records(database_url, health_samples, COLUMNS, batches)


@pytest.mark.parametrize("what", ["export.csv", "fhir"])
def test_a_24_hour_session_streams_with_flat_server_memory(tmp_path, database_url, what):
    user_id, token = asyncio.run(new_user(database_url, "marathon"))
    headers = {"Authorization": f"Bearer {token}"}
    end_ms = (now_ms() // 60_000) * 60_000 - 2 * HOUR
    start_ms = end_ms - 24 * HOUR
    rows = asyncio.run(load_day(database_url, user_id, start_ms - HOUR, end_ms + HOUR))
    env = vitalcast_env(tmp_path / "data", database_url=database_url, log_level="warning")
    with (
        serve_subprocess(env, tmp_path / "server.log") as server,
        httpx.Client(base_url=server.url, headers=headers, timeout=120) as http,
    ):
        session = http.post("/api/v1/sessions", json={"started_at": iso_ms(start_ms)}).json()
        http.post(f"/api/v1/sessions/{session['id']}/end", json={"ended_at": iso_ms(end_ms)})
        url = f"/api/v1/sessions/{session['id']}/{what}"
        # Warm the code path (imports, pools) on a tiny window of another session.
        small = http.post("/api/v1/sessions", json={"started_at": iso_ms(end_ms)}).json()
        http.post(f"/api/v1/sessions/{small['id']}/end", json={"ended_at": iso_ms(end_ms)})
        assert http.get(f"/api/v1/sessions/{small['id']}/{what}?window_minutes=15").is_success
        baseline = rss_mb(server.process.pid)
        peak = baseline
        size = 0
        lines = 0
        with http.stream("GET", url) as response:
            assert response.status_code == 200
            for chunk in response.iter_bytes():
                size += len(chunk)
                lines += chunk.count(b"\n")
                peak = max(peak, rss_mb(server.process.pid))
    assert rows == 3 * 26 * 3600
    if what == "export.csv":
        assert lines == rows + 1
    assert size > 40 * 1024 * 1024
    # Holding the rows or the body would cost more than the body's size.
    assert peak - baseline < 30, (baseline, peak, size)
