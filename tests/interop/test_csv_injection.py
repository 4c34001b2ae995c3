"""CSV formula injection: text cells that a spreadsheet would run as a formula are written
inert (a leading ``'``, as OWASP describes) in every CSV the product writes, while numeric
cells are untouched, so a negative number stays a number."""

from __future__ import annotations

import csv
import io

from tests.interop.test_exports_api import MINUTE, sample
from vitalcast.clock import iso_ms, now_ms
from vitalcast.interop.csv_export import SAMPLE_COLUMNS, samples_csv, text_cell
from vitalcast.samples import Sample

HOSTILE_DEVICES = {
    "eq": '=HYPERLINK("http://evil","x")',
    "plus": "+1+cmd|' /C calc'!A0",
    "minus": "-2+3",
    "at": "@SUM(A1:A9)",
    "tab": "\t=1",
    "cr": "\r=1",
    "plain": "Watch (6,2)",
}


async def test_exported_text_cells_cannot_start_a_formula(client, users):
    """Devices, sources and record ids sent through the ingest API come back in export.csv
    with a leading quote when they begin with = + - @ tab or CR; ordinary text is unchanged."""
    headers = await users.headers("clinician-patient")
    start_ms = (now_ms() // MINUTE - 60) * MINUTE
    created = await client.post(
        "/api/v1/sessions", json={"started_at": iso_ms(start_ms)}, headers=headers
    )
    session_id = created.json()["id"]
    samples = [
        sample("heart_rate", f"@{name}", start_ms + i * 1000, 70, device=device)
        for i, (name, device) in enumerate(HOSTILE_DEVICES.items())
    ]
    samples[0]["source"] = "=cmd"
    response = await client.post("/api/v1/samples", json={"samples": samples}, headers=headers)
    assert response.status_code == 200, response.text
    await client.post(
        f"/api/v1/sessions/{session_id}/end",
        json={"ended_at": iso_ms(start_ms + 30 * MINUTE)},
        headers=headers,
    )
    exported = await client.get(f"/api/v1/sessions/{session_id}/export.csv", headers=headers)
    assert exported.status_code == 200
    rows = {r["record_id"]: r for r in csv.DictReader(io.StringIO(exported.text, newline=""))}
    assert set(rows) == {f"'@{name}" for name in HOSTILE_DEVICES}
    for name, device in HOSTILE_DEVICES.items():
        row = rows[f"'@{name}"]
        expected = device if name == "plain" else "'" + device
        assert row["device"] == expected
        assert row["value"] == "70.0"
    assert rows["'@eq"]["source"] == "'=cmd"
    assert rows["'@plain"]["source"] == "healthkit"
    for row in rows.values():
        for cell in row.values():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))


async def test_numeric_cells_stay_numbers_even_when_negative():
    """The neutralising applies to text columns only: a negative value and negative epoch
    milliseconds are written as the numbers they are."""
    raw = Sample("=src", "-id", "-metric", -3.5, "+unit", -1_000, -500, "@dev")

    async def partitions():
        yield [raw]

    text = b"".join([chunk async for chunk in samples_csv(partitions())]).decode()
    header, row = csv.reader(io.StringIO(text, newline=""))
    assert tuple(header) == SAMPLE_COLUMNS
    cells = dict(zip(header, row, strict=True))
    assert (cells["value"], cells["start_ms"], cells["end_ms"]) == ("-3.5", "-1000", "-500")
    assert (cells["source"], cells["record_id"], cells["metric"]) == ("'=src", "'-id", "'-metric")
    assert (cells["unit"], cells["device"]) == ("'+unit", "'@dev")
    assert text_cell("a=b") == "a=b"
