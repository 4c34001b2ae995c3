"""GET /api/v1/me/export: one zip with account.json, samples.csv and a FHIR bundle per session,
matching what the per-session exports give; nothing of another user."""

from __future__ import annotations

import csv
import io
import zipfile
from typing import Any

import orjson
from fhir.resources.R4B.bundle import Bundle

from tests.telemetry.conftest import MINUTE, TelemetryClient, hr


def _without_envelope(bundle: dict[str, Any]) -> dict[str, Any]:
    """A bundle without what differs between two exports of it (its own id and time)."""
    return {k: v for k, v in bundle.items() if k not in ("id", "timestamp")}


async def test_export_holds_account_samples_and_one_bundle_per_session(
    tc: TelemetryClient, users: Any
) -> None:
    user_id, token = await users.create("exported-person")
    _other, stranger = await users.create()
    auth = {"Authorization": f"Bearer {token}"}
    now = tc.clock.now_ms()
    first = await tc.start_session(auth, now - 120 * MINUTE)
    await tc.post_samples(
        auth, [hr(f"a{i}", now - (120 - i) * MINUTE, 60.0 + i) for i in range(40)]
    )
    await tc.end_session(auth, first, now - 80 * MINUTE)
    second = await tc.start_session(auth, now - 20 * MINUTE)
    await tc.post_samples(auth, [hr(f"b{i}", now - (20 - i) * MINUTE, 90.0 + i) for i in range(20)])
    await tc.post_samples(auth, deleted=[("polar", "b3")])
    await tc.post_samples(
        {"Authorization": f"Bearer {stranger}"}, [hr("theirs", now - 10 * MINUTE, 111.0)]
    )

    response = await tc.http.get("/api/v1/me/export", headers=auth)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    assert "attachment" in response.headers["content-disposition"]
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert archive.testzip() is None
    names = set(archive.namelist())
    assert names == {
        "account.json",
        "samples.csv",
        f"sessions/{first}.json",
        f"sessions/{second}.json",
    }
    account = orjson.loads(archive.read("account.json"))
    assert account["user"]["id"] == user_id and account["user"]["name"] == "exported-person"
    listed = {s["id"]: s for s in account["sessions"]}
    assert set(listed) == {first, second}
    assert listed[first]["status"] == "completed" and listed[second]["status"] == "active"

    rows = list(csv.reader(io.StringIO(archive.read("samples.csv").decode())))
    per_session = await tc.http.get(
        f"/api/v1/sessions/{first}/export.csv", params={"kind": "samples"}, headers=auth
    )
    header = next(csv.reader(io.StringIO(per_session.text)))
    assert rows[0] == header
    assert len(rows) == 1 + 59
    record_ids = {row[header.index("record_id")] for row in rows[1:]}
    assert "b3" not in record_ids and "theirs" not in record_ids
    # A session's samples appear in samples.csv exactly as its own CSV export writes them.
    own = list(csv.reader(io.StringIO(per_session.text)))[1:]
    assert own and all(row in rows for row in own)

    for session_id in (first, second):
        bundle = orjson.loads(archive.read(f"sessions/{session_id}.json"))
        Bundle.model_validate(bundle)
        alone = (await tc.http.get(f"/api/v1/sessions/{session_id}/fhir", headers=auth)).json()
        assert _without_envelope(bundle) == _without_envelope(alone)


async def test_an_account_with_nothing_exports_an_empty_account(
    tc: TelemetryClient, users: Any
) -> None:
    _uid, token = await users.create()
    response = await tc.http.get("/api/v1/me/export", headers={"Authorization": f"Bearer {token}"})
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert sorted(archive.namelist()) == ["account.json", "samples.csv"]
    assert orjson.loads(archive.read("account.json"))["sessions"] == []
    assert archive.read("samples.csv").decode().count("\r\n") == 1


async def test_samples_csv_of_the_account_export_is_neutralised(
    tc: TelemetryClient, users: Any
) -> None:
    """The account export writes samples.csv through the same CSV helper as export.csv: a
    source, record id or device that a spreadsheet would run as a formula comes out with a
    leading quote; the value column stays a number."""
    _uid, token = await users.create()
    auth = {"Authorization": f"Bearer {token}"}
    now = tc.clock.now_ms()
    hostile = hr("+1+cmd", now - 5 * MINUTE, 70.0, source='=HYPERLINK("http://evil","x")')
    hostile["device"] = "@SUM(A1:A9)"
    await tc.post_samples(auth, [hostile, hr("plain", now - 4 * MINUTE, 71.0)])

    response = await tc.http.get("/api/v1/me/export", headers=auth)

    archive = zipfile.ZipFile(io.BytesIO(response.content))
    text = archive.read("samples.csv").decode()
    rows = {r["record_id"]: r for r in csv.DictReader(io.StringIO(text, newline=""))}
    assert set(rows) == {"'+1+cmd", "plain"}
    row = rows["'+1+cmd"]
    assert row["source"] == '\'=HYPERLINK("http://evil","x")'
    assert row["device"] == "'@SUM(A1:A9)"
    assert row["value"] == "70.0"
    assert rows["plain"]["source"] == "polar"
    for cells in rows.values():
        assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in cells.values())
