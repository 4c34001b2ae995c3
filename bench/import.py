"""Apple Health import: records/s and peak RSS of ``vitalcast import apple-health`` on a generated
export (2 million records by default, written to a temporary folder and deleted afterwards), next
to the ingest service's own rate for the same samples in the same run: the time the import's
ingest service spent on them (measured inside the import process, so other load on a shared
machine weighs on both alike), and, for reference, the same batches handed straight to
``IngestService.ingest`` in a fresh database just before.

Targets: the import at ≥ 50 % of the ingest service's rate, peak RSS < 250 MB.

    uv run python -m bench.import [--records 2000000] [--backends postgres,sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import create_user, database, emit, server_env
from bench.targets import IMPORT_PEAK_RSS_MAX_MB as TARGET_RSS_MB
from bench.targets import IMPORT_SHARE_OF_INGEST_MIN as TARGET_RATIO
from vitalcast.clock import now_ms
from vitalcast.ingest.validation import MAX_SAMPLES
from vitalcast.interop.apple_health import open_export, read_batches
from vitalcast.observability import configure_logging
from vitalcast.settings import Settings
from vitalcast.wiring import build_importer

_HEADER = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE HealthData [
<!-- HealthKit Export Version: 13 -->
<!ELEMENT HealthData (ExportDate,Me,(Record|Correlation|Workout|ActivitySummary)*)>
<!ATTLIST HealthData
  locale CDATA #REQUIRED
>
<!ELEMENT ExportDate EMPTY>
<!ATTLIST ExportDate
  value CDATA #REQUIRED
>
<!ELEMENT Me EMPTY>
<!ATTLIST Me
  HKCharacteristicTypeIdentifierDateOfBirth         CDATA #REQUIRED
  HKCharacteristicTypeIdentifierBiologicalSex       CDATA #REQUIRED
>
<!ELEMENT Record ((MetadataEntry|HeartRateVariabilityMetadataList)*)>
<!ATTLIST Record
  type          CDATA #REQUIRED
  unit          CDATA #IMPLIED
  value         CDATA #IMPLIED
  sourceName    CDATA #REQUIRED
  sourceVersion CDATA #IMPLIED
  device        CDATA #IMPLIED
  creationDate  CDATA #IMPLIED
  startDate     CDATA #REQUIRED
  endDate       CDATA #REQUIRED
>
<!ELEMENT MetadataEntry EMPTY>
<!ATTLIST MetadataEntry
  key   CDATA #REQUIRED
  value CDATA #REQUIRED
>
<!ELEMENT Workout ((MetadataEntry|WorkoutEvent|WorkoutRoute)*)>
<!ELEMENT WorkoutRoute ((MetadataEntry|FileReference)*)>
<!ELEMENT ActivitySummary EMPTY>
]>
<HealthData locale="en_US">
 <ExportDate value="2026-11-01 08:00:00 +0100"/>
 <Me HKCharacteristicTypeIdentifierDateOfBirth="1985-04-02" HKCharacteristicTypeIdentifierBiologicalSex="HKBiologicalSexFemale"/>
"""
_WATCH = 'sourceName="Alice’s Apple Watch" sourceVersion="10.1"'
# Apple writes this for most watch records; here only on heart rate, to keep the file near the
# size real exports of this many records have.
_DEVICE = (
    ' device="&lt;&lt;HKDevice: 0x28370f1b0&gt;, name:Apple Watch, manufacturer:Apple Inc., '
    'model:Watch, hardware:Watch6,2, software:10.1&gt;"'
)
_PHONE = 'sourceName="Alice’s iPhone" sourceVersion="17.1"'
# (type, unit, value range, share of records, from the watch?)
_MIX: tuple[tuple[str, str, tuple[float, float], float, bool], ...] = (
    ("HKQuantityTypeIdentifierHeartRate", "count/min", (50, 150), 0.40, True),
    ("HKQuantityTypeIdentifierActiveEnergyBurned", "kcal", (0.1, 5), 0.22, True),
    ("HKQuantityTypeIdentifierStepCount", "count", (5, 120), 0.18, False),
    ("HKQuantityTypeIdentifierRespiratoryRate", "count/min", (12, 20), 0.04, True),
    ("HKQuantityTypeIdentifierHeartRateVariabilitySDNN", "ms", (20, 90), 0.03, True),
    ("HKQuantityTypeIdentifierOxygenSaturation", "%", (0.93, 1.0), 0.02, True),
    ("HKQuantityTypeIdentifierAppleSleepingWristTemperature", "degC", (34, 36), 0.01, True),
    ("HKQuantityTypeIdentifierDistanceWalkingRunning", "km", (0.01, 0.1), 0.07, False),
    ("HKQuantityTypeIdentifierBasalEnergyBurned", "kcal", (0.5, 2), 0.03, True),
)


def _date(epoch_s: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S +0100", time.gmtime(epoch_s + 3600))


def generate(path: Path, records: int, *, seed: int = 7) -> None:
    """An export.xml with ``records`` Records in Apple's layout (grouped by type, in time order,
    watch records with a device and a MetadataEntry), then workouts and activity summaries."""
    rng = random.Random(seed)
    end_s = now_ms() // 1000 - 86_400
    with path.open("w", encoding="utf-8", buffering=1 << 20) as out:
        out.write(_HEADER)
        for record_type, unit, (low, high), share, watch in _MIX:
            count = round(records * share)
            step_s = max(1, (3 * 365 * 86_400) // max(count, 1))
            t = end_s - count * step_s
            metadata = record_type.endswith("HeartRate")
            source = (_WATCH + (_DEVICE if metadata else "")) if watch else _PHONE
            lines = []
            for _ in range(count):
                t += step_s
                stamp = _date(t)
                span = 60 if not metadata else 0
                value = round(rng.uniform(low, high), 3)
                head = (
                    f' <Record type="{record_type}" {source} unit="{unit}" '
                    f'creationDate="{stamp}" startDate="{stamp}" endDate="{_date(t + span)}" '
                    f'value="{value:g}"'
                )
                if metadata:
                    lines.append(
                        head + '>\n  <MetadataEntry key="HKMetadataKeyHeartRateMotionContext" '
                        'value="0"/>\n </Record>\n'
                    )
                else:
                    lines.append(head + "/>\n")
                if len(lines) >= 10_000:
                    out.write("".join(lines))
                    lines.clear()
            out.write("".join(lines))
        for day in range(200):
            start = end_s - day * 86_400 - 7_200
            out.write(
                f' <Workout workoutActivityType="HKWorkoutActivityTypeRunning" duration="30" '
                f'durationUnit="min" {_WATCH}{_DEVICE} startDate="{_date(start)}" '
                f'endDate="{_date(start + 1_800)}">\n'
                '  <WorkoutRoute sourceName="Alice’s Apple Watch">\n'
                '   <FileReference path="/workout-routes/route.gpx"/>\n'
                "  </WorkoutRoute>\n </Workout>\n"
                f' <ActivitySummary dateComponents="{_date(start)[:10]}" activeEnergyBurned="512"/>\n'
            )
        out.write("</HealthData>\n")


def run_import(export: Path, url: str, data_dir: str) -> dict[str, Any]:
    """The real command in a child process (``--child``, below): wall time, peak RSS, and the
    time its ingest service spent on the same samples."""
    env = server_env(url, data_dir)
    with tempfile.TemporaryDirectory(prefix="vc-bench-import-") as folder:
        report, out, err = (Path(folder) / name for name in ("report.json", "out", "err"))
        began = time.perf_counter()
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.import", "--child", str(export), str(report)],
                env=env,
                stdout=stdout,
                stderr=stderr,
            )
        # Reaped here rather than by Popen: wait4 gives this child's own peak RSS.
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.perf_counter() - began
        if proc.returncode != 0:
            raise RuntimeError(f"import failed: {err.read_text().strip()}")
        inside = json.loads(report.read_text())
        output = out.read_text()
    summary = dict(line.split(": ", 1) for line in output.splitlines() if ": " in line)
    imported = int(summary["imported"].split(" ")[0].replace(",", ""))
    records = int(summary["records read"].replace(",", ""))
    return {
        "records_read": records,
        "samples_imported": imported,
        "seconds": round(elapsed, 2),
        "records_per_s": round(records / elapsed),
        "samples_per_s": round(imported / elapsed),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "ingest_service_seconds": round(inside["ingest_seconds"], 2),
        "ingest_service_samples_per_s": round(inside["samples"] / inside["ingest_seconds"]),
    }


def child(export: str, report: str) -> None:
    """``vitalcast import apple-health`` exactly as a user runs it, with the ingest service's
    calls timed (by wrapping the method, in this bench process only)."""
    from vitalcast.cli import app
    from vitalcast.ingest.service import IngestService

    spent = {"ingest_seconds": 0.0, "samples": 0}
    original = IngestService.ingest

    async def timed(self: IngestService, user_id: str, body: Any) -> Any:
        began = time.perf_counter()
        try:
            return await original(self, user_id, body)
        finally:
            spent["ingest_seconds"] += time.perf_counter() - began
            spent["samples"] += len(body["samples"])

    IngestService.ingest = timed  # type: ignore[method-assign]
    try:
        app(["import", "apple-health", export, "--user", "bench-import"], standalone_mode=False)
    finally:
        Path(report).write_text(json.dumps(spent))


async def ingest_rate(export: Path, url: str) -> dict[str, Any]:
    """The ingest service alone: the export's batches parsed untimed, each ``ingest`` timed."""
    user_id, _ = await create_user(url, "bench-ingest")
    with tempfile.TemporaryDirectory(prefix="vc-bench-data-") as data_dir:
        parts = build_importer(Settings(database_url=url, data_dir=Path(data_dir), secret="b" * 40))
        spent = 0.0
        samples = 0
        try:
            with open_export(export) as (stream, _size):
                for batch in read_batches(stream, batch_size=MAX_SAMPLES):
                    body = {"samples": batch.samples}
                    began = time.perf_counter()
                    await parts.ingest.ingest(user_id, body)
                    spent += time.perf_counter() - began
                    samples += len(batch.samples)
        finally:
            await parts.close()
    return {"samples": samples, "seconds": round(spent, 2), "samples_per_s": round(samples / spent)}


async def measure(backend: str, export: Path) -> dict[str, Any]:
    """The import, and the ingest service's rate for its samples measured two ways: inside the
    import (same process, same moment: immune to other load on the machine) and alone in a
    fresh database just before it."""
    async with database(backend) as url:
        alone = await ingest_rate(export, url)
    async with database(backend) as url:
        with tempfile.TemporaryDirectory(prefix="vc-bench-data-") as data_dir:
            imported = await asyncio.to_thread(run_import, export, url, data_dir)
    ratio = imported["samples_per_s"] / imported["ingest_service_samples_per_s"]
    return {
        "import": imported,
        "ingest_service": {
            "within_the_import_samples_per_s": imported["ingest_service_samples_per_s"],
            "alone_before_samples_per_s": alone["samples_per_s"],
            "alone_before": alone,
        },
        "ratio_import_to_ingest": round(ratio, 3),
        "ratio_import_to_ingest_alone": round(
            imported["samples_per_s"] / alone["samples_per_s"], 3
        ),
        "meets_targets": ratio >= TARGET_RATIO and imported["peak_rss_mb"] < TARGET_RSS_MB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=2_000_000)
    parser.add_argument("--backends", default="postgres,sqlite")
    parser.add_argument("--child", nargs=2, metavar=("EXPORT", "REPORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
    else:
        asyncio.run(run(args.records, args.backends.split(",")))


async def run(records: int, backends: list[str]) -> None:
    configure_logging("warning")
    with tempfile.TemporaryDirectory(prefix="vc-bench-export-") as folder:
        export = Path(folder) / "export.xml"
        began = time.perf_counter()
        generate(export, records)
        result: dict[str, Any] = {
            "benchmark": "import",
            "records": records,
            "export_mb": round(export.stat().st_size / 1_048_576, 1),
            "generate_seconds": round(time.perf_counter() - began, 1),
            "batch_size": MAX_SAMPLES,
            "targets": {"ratio_to_ingest": TARGET_RATIO, "peak_rss_mb": TARGET_RSS_MB},
            "load_average_at_start": os.getloadavg()[0],
        }
        for backend in backends:
            result[backend] = await measure(backend, export)
        result["load_average_at_end"] = os.getloadavg()[0]
    emit("import", result)


if __name__ == "__main__":
    main()
