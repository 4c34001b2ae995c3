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


#: hours of the day the FHIR bundle covers: about 770 bytes per sample, 6 h and the ±1 h pad
#: stream 66 MB, twice the memory bound and more (the whole day, 216 MB, cost 7 s of CPU more)
FHIR_HOURS = 6


def test_a_24_hour_session_streams_with_flat_server_memory(tmp_path, database_url):
    """The CSV of a 24-hour session (three metrics at 1 Hz, 47 MB), then the FHIR bundle of the
    last 6 hours of the same samples (66 MB), stream while the server's resident memory grows by
    less than 30 MB during each download. One load and one server serve both formats."""
    user_id, token = asyncio.run(new_user(database_url, "marathon"))
    headers = {"Authorization": f"Bearer {token}"}
    end_ms = (now_ms() // 60_000) * 60_000 - 2 * HOUR
    start_ms = end_ms - 24 * HOUR
    rows = asyncio.run(load_day(database_url, user_id, start_ms - HOUR, end_ms + HOUR))
    assert rows == 3 * 26 * 3600
    env = vitalcast_env(tmp_path / "data", database_url=database_url, log_level="warning")
    measured: dict[str, tuple[float, float, int, int]] = {}
    with (
        serve_subprocess(env, tmp_path / "server.log") as server,
        httpx.Client(base_url=server.url, headers=headers, timeout=120) as http,
    ):
        exported = {}
        for what, started_ms in (("export.csv", start_ms), ("fhir", end_ms - FHIR_HOURS * HOUR)):
            session = http.post("/api/v1/sessions", json={"started_at": iso_ms(started_ms)}).json()
            http.post(f"/api/v1/sessions/{session['id']}/end", json={"ended_at": iso_ms(end_ms)})
            exported[what] = session["id"]
        # Warm the code paths (imports, pools) on a tiny window of another session.
        small = http.post("/api/v1/sessions", json={"started_at": iso_ms(end_ms)}).json()
        http.post(f"/api/v1/sessions/{small['id']}/end", json={"ended_at": iso_ms(end_ms)})
        for what in exported:
            warm = http.get(f"/api/v1/sessions/{small['id']}/{what}?window_minutes=15")
            assert warm.is_success, what
        for what, session_id in exported.items():
            baseline = rss_mb(server.process.pid)
            peak = baseline
            size = 0
            lines = 0
            with http.stream("GET", f"/api/v1/sessions/{session_id}/{what}") as response:
                assert response.status_code == 200, what
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    lines += chunk.count(b"\n")
                    peak = max(peak, rss_mb(server.process.pid))
            measured[what] = (baseline, peak, size, lines)
    assert measured["export.csv"][3] == rows + 1
    for what, (baseline, peak, size, _lines) in measured.items():
        assert size > 40 * 1024 * 1024, (what, size)
        # Holding the rows or the body would cost more than the body's size.
        assert peak - baseline < 30, (what, baseline, peak, size)
