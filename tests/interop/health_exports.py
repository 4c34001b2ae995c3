"""Apple Health ``export.xml`` files in the structure Apple writes: a DOCTYPE with an internal
subset, ``ExportDate``, ``Me``, ``Record`` elements (some with ``MetadataEntry`` or HRV beat
lists), a ``Correlation`` repeating records, ``Workout`` with events and a ``WorkoutRoute``, and
``ActivitySummary`` elements."""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from xml.sax.saxutils import quoteattr

HEADER = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE HealthData [
<!-- HealthKit Export Version: 13 -->
<!ELEMENT HealthData (ExportDate,Me,(Record|Correlation|Workout|ActivitySummary|ClinicalRecord|Audiogram|VisionPrescription)*)>
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
  HKCharacteristicTypeIdentifierBloodType           CDATA #REQUIRED
  HKCharacteristicTypeIdentifierFitzpatrickSkinType CDATA #REQUIRED
  HKCharacteristicTypeIdentifierCardioFitnessMedicationsUse CDATA #REQUIRED
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
<!-- Note: Any Records that appear as children of a correlation also appear as top-level records in this document. -->
<!ELEMENT Correlation ((MetadataEntry|Record)*)>
<!ATTLIST Correlation
  type          CDATA #REQUIRED
  sourceName    CDATA #REQUIRED
  sourceVersion CDATA #IMPLIED
  device        CDATA #IMPLIED
  creationDate  CDATA #IMPLIED
  startDate     CDATA #REQUIRED
  endDate       CDATA #REQUIRED
>
<!ELEMENT Workout ((MetadataEntry|WorkoutEvent|WorkoutRoute|WorkoutStatistics)*)>
<!ATTLIST Workout
  workoutActivityType   CDATA #REQUIRED
  duration              CDATA #IMPLIED
  durationUnit          CDATA #IMPLIED
  sourceName            CDATA #REQUIRED
  sourceVersion         CDATA #IMPLIED
  device                CDATA #IMPLIED
  creationDate          CDATA #IMPLIED
  startDate             CDATA #REQUIRED
  endDate               CDATA #REQUIRED
>
<!ELEMENT WorkoutEvent EMPTY>
<!ELEMENT WorkoutRoute ((MetadataEntry|FileReference)*)>
<!ATTLIST WorkoutRoute
  sourceName    CDATA #REQUIRED
  startDate     CDATA #IMPLIED
  endDate       CDATA #IMPLIED
>
<!ELEMENT FileReference EMPTY>
<!ATTLIST FileReference
  path CDATA #REQUIRED
>
<!ELEMENT ActivitySummary EMPTY>
<!ATTLIST ActivitySummary
  dateComponents           CDATA #IMPLIED
  activeEnergyBurned       CDATA #IMPLIED
  activeEnergyBurnedGoal   CDATA #IMPLIED
  activeEnergyBurnedUnit   CDATA #IMPLIED
>
<!ELEMENT MetadataEntry EMPTY>
<!ATTLIST MetadataEntry
  key   CDATA #REQUIRED
  value CDATA #REQUIRED
>
<!ELEMENT HeartRateVariabilityMetadataList (InstantaneousBeatsPerMinute*)>
<!ELEMENT InstantaneousBeatsPerMinute EMPTY>
<!ATTLIST InstantaneousBeatsPerMinute
  bpm  CDATA #REQUIRED
  time CDATA #REQUIRED
>
]>
<HealthData locale="en_US">
 <ExportDate value="2026-11-01 08:00:00 -0700"/>
 <Me HKCharacteristicTypeIdentifierDateOfBirth="1985-04-02" HKCharacteristicTypeIdentifierBiologicalSex="HKBiologicalSexFemale" HKCharacteristicTypeIdentifierBloodType="HKBloodTypeNotSet" HKCharacteristicTypeIdentifierFitzpatrickSkinType="HKFitzpatrickSkinTypeNotSet" HKCharacteristicTypeIdentifierCardioFitnessMedicationsUse="None"/>
"""
FOOTER = "</HealthData>\n"

WATCH = "Alice’s Apple Watch"
PHONE = "Alice’s iPhone"
WATCH_DEVICE = (
    "<<HKDevice: 0x283bd1c20>, name:Apple Watch, manufacturer:Apple Inc., model:Watch, "
    "hardware:Watch6,2, software:10.1>"
)
PHONE_DEVICE = (
    "<<HKDevice: 0x2812f8a50>, name:iPhone, manufacturer:Apple Inc., model:iPhone, "
    "hardware:iPhone14,2, software:17.1>"
)
PACIFIC = timezone(timedelta(hours=-7))


def apple_date(moment: datetime) -> str:
    """Apple's date format: local time with a ``-0700`` style offset."""
    return moment.strftime("%Y-%m-%d %H:%M:%S %z")


def epoch_ms_of(moment: datetime) -> int:
    return int(moment.timestamp()) * 1000


@dataclass(frozen=True)
class Rec:
    """One ``Record`` element."""

    type: str
    unit: str | None
    value: str
    start: datetime
    end: datetime | None = None
    source: str = WATCH
    device: str | None = WATCH_DEVICE
    #: extra children: "metadata" or "hrv"
    children: str = ""

    def xml(self) -> str:
        end = self.end or self.start
        attrs = {
            "type": self.type,
            "sourceName": self.source,
            "sourceVersion": "10.1",
            "device": self.device,
            "unit": self.unit,
            "creationDate": apple_date(end),
            "startDate": apple_date(self.start),
            "endDate": apple_date(end),
            "value": self.value,
        }
        text = " <Record" + "".join(
            f" {k}={quoteattr(v)}" for k, v in attrs.items() if v is not None
        )
        if self.children == "metadata":
            return (
                text + ">\n"
                '  <MetadataEntry key="HKMetadataKeyHeartRateMotionContext" value="0"/>\n'
                '  <MetadataEntry key="HKMetadataKeySyncVersion" value="2"/>\n'
                " </Record>\n"
            )
        if self.children == "hrv":
            return (
                text + ">\n"
                "  <HeartRateVariabilityMetadataList>\n"
                '   <InstantaneousBeatsPerMinute bpm="61" time="8:03:21.55 AM"/>\n'
                '   <InstantaneousBeatsPerMinute bpm="63" time="8:03:22.52 AM"/>\n'
                "  </HeartRateVariabilityMetadataList>\n"
                " </Record>\n"
            )
        return text + "/>\n"


def workout(start: datetime, minutes: int, activity: str = "Running") -> str:
    end = start + timedelta(minutes=minutes)
    return (
        f' <Workout workoutActivityType="HKWorkoutActivityType{activity}" duration="{minutes}" '
        f'durationUnit="min" sourceName={quoteattr(WATCH)} sourceVersion="10.1" '
        f"device={quoteattr(WATCH_DEVICE)} creationDate={quoteattr(apple_date(end))} "
        f"startDate={quoteattr(apple_date(start))} endDate={quoteattr(apple_date(end))}>\n"
        '  <MetadataEntry key="HKIndoorWorkout" value="0"/>\n'
        f'  <WorkoutEvent type="HKWorkoutEventTypeSegment" date={quoteattr(apple_date(start))}/>\n'
        f"  <WorkoutRoute sourceName={quoteattr(WATCH)} startDate={quoteattr(apple_date(start))} "
        f"endDate={quoteattr(apple_date(end))}>\n"
        '   <MetadataEntry key="HKMetadataKeySyncVersion" value="2"/>\n'
        '   <FileReference path="/workout-routes/route_2025-06-01_8.00am.gpx"/>\n'
        "  </WorkoutRoute>\n"
        " </Workout>\n"
    )


def correlation(systolic: Rec) -> str:
    """A blood-pressure correlation whose child repeats a top-level record (as Apple does)."""
    return (
        ' <Correlation type="HKCorrelationTypeIdentifierBloodPressure" '
        f"sourceName={quoteattr(PHONE)} startDate={quoteattr(apple_date(systolic.start))} "
        f"endDate={quoteattr(apple_date(systolic.start))}>\n"
        '  <MetadataEntry key="HKWasUserEntered" value="1"/>\n'
        " " + systolic.xml() + " </Correlation>\n"
    )


ACTIVITY_SUMMARY = (
    ' <ActivitySummary dateComponents="2025-06-01" activeEnergyBurned="512.3" '
    'activeEnergyBurnedGoal="600" activeEnergyBurnedUnit="Cal"/>\n'
)


def export_text(records: Sequence[Rec], extras: Sequence[str] = ()) -> str:
    return HEADER + "".join(r.xml() for r in records) + "".join(extras) + FOOTER


def write_export(path: Path, records: Sequence[Rec], extras: Sequence[str] = ()) -> Path:
    path.write_text(export_text(records, extras), encoding="utf-8")
    return path


def write_zip(path: Path, records: Sequence[Rec], extras: Sequence[str] = ()) -> Path:
    """``export.zip`` as the Health app shares it: a folder with export.xml and a CDA twin."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("apple_health_export/export_cda.xml", "<ClinicalDocument/>")
        archive.writestr("apple_health_export/export.xml", export_text(records, extras))
    return path


# 2025-06-01 08:00 in Pacific daylight time (15:00 UTC): the fixture's morning
MORNING = datetime(2025, 6, 1, 8, 0, tzinfo=PACIFIC)
assert MORNING.astimezone(UTC).hour == 15


HR = "HKQuantityTypeIdentifierHeartRate"
HRV = "HKQuantityTypeIdentifierHeartRateVariabilitySDNN"
SPO2 = "HKQuantityTypeIdentifierOxygenSaturation"
RESP = "HKQuantityTypeIdentifierRespiratoryRate"
WRIST = "HKQuantityTypeIdentifierAppleSleepingWristTemperature"
STEPS = "HKQuantityTypeIdentifierStepCount"
ENERGY = "HKQuantityTypeIdentifierActiveEnergyBurned"


def at(minutes: float) -> datetime:
    return MORNING + timedelta(minutes=minutes)


@dataclass(frozen=True)
class Expected:
    """What one catalog record must become in health_samples."""

    metric: str
    value: float
    unit: str
    start: datetime
    end: datetime
    device: str


def catalog_fixture() -> tuple[list[Rec], list[Expected]]:
    """Every catalog HealthKit type (every accepted export unit), the same instant from two
    sources, and what each must store (canonical units, UTC instants, device labels)."""
    watch, phone = f"{WATCH} (Watch6,2)", f"{PHONE} (iPhone14,2)"
    pairs = [
        (Rec(HR, "count/min", "72", at(0), children="metadata"), ("heart_rate", 72.0, "bpm")),
        (
            Rec(HR, "count/min", "74", at(0), source=PHONE, device=PHONE_DEVICE),
            ("heart_rate", 74.0, "bpm"),
        ),
        (Rec(HRV, "ms", "48.5", at(1), children="hrv"), ("heart_rate_variability", 48.5, "ms")),
        (Rec(SPO2, "%", "0.97", at(2)), ("blood_oxygen", 97.0, "%")),
        (Rec(RESP, "count/min", "15.5", at(3)), ("respiratory_rate", 15.5, "breaths/min")),
        (Rec(WRIST, "degC", "35.2", at(4), at(4.5)), ("skin_temperature", 35.2, "degC")),
        (Rec(WRIST, "degF", "95", at(5), at(5.5)), ("skin_temperature", 35.0, "degC")),
        (
            Rec(STEPS, "count", "120", at(6), at(16), source=PHONE, device=PHONE_DEVICE),
            ("steps", 120.0, "count"),
        ),
        (Rec(ENERGY, "kcal", "12.5", at(6), at(7)), ("active_energy_burned", 12.5, "kcal")),
        (Rec(ENERGY, "Cal", "3", at(7), at(8)), ("active_energy_burned", 3.0, "kcal")),
        (Rec(ENERGY, "kJ", "41.84", at(8), at(9)), ("active_energy_burned", 10.0, "kcal")),
    ]
    records = [rec for rec, _ in pairs]
    expected = [
        Expected(
            metric,
            value,
            unit,
            rec.start,
            rec.end or rec.start,
            watch if rec.source == WATCH else phone,
        )
        for rec, (metric, value, unit) in pairs
    ]
    return records, expected


UNKNOWN_TYPES = [
    Rec("HKQuantityTypeIdentifierBodyMass", "kg", "61.2", at(20), source=PHONE, device=None),
    Rec(
        "HKCategoryTypeIdentifierSleepAnalysis",
        None,
        "HKCategoryValueSleepAnalysisAsleepCore",
        at(21),
        at(80),
    ),
    Rec("HKQuantityTypeIdentifierDistanceWalkingRunning", "km", "0.42", at(22), at(30)),
]
REJECTED = [
    (Rec(HR, "count/min", "400", at(30)), "VALUE_OUT_OF_RANGE"),
    # SpO2 written as a percentage although HealthKit's unit says fraction: not 0…1
    (Rec(SPO2, "%", "97", at(31)), "VALUE_OUT_OF_RANGE"),
    (Rec(RESP, "count/s", "0.25", at(32)), "UNIT_NOT_ACCEPTED"),
    (Rec(HR, "count/min", "fast", at(33)), "MALFORMED_RECORD"),
]


def full_export(path: Path) -> Path:
    """Catalog records, unknown types, rejected ones, a correlation, a workout, a summary."""
    records, _ = catalog_fixture()
    systolic = Rec(
        "HKQuantityTypeIdentifierBloodPressureSystolic",
        "mmHg",
        "118",
        at(40),
        source=PHONE,
        device=None,
    )
    return write_export(
        path,
        [*records, *UNKNOWN_TYPES, *(r for r, _ in REJECTED), systolic],
        [correlation(systolic), workout(at(-30), 25), ACTIVITY_SUMMARY],
    )
