"""Importing Apple Health exports through the ingest service, on both databases: canonical
values, identity, watermarks, batches stored whole, and the CLI's summary and errors."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.interop.health_exports import (
    HR,
    REJECTED,
    UNKNOWN_TYPES,
    Rec,
    at,
    catalog_fixture,
    epoch_ms_of,
    export_text,
    full_export,
    workout,
    write_export,
    write_zip,
)
from tests.processes import run_cli, run_cli_measured, vitalcast_env
from vitalcast.clock import epoch_ms
from vitalcast.db.tables import health_samples, sessions, users
from vitalcast.interop.importer import ImportFailed, ImportSummary, import_export
from vitalcast.sessions import repository as session_repository
from vitalcast.settings import Settings
from vitalcast.wiring import ImporterParts, build_importer


@pytest.fixture
async def parts(settings: Settings) -> Any:
    """The ingest and session services as ``vitalcast import`` builds them."""
    built = build_importer(settings)
    yield built
    await built.close()


async def user_id_of(parts: ImporterParts, name: str = "alice") -> str:
    async with parts.db.write() as conn:
        return await session_repository.get_or_create_user(conn, name, now_ms=0)


async def stored(parts: ImporterParts) -> list[Any]:
    async with parts.db.read() as conn:
        query = sa.select(health_samples).order_by(
            health_samples.c.start_ms, health_samples.c.metric, health_samples.c.device
        )
        return list(await conn.execute(query))


async def watermarks(parts: ImporterParts) -> tuple[int, list[int]]:
    async with parts.db.read() as conn:
        seq = await conn.scalar(sa.select(users.c.change_seq))
        marks = await conn.scalars(sa.select(sessions.c.source_watermark).order_by(sessions.c.id))
        return int(seq or 0), list(marks)


async def run_import(
    parts: ImporterParts, user_id: str, path: Path, **kwargs: Any
) -> ImportSummary:
    return await import_export(parts.ingest, user_id, path, **kwargs)


async def test_every_catalog_type_lands_with_its_canonical_value(parts, tmp_path):
    """SpO₂ 0.97 → 97 %, degF → degC, kJ → kcal, local times with offsets → UTC instants, the
    same instant from watch and phone kept apart, device labels kept."""
    records, expected = catalog_fixture()
    user_id = await user_id_of(parts)
    summary = await run_import(parts, user_id, write_export(tmp_path / "export.xml", records))
    assert (summary.records, summary.inserted, summary.unchanged) == (len(records), len(records), 0)
    rows = await stored(parts)
    got = sorted(
        (r.start_ms, r.metric, r.device, r.value, r.unit, r.end_ms, r.source) for r in rows
    )
    want = sorted(
        (epoch_ms_of(e.start), e.metric, e.device, e.value, e.unit, epoch_ms_of(e.end), "healthkit")
        for e in expected
    )
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g[:3] == w[:3] and g[4:] == w[4:]
        assert g[3] == pytest.approx(w[3], rel=1e-12)
    assert {r.value for r in rows if r.metric == "blood_oxygen"} == {97.0}


async def test_summary_counts_rejections_by_code_and_skips_by_type(parts, tmp_path):
    user_id = await user_id_of(parts)
    summary = await run_import(parts, user_id, full_export(tmp_path / "export.xml"))
    records, _ = catalog_fixture()
    assert summary.inserted == len(records)
    assert summary.rejected == {
        "VALUE_OUT_OF_RANGE": 2,
        "UNIT_NOT_ACCEPTED": 1,
        "MALFORMED_RECORD": 1,
    }
    assert summary.skipped_types == {
        **{r.type: 1 for r in UNKNOWN_TYPES},
        "HKQuantityTypeIdentifierBloodPressureSystolic": 1,
    }
    # catalog + unknown + rejected + the systolic record at top level (not its correlation copy)
    assert summary.records == len(records) + len(UNKNOWN_TYPES) + len(REJECTED) + 1
    assert len(await stored(parts)) == len(records)


async def test_a_second_import_changes_nothing_and_moves_no_watermark(parts, tmp_path):
    """Re-importing the same file: everything unchanged, the user's change_seq and every
    session's watermark stay where the first import left them."""
    user_id = await user_id_of(parts)
    session, _ = await parts.sessions.create(
        user_id, client_session_id="morning", start_ms=epoch_ms(at(-10)), notes=None
    )
    await parts.sessions.end(user_id, session.id, end_ms=epoch_ms(at(20)))
    path = full_export(tmp_path / "export.xml")
    first = await run_import(parts, user_id, path, batch_size=4)
    before = await watermarks(parts)
    assert before[1][0] > 0
    second = await run_import(parts, user_id, path, batch_size=4)
    assert (second.inserted, second.updated) == (0, 0)
    assert second.unchanged == first.inserted
    assert second.rejected == first.rejected
    assert await watermarks(parts) == before


async def test_a_corrected_value_in_a_later_export_updates_the_sample(parts, tmp_path):
    user_id = await user_id_of(parts)
    await run_import(
        parts, user_id, write_export(tmp_path / "a.xml", [Rec(HR, "count/min", "70", at(0))])
    )
    summary = await run_import(
        parts, user_id, write_export(tmp_path / "b.xml", [Rec(HR, "count/min", "71", at(0))])
    )
    assert (summary.inserted, summary.updated) == (0, 1)
    assert [r.value for r in await stored(parts)] == [71.0]


async def test_a_cut_file_stores_only_whole_batches(parts, tmp_path):
    """A file cut inside the 8th record: the three complete batches of 2 are stored, the 7th
    record's batch (incomplete when the file ended) is not, and the error says where."""
    records = [Rec(HR, "count/min", str(60 + i), at(i), children="metadata") for i in range(10)]
    text = export_text(records)
    cut = text.index("<MetadataEntry", text.index('value="67"'))
    path = tmp_path / "export.xml"
    path.write_text(text[:cut], encoding="utf-8")
    user_id = await user_id_of(parts)
    with pytest.raises(ImportFailed, match="broken or incomplete") as failed:
        await run_import(parts, user_id, path, batch_size=2)
    assert failed.value.summary.batches == 3
    rows = await stored(parts)
    assert [r.value for r in rows] == [60.0, 61.0, 62.0, 63.0, 64.0, 65.0]


async def test_a_batch_the_ingest_service_refuses_whole_stops_the_import(parts, tmp_path):
    """A unit longer than the API accepts makes its batch a whole-request 422: the batches
    before it stay stored, that batch and the rest are not, and the error names it."""
    records = [Rec(HR, "count/min", str(60 + i), at(i)) for i in range(6)]
    records[4] = Rec(HR, "count/min" + "!" * 40, "64", at(4))
    user_id = await user_id_of(parts)
    path = write_export(tmp_path / "export.xml", records)
    with pytest.raises(ImportFailed, match=r"batch 3 was refused \(VALIDATION_ERROR: "):
        await run_import(parts, user_id, path, batch_size=2)
    assert [r.value for r in await stored(parts)] == [60.0, 61.0, 62.0, 63.0]


async def test_workouts_become_completed_sessions_once(parts, tmp_path):
    """With sessions on, each Workout is a completed session over its span; importing again
    finds it by its client_session_id instead of creating another."""
    user_id = await user_id_of(parts)
    path = write_export(
        tmp_path / "export.xml", [Rec(HR, "count/min", "70", at(0))], [workout(at(-30), 45)]
    )
    first = await run_import(parts, user_id, path, sessions=parts.sessions)
    second = await run_import(parts, user_id, path, sessions=parts.sessions)
    assert (first.sessions_created, second.sessions_created, second.sessions_existing) == (1, 0, 1)
    listed, _ = await parts.sessions.list(user_id, status=None, limit=10, cursor=None)
    assert [(s.status.value, s.start_ms, s.end_ms) for s in listed] == [
        ("completed", epoch_ms(at(-30)), epoch_ms(at(15)))
    ]
    assert listed[0].notes and listed[0].notes.startswith("Running")


# -- the command ---------------------------------------------------------------------------------


def cli_env(tmp_path: Path, database_url: str) -> dict[str, str]:
    return vitalcast_env(tmp_path / "data", database_url=database_url, log_level="warning")


def test_cli_imports_a_zip_and_prints_the_summary(tmp_path, database_url):
    records, _ = catalog_fixture()
    path = write_zip(tmp_path / "export.zip", [*records, *UNKNOWN_TYPES])
    env = cli_env(tmp_path, database_url)
    args = ["import", "apple-health", str(path), "--user", "alice"]
    done = run_cli(args, env)
    assert done.returncode == 0, done.stderr
    assert f"records read: {len(records) + len(UNKNOWN_TYPES)}" in done.stdout
    assert f"imported: {len(records)} (inserted {len(records)}, updated 0)" in done.stdout
    assert "HKQuantityTypeIdentifierBodyMass: 1" in done.stdout
    # not a terminal: no progress bar drawn
    assert "━" not in done.stderr
    again = run_cli(args, env)
    assert again.returncode == 0, again.stderr
    assert "imported: 0 (inserted 0, updated 0)" in again.stdout
    assert f"unchanged: {len(records)}" in again.stdout


def test_cli_draws_a_progress_bar_on_a_terminal(tmp_path, database_url):
    """On a terminal (stderr a pty) the import shows a progress bar; the summary still goes to
    stdout."""
    records = [Rec(HR, "count/min", str(60 + i % 40), at(i / 6)) for i in range(3_000)]
    path = write_export(tmp_path / "export.xml", records)
    master, replica = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "vitalcast", "import", "apple-health", str(path), "--user", "tty"],
        env=cli_env(tmp_path, database_url) | {"COLUMNS": "120", "TERM": "xterm"},
        stdout=subprocess.PIPE,
        stderr=replica,
    )
    os.close(replica)
    screen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    stdout, _ = process.communicate(timeout=120)
    os.close(master)
    assert process.returncode == 0
    assert "━".encode() in screen
    assert b"export.xml" in screen
    assert b"records read: 3,000" in stdout


def test_cli_cut_file_is_a_one_line_error_and_exit_1(tmp_path, database_url):
    records = [Rec(HR, "count/min", str(60 + i), at(i)) for i in range(5)]
    text = export_text(records)
    path = tmp_path / "export.xml"
    path.write_text(text[: text.index('value="63"')], encoding="utf-8")
    done = run_cli(
        ["import", "apple-health", str(path), "--user", "alice"], cli_env(tmp_path, database_url)
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("import failed: export.xml is broken or incomplete")


def test_cli_unknown_encoding_is_a_one_line_error_and_exit_1(tmp_path, database_url):
    """A declaration naming an encoding Python does not know (found by the import fuzz run as
    "TF-8") was a LookupError traceback."""
    text = export_text([Rec(HR, "count/min", "61", at(0))])
    path = tmp_path / "export.xml"
    path.write_text(text.replace('encoding="UTF-8"', 'encoding="TF-8"', 1), encoding="utf-8")
    assert 'encoding="TF-8"' in path.read_text(encoding="utf-8")
    done = run_cli(
        ["import", "apple-health", str(path), "--user", "alice"], cli_env(tmp_path, database_url)
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("import failed: export.xml declares an unknown character encoding")


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE HealthData [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<HealthData locale="en_US">
 <Record type="HKQuantityTypeIdentifierHeartRate" sourceName="&lol9;" unit="count/min"
  startDate="2025-06-01 08:00:00 -0700" endDate="2025-06-01 08:00:00 -0700" value="70"/>
</HealthData>
"""


def test_cli_refuses_a_billion_laughs_without_blowing_memory(tmp_path, database_url):
    """The classic entity bomb (10⁹ expansions, gigabytes if expanded) is refused at its
    declarations: exit 1, one line, and the process never grows past the import's own budget."""
    path = tmp_path / "export.xml"
    path.write_text(BILLION_LAUGHS)
    done, peak_rss_mb = run_cli_measured(
        ["import", "apple-health", str(path), "--user", "eve"],
        cli_env(tmp_path, database_url),
        tmp_path,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [
        "import failed: export.xml declares XML entities or external references "
        "(EntitiesForbidden); Health exports never do, so it was refused "
        "(0 complete batches with 0 new or updated samples were stored before it)"
    ]
    # The CLI itself (Python, the app's modules) takes ~150 MB; expanding the bomb would take
    # gigabytes.
    assert peak_rss_mb < 250
