"""Reading Apple Health exports: mapping, identity, skipping, and refusing broken or hostile files.
Pure parsing, no database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.interop.health_exports import (
    HR,
    MORNING,
    PACIFIC,
    UNKNOWN_TYPES,
    WATCH,
    WATCH_DEVICE,
    Rec,
    at,
    catalog_fixture,
    export_text,
    full_export,
    write_export,
    write_zip,
)
from vitalcast.clock import epoch_ms
from vitalcast.interop.apple_health import (
    Batch,
    ExportError,
    device_hardware,
    iso_of,
    open_export,
    read_batches,
    record_id,
)
from vitalcast.interop.markup_guard import MarkupGuard, MarkupTooLong


def batches(path: Path, batch_size: int = 5_000, **kwargs: object) -> Iterator[Batch]:
    with open_export(path) as (stream, _size):
        yield from read_batches(stream, batch_size=batch_size, **kwargs)  # type: ignore[arg-type]


def test_apple_dates_become_iso_with_their_offset():
    """Apple's ``2025-06-01 08:00:00 -0700`` is read as that local time at UTC−7."""
    assert iso_of("2025-06-01 08:00:00 -0700") == "2025-06-01T08:00:00-07:00"
    assert iso_of("2025-06-01 08:00:00 +0530") == "2025-06-01T08:00:00+05:30"


def test_catalog_records_become_request_shaped_samples(tmp_path):
    """Each catalog type maps to its metric with the export's unit (SpO₂ as a fraction), the
    instant from the dated text, and a device label of source name and hardware."""
    records, expected = catalog_fixture()
    (batch,) = batches(write_export(tmp_path / "export.xml", records))
    assert batch.records == len(records)
    assert [s["metric"] for s in batch.samples] == [e.metric for e in expected]
    spo2 = next(s for s in batch.samples if s["metric"] == "blood_oxygen")
    assert (spo2["value"], spo2["unit"]) == (0.97, "fraction")
    first = batch.samples[0]
    assert first["start"] == "2025-06-01T08:00:00-07:00"
    assert first["source"] == "healthkit"
    assert first["device"] == f"{WATCH} (Watch6,2)"


def test_the_same_instant_from_two_sources_stays_two_samples(tmp_path):
    """Watch and phone heart rates at one instant have different record ids."""
    records, _ = catalog_fixture()
    (batch,) = batches(write_export(tmp_path / "export.xml", records[:2]))
    assert len({s["record_id"] for s in batch.samples}) == 2


def test_record_ids_survive_a_re_export_in_another_time_zone(tmp_path):
    """Apple writes dates in the phone's current zone: the same instant written at UTC+2 keeps
    its id, because the id hashes the instant, not the text."""
    record = Rec(HR, "count/min", "70", MORNING)
    moved = Rec(HR, "count/min", "71", MORNING.astimezone(timezone(timedelta(hours=2))))
    (a,) = batches(write_export(tmp_path / "a.xml", [record]))
    (b,) = batches(write_export(tmp_path / "b.xml", [moved]))
    assert a.samples[0]["start"] != b.samples[0]["start"]
    assert a.samples[0]["record_id"] == b.samples[0]["record_id"]
    start_ms = epoch_ms(MORNING)
    assert a.samples[0]["record_id"] == record_id(HR, WATCH, start_ms, start_ms)


def test_unknown_types_correlations_workouts_and_summaries_are_skipped(tmp_path):
    """Unknown types are counted by type; a Correlation's child records (which repeat top-level
    ones) are not read twice; Workouts are handed out, their routes and metadata skipped."""
    (batch,) = batches(full_export(tmp_path / "export.xml"))
    assert batch.skipped_types == {
        **{r.type: 1 for r in UNKNOWN_TYPES},
        "HKQuantityTypeIdentifierBloodPressureSystolic": 1,
    }
    assert batch.malformed == 1
    assert [(w.activity, w.start_ms, w.end_ms) for w in batch.workouts] == [
        ("Running", epoch_ms(at(-30)), epoch_ms(at(-5)))
    ]


def test_since_leaves_out_earlier_records(tmp_path):
    records = [Rec(HR, "count/min", str(60 + i), at(i)) for i in range(10)]
    (batch,) = batches(write_export(tmp_path / "export.xml", records), since_ms=epoch_ms(at(4)))
    assert len(batch.samples) == 6
    assert batch.before_since == 4


def test_batches_hold_at_most_batch_size_samples(tmp_path):
    records = [Rec(HR, "count/min", str(60 + i % 40), at(i)) for i in range(23)]
    found = list(batches(write_export(tmp_path / "export.xml", records), batch_size=5))
    assert [len(b.samples) for b in found] == [5, 5, 5, 5, 3]
    assert sum(b.records for b in found) == 23


def test_zip_exports_are_read_from_their_export_xml(tmp_path):
    """The Health app's export.zip holds export.xml next to export_cda.xml."""
    records, _ = catalog_fixture()
    (batch,) = batches(write_zip(tmp_path / "export.zip", records))
    assert len(batch.samples) == len(records)


def test_a_file_cut_in_the_middle_yields_only_complete_batches(tmp_path):
    """Cut inside the 8th record's children: batches of 2 before it come out, then the error;
    the 7th record (complete, but its batch not) is never handed out."""
    records = [Rec(HR, "count/min", str(60 + i), at(i), children="metadata") for i in range(10)]
    text = export_text(records)
    cut = text.index("<MetadataEntry", text.index(f'value="{60 + 7}"'))
    path = tmp_path / "export.xml"
    path.write_text(text[: cut + 10], encoding="utf-8")
    found: list[Batch] = []
    with pytest.raises(ExportError, match=r"broken or incomplete.*line \d+, column \d+"):
        found.extend(batches(path, batch_size=2))
    assert [len(b.samples) for b in found] == [2, 2, 2]


def test_a_file_that_is_not_a_health_export_is_refused(tmp_path):
    path = tmp_path / "export.xml"
    path.write_text('<?xml version="1.0"?><rss><channel/></rss>')
    with pytest.raises(ExportError, match="not an Apple Health export"):
        list(batches(path))


@pytest.mark.parametrize(
    "declaration",
    [
        '<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">',
        '<!ENTITY xxe SYSTEM "file:///etc/passwd">',
        '<!ENTITY % remote SYSTEM "http://127.0.0.1:9/evil.dtd"> %remote;',
    ],
    ids=["internal-entity", "external-entity", "external-parameter-entity"],
)
def test_entity_declarations_are_refused(tmp_path, declaration):
    """Any entity declaration (expansion bombs, local files, network) is refused; the internal
    DTD subset itself is allowed, as every real export has one."""
    text = export_text([Rec(HR, "count/min", "70", MORNING)])
    text = text.replace("<!DOCTYPE HealthData [", f"<!DOCTYPE HealthData [\n{declaration}", 1)
    path = tmp_path / "export.xml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ExportError, match="declares XML entities"):
        list(batches(path))


def test_a_missing_file_is_a_one_line_error(tmp_path):
    with pytest.raises(ExportError, match="cannot read"):
        list(batches(tmp_path / "nope.zip"))


def test_offsets_other_than_utc_land_on_the_right_instant(tmp_path):
    (batch,) = batches(write_export(tmp_path / "e.xml", [Rec(HR, "count/min", "70", MORNING)]))
    assert datetime.fromisoformat(batch.samples[0]["start"]) == MORNING
    assert MORNING.tzinfo == PACIFIC


# -- the markup guard ----------------------------------------------------------------------------

GUARDED = (
    b'<?xml version="1.0"?><HealthData><Record a="1 > 2" b=\'it"s\'/>text > here'
    b'<Record c="x"><MetadataEntry k="v"/></Record><!-- note --></HealthData>'
)


def guarded(data: bytes, chunk: int, limit: int) -> tuple[bytes, int]:
    guard = MarkupGuard(limit)
    out = b"".join(guard.feed(data[i : i + chunk]) for i in range(0, len(data), chunk))
    return out + guard.close(), guard.replaced


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 16, 1000])
def test_the_markup_guard_passes_ordinary_markup_unchanged_at_any_chunking(chunk):
    assert guarded(GUARDED, chunk, limit=64) == (GUARDED, 0)


@pytest.mark.parametrize("chunk", [1, 5, 64, 199])
def test_an_oversized_start_tag_becomes_an_empty_stand_in_whatever_its_quotes_hold(chunk):
    """A tag past the limit is read to its real end (a ``>`` or ``/>`` inside quotes does
    not end it) and replaced by its name with the marker; self-closing stays self-closing.
    (Markup inside one chunk is passed whole: the parser's bound is limit + one chunk.)"""
    double = b"v" * 300 + b"/> '>" + b"w" * 300
    single = b"v" * 300 + b'/> ">' + b"w" * 300
    data = (
        b'<HealthData><Record a="' + double + b'" b="1"/><Record x="1"/>'
        b"<Workout d='" + single + b"'>t<MetadataEntry/></Workout></HealthData>"
    )
    out, replaced = guarded(data, chunk, limit=200)
    assert replaced == 2
    assert out == (
        b'<HealthData><Record vitalcast-oversized="1"/><Record x="1"/>'
        b'<Workout vitalcast-oversized="1">t<MetadataEntry/></Workout></HealthData>'
    )


def test_long_text_after_short_markup_passes_and_long_comments_are_refused():
    text = b"<HealthData><Record/>" + b"t" * 5000 + b"</HealthData>"
    assert guarded(text, 100, limit=200) == (text, 0)
    with pytest.raises(MarkupTooLong):
        guarded(b"<HealthData><!--" + b"c" * 5000 + b"--></HealthData>", 100, limit=200)


def test_a_record_with_a_field_past_the_cap_is_malformed_and_its_neighbours_are_read(tmp_path):
    records = [
        Rec(HR, "count/min", "70", at(0)),
        Rec(HR, "count/min", "71", at(1), device="<<HKDevice>, name:" + "x" * 5000 + ">"),
        Rec(HR, "count/min", "72", at(2), source="s" * 5000),
        Rec(HR, "count/min", "73", at(3)),
    ]
    (batch,) = batches(write_export(tmp_path / "export.xml", records))
    assert [s["value"] for s in batch.samples] == [70.0, 73.0]
    assert batch.malformed == 2


def test_nesting_past_the_cap_ends_the_read(tmp_path):
    path = tmp_path / "export.xml"
    path.write_text(
        export_text([]).replace("</HealthData>", "<a>" * 40 + "</a>" * 40 + "</HealthData>")
    )
    with pytest.raises(ExportError, match="nested deeper than 32 levels"):
        list(batches(path))


def test_device_descriptions_keep_their_hardware():
    assert device_hardware(WATCH_DEVICE) == "Watch6,2"
    assert device_hardware("<<HKDevice: 0x1>, name:A, hardware:Watch3,2>") == "Watch3,2"
    assert device_hardware("<<HKDevice: 0x1>, hardware:Odd, one, model:M>") == "Odd, one"
    assert device_hardware("<<HKDevice: 0x1>, name:no hardware>") is None
    assert device_hardware("name:A, hardware:B") is None  # not closed by ">"
