"""Apple Health import: records/s and peak RSS of ``vitalcast import apple-health`` on a generated
export (2 million records by default, written to a temporary folder and deleted afterwards), next
to the ingest service's own rate for the same samples in the same run (the same batches handed
straight to ``IngestService.ingest``, only those calls timed, into a fresh database).

Targets: the import at ≥ 50 % of the ingest service's rate, peak RSS < 250 MB.

    uv run python -m bench.import [--records 2000000] [--backends postgres,sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import create_user, database, emit, server_env
from vitalcast.app import build_container
from vitalcast.clock import now_ms
from vitalcast.ingest.validation import MAX_SAMPLES
from vitalcast.interop.apple_health import open_export, read_batches
from vitalcast.observability import configure_logging
from vitalcast.settings import Settings

TARGET_RATIO = 0.5
TARGET_RSS_MB = 250

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
_WATCH = (
    'sourceName="Alice’s Apple Watch" sourceVersion="10.1" device="&lt;&lt;HKDevice: '
    "0x28370f1b0&gt;, name:Apple Watch, manufacturer:Apple Inc., model:Watch, "
    'hardware:Watch6,2, software:10.1&gt;"'
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
            source = _WATCH if watch else _PHONE
            metadata = record_type.endswith("HeartRate")
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
                f'durationUnit="min" {_WATCH} startDate="{_date(start)}" '
                f'endDate="{_date(start + 1_800)}">\n'
                '  <WorkoutRoute sourceName="Alice’s Apple Watch">\n'
                '   <FileReference path="/workout-routes/route.gpx"/>\n'
                "  </WorkoutRoute>\n </Workout>\n"
                f' <ActivitySummary dateComponents="{_date(start)[:10]}" activeEnergyBurned="512"/>\n'
            )
        out.write("</HealthData>\n")


def run_import(export: Path, url: str, data_dir: str) -> dict[str, Any]:
    """``vitalcast import apple-health`` as a subprocess: wall time, peak RSS, its summary."""
    env = server_env(url, data_dir)
    began = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "vitalcast", "import", "apple-health", str(export), "--user", "b"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    output = proc.stdout.read().decode()
    errors = proc.stderr.read().decode()
    _pid, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - began
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"import failed: {errors.strip()}")
    summary = dict(
        line.split(": ", 1) for line in output.splitlines() if ": " in line and line[0] != " "
    )
    imported = int(summary["imported"].split(" ")[0].replace(",", ""))
    records = int(summary["records read"].replace(",", ""))
    return {
        "records_read": records,
        "samples_imported": imported,
        "seconds": round(elapsed, 2),
        "records_per_s": round(records / elapsed),
        "samples_per_s": round(imported / elapsed),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }


async def ingest_rate(export: Path, url: str) -> dict[str, Any]:
    """The ingest service alone: the export's batches parsed untimed, each ``ingest`` timed."""
    user_id, _ = await create_user(url, "bench-ingest")
    with tempfile.TemporaryDirectory(prefix="vc-bench-data-") as data_dir:
        container = build_container(
            Settings(database_url=url, data_dir=Path(data_dir), secret="b" * 40)
        )
        spent = 0.0
        samples = 0
        try:
            with open_export(export) as (stream, _size):
                for batch in read_batches(stream, batch_size=MAX_SAMPLES):
                    body = {"samples": batch.samples}
                    began = time.perf_counter()
                    await container.ingest.ingest(user_id, body)
                    spent += time.perf_counter() - began
                    samples += len(batch.samples)
        finally:
            await container.db.dispose()
    return {"samples": samples, "seconds": round(spent, 2), "samples_per_s": round(samples / spent)}


async def measure(backend: str, export: Path) -> dict[str, Any]:
    async with database(backend) as url:
        baseline = await ingest_rate(export, url)
    async with database(backend) as url:
        with tempfile.TemporaryDirectory(prefix="vc-bench-data-") as data_dir:
            imported = await asyncio.to_thread(run_import, export, url, data_dir)
    ratio = imported["samples_per_s"] / baseline["samples_per_s"]
    return {
        "import": imported,
        "ingest_service": baseline,
        "ratio_import_to_ingest": round(ratio, 3),
        "meets_targets": ratio >= TARGET_RATIO and imported["peak_rss_mb"] < TARGET_RSS_MB,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=2_000_000)
    parser.add_argument("--backends", default="postgres,sqlite")
    args = parser.parse_args()
    configure_logging("warning")
    with tempfile.TemporaryDirectory(prefix="vc-bench-export-") as folder:
        export = Path(folder) / "export.xml"
        began = time.perf_counter()
        generate(export, args.records)
        result: dict[str, Any] = {
            "benchmark": "import",
            "records": args.records,
            "export_mb": round(export.stat().st_size / 1_048_576, 1),
            "generate_seconds": round(time.perf_counter() - began, 1),
            "batch_size": MAX_SAMPLES,
            "targets": {"ratio_to_ingest": TARGET_RATIO, "peak_rss_mb": TARGET_RSS_MB},
            "load_average_at_start": os.getloadavg()[0],
        }
        for backend in args.backends.split(","):
            result[backend] = await measure(backend, export)
        result["load_average_at_end"] = os.getloadavg()[0]
    emit("import", result)


if __name__ == "__main__":
    asyncio.run(main())
