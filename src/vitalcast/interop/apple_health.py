"""Apple Health exports (``export.zip`` or its ``export.xml``) read as a stream of request-shaped
samples, in batches.

The file is parsed with defusedxml's SAX reader over expat: no element tree is built at all, so
memory does not grow with the file (real exports run to hundreds of MB and millions of records).
Apple's export opens with an internal DTD subset, so DTDs are allowed; entity declarations and
external references are refused, which rules out entity-expansion bombs and network or file
access by the parser.

Only top-level ``Record`` elements of the catalog's HealthKit types become samples. Everything
else Apple writes (``MetadataEntry``, ``Workout`` with its routes and events, ``ActivitySummary``,
``Correlation``, whose ``Record`` children repeat top-level records) is skipped; ``Workout``
elements are handed out separately for callers that turn them into sessions.

Hostile files are bounded, not trusted: only regular files are opened (``/dev/zero`` would read
forever), no tag is buffered beyond ``MAX_MARKUP_BYTES`` (``markup_guard``), a record with a field
longer than ``MAX_FIELD_CHARS`` is ``MALFORMED_RECORD``, nesting stops at ``MAX_DEPTH``, at most
``MAX_TYPE_NAMES`` unknown type names are counted one by one, and any zip fault is one
``ExportError``. The import's memory therefore stays flat whatever the file holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import lzma
import os
import re
import stat
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO
from xml.sax import SAXParseException
from xml.sax.handler import ContentHandler
from xml.sax.xmlreader import AttributesImpl

from defusedxml import DefusedXmlException
from defusedxml.expatreader import create_parser

from vitalcast.clock import epoch_ms
from vitalcast.interop.markup_guard import OVERSIZED, MarkupGuard, MarkupTooLong
from vitalcast.json_types import JsonObject

SOURCE = "healthkit"
CHUNK_BYTES = 1 << 18
#: the longest tag handed to the XML parser whole (Apple's longest are a few hundred bytes)
MAX_MARKUP_BYTES = 1 << 20
#: the longest attribute a record may carry; a longer one makes it MALFORMED_RECORD
MAX_FIELD_CHARS = 4_096
#: deeper nesting ends the import (Apple's deepest is four levels)
MAX_DEPTH = 32
#: distinct unknown record types counted by name; the rest are counted under OTHER_TYPES
MAX_TYPE_NAMES = 1_000
MAX_TYPE_NAME_CHARS = 200
OTHER_TYPES = "(other types)"
_MAX_DATE_CHARS = 64

#: HealthKit record type → catalog metric code
METRIC_OF_TYPE: dict[str, str] = {
    "HKQuantityTypeIdentifierHeartRate": "heart_rate",
    "HKQuantityTypeIdentifierHeartRateVariabilitySDNN": "heart_rate_variability",
    "HKQuantityTypeIdentifierOxygenSaturation": "blood_oxygen",
    "HKQuantityTypeIdentifierRespiratoryRate": "respiratory_rate",
    "HKQuantityTypeIdentifierAppleSleepingWristTemperature": "skin_temperature",
    "HKQuantityTypeIdentifierStepCount": "steps",
    "HKQuantityTypeIdentifierActiveEnergyBurned": "active_energy_burned",
}
# HealthKit writes SpO2 with unit "%" but the value as a fraction (0.97); the catalog's
# "fraction" alias converts it (and refuses anything outside 0…1).
_UNIT_OF = {("HKQuantityTypeIdentifierOxygenSaturation", "%"): "fraction"}
_KEY = re.compile(r"\w+")
_MAX_DEVICE = 200
_DEVICE_CACHE_SIZE = 1_000

#: a record the importer itself cannot turn into a sample: no parseable date or numeric value
MALFORMED_RECORD = "MALFORMED_RECORD"


class ExportError(Exception):
    """The file is not a readable, complete Apple Health export; ``str()`` is one line."""


@dataclass(frozen=True, slots=True)
class Workout:
    """A ``Workout`` element: its activity, source and time span."""

    activity: str
    source_name: str
    start: str
    end: str
    start_ms: int
    end_ms: int


@dataclass
class Batch:
    """Up to ``batch_size`` samples, each a ``POST /samples`` item, plus what was left out."""

    samples: list[JsonObject] = field(default_factory=list)
    workouts: list[Workout] = field(default_factory=list)
    #: top-level records read into this batch, whatever became of them
    records: int = 0
    #: record type → records of a type the catalog does not know
    skipped_types: Counter[str] = field(default_factory=Counter)
    #: catalog records starting before ``since_ms``
    before_since: int = 0
    #: records the importer could not read (``MALFORMED_RECORD``)
    malformed: int = 0
    #: bytes of the export parsed when the batch closed (for progress)
    bytes_read: int = 0


def count_type(counter: Counter[str], name: str, records: int = 1) -> None:
    """Add ``records`` of the unknown type ``name`` to ``counter``, which never holds more than
    ``MAX_TYPE_NAMES`` names (plus ``OTHER_TYPES``) however many types a file invents."""
    name = name[:MAX_TYPE_NAME_CHARS]
    if name not in counter and len(counter) >= MAX_TYPE_NAMES:
        name = OTHER_TYPES
    counter[name] += records


def iso_of(text: str) -> str:
    """Apple's ``2018-09-10 02:28:55 -0700`` as ISO 8601 (``2018-09-10T02:28:55-07:00``);
    anything else unchanged, for ``datetime.fromisoformat`` to judge."""
    if len(text) == 25 and text[10] == " " and text[19] == " " and text[20] in "+-":
        return f"{text[:10]}T{text[11:19]}{text[20:23]}:{text[23:]}"
    return text


def instant(text: str) -> tuple[str, int | None] | None:
    """(ISO text, epoch ms or None when it has no offset) of an export date; None if unreadable."""
    iso = iso_of(text)
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return None
    return iso, None if moment.tzinfo is None else epoch_ms(moment)


class _Instants:
    """``instant`` with a small memory: an instantaneous record's end equals its start, and
    neighbouring records share dates, so most dates are parsed once."""

    def __init__(self, size: int = 4_096) -> None:
        self._size = size
        self._known: dict[str, tuple[str, int | None] | None] = {}

    def __call__(self, text: str | None) -> tuple[str, int | None] | None:
        if not text or len(text) > _MAX_DATE_CHARS:
            return None
        known = self._known
        if text in known:
            return known[text]
        if len(known) >= self._size:
            known.clear()
        found = known[text] = instant(text)
        return found


def record_id(record_type: str, source_name: str, start: int | str, end: int | str) -> str:
    """Stable identity of a HealthKit sample: type, source name, start and end, as epoch ms so
    that a re-export written in another time zone keeps its ids (the text of a date without an
    offset stands in; the ingest service rejects such a sample anyway). The value is not part of
    it, so a corrected value in a later export updates the stored sample."""
    key = f"{record_type}\x1f{source_name}\x1f{start}\x1f{end}".encode()
    return "hk-" + hashlib.blake2b(key, digest_size=16).hexdigest()


def device_hardware(device: str) -> str | None:
    """The ``hardware`` field of Apple's device description, in one pass: fields are
    ``key:value`` separated by ``", "`` (a ``", "`` not followed by a key belongs to the value),
    the last one closed by ``>``. A backtracking pattern took minutes on a 200 KB ``x:x:x:…``
    field; splitting is linear in the field's length."""
    if not device.endswith(">"):
        return None
    hardware: list[str] | None = None
    in_hardware = False
    for part in device[:-1].split(", "):
        key, colon, value = part.partition(":")
        if colon and _KEY.fullmatch(key):
            in_hardware = key == "hardware"
            if in_hardware:
                hardware = [value]
        elif in_hardware and hardware is not None:
            hardware.append(part)
    return ", ".join(hardware) if hardware else None


class _DeviceLabels:
    """``Alice's Apple Watch (Watch3,2)`` from a source name and Apple's device description
    (``<<HKDevice: 0x…>, name:Apple Watch, …, hardware:Watch3,2, software:5.2>``). The object
    address and software version change between exports, so they stay out of the label."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str | None], str] = {}

    def __call__(self, source_name: str, device: str | None) -> str:
        key = (source_name, device)
        label = self._cache.get(key)
        if label is None:
            hardware = None
            if device:
                hardware = device_hardware(device)
            label = f"{source_name} ({hardware})" if hardware else source_name
            label = label[:_MAX_DEVICE]
            if len(self._cache) >= _DEVICE_CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = label
        return label


class _Handler(ContentHandler):
    """Collects finished top-level records and workouts into the open batch."""

    def __init__(self, since_ms: int | None) -> None:
        super().__init__()
        self.batch = Batch()
        self._since_ms = since_ms
        self._depth = 0
        self._labels = _DeviceLabels()
        self._instant = _Instants()
        self._open: JsonObject | None = None

    def startElement(self, name: str, attrs: AttributesImpl) -> None:
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise ExportError(f"elements are nested deeper than {MAX_DEPTH} levels")
        if self._depth == 1:
            if name != "HealthData":
                raise ExportError(f"not an Apple Health export (root element <{name}>)")
        elif self._depth == 2:
            if name == "Record":
                self._record(attrs)
            elif name == "Workout":
                self._workout(attrs)

    def endElement(self, name: str) -> None:
        if self._depth == 2 and self._open is not None:
            self.batch.samples.append(self._open)
            self._open = None
        self._depth -= 1

    def _record(self, attrs: AttributesImpl) -> None:
        batch = self.batch
        batch.records += 1
        if attrs.get(OVERSIZED) is not None:
            batch.malformed += 1
            return
        record_type = attrs.get("type") or ""
        metric = METRIC_OF_TYPE.get(record_type)
        if metric is None:
            count_type(batch.skipped_types, record_type or "(no type)")
            return
        source_name = attrs.get("sourceName") or ""
        unit = attrs.get("unit")
        device = attrs.get("device")
        start = self._instant(attrs.get("startDate"))
        end = self._instant(attrs.get("endDate") or attrs.get("startDate"))
        text = attrs.get("value")
        try:
            value = None if text is None or len(text) > _MAX_DATE_CHARS else float(text)
        except ValueError:
            value = None
        if (
            start is None
            or end is None
            or value is None
            or len(source_name) > MAX_FIELD_CHARS
            or (unit is not None and len(unit) > MAX_FIELD_CHARS)
            or (device is not None and len(device) > MAX_FIELD_CHARS)
        ):
            batch.malformed += 1
            return
        start_iso, start_ms = start
        end_iso, end_ms = end
        if self._since_ms is not None and start_ms is not None and start_ms < self._since_ms:
            batch.before_since += 1
            return
        # Stored when the element ends: a batch holds only records read to their end tag.
        self._open = {
            "source": SOURCE,
            "record_id": record_id(
                record_type,
                source_name,
                start_iso if start_ms is None else start_ms,
                end_iso if end_ms is None else end_ms,
            ),
            "metric": metric,
            "value": value,
            "unit": _UNIT_OF.get((record_type, unit or ""), unit),
            "start": start_iso,
            "end": end_iso,
            "device": self._labels(source_name or SOURCE, device),
        }

    def _workout(self, attrs: AttributesImpl) -> None:
        start = self._instant(attrs.get("startDate"))
        end = self._instant(attrs.get("endDate"))
        if start is None or end is None or start[1] is None or end[1] is None:
            return
        if self._since_ms is not None and start[1] < self._since_ms:
            return
        if end[1] < start[1] or attrs.get(OVERSIZED) is not None:
            # A workout that ends before it starts cannot become a session: a rejected
            # record, never a session created and left open.
            self.batch.malformed += 1
            return
        activity = (attrs.get("workoutActivityType") or "").removeprefix("HKWorkoutActivityType")
        self.batch.workouts.append(
            Workout(
                activity=activity[:_MAX_DEVICE] or "Workout",
                source_name=(attrs.get("sourceName") or "")[:_MAX_DEVICE],
                start=start[0],
                end=end[0],
                start_ms=start[1],
                end_ms=end[1],
            )
        )


@contextlib.contextmanager
def open_export(path: Path) -> Iterator[tuple[IO[bytes], int]]:
    """The export's XML as a binary stream and its size in bytes: ``path`` itself, or the
    ``export.xml`` inside an ``export.zip`` (decompressed as it is read). Only a regular file is
    read (a device or a pipe could stream forever): it is opened without blocking and judged by
    the descriptor, so it cannot be swapped between the check and the read. Only opening is
    guarded here; errors of the caller's block pass through unchanged."""
    with contextlib.ExitStack() as stack:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
            stack.callback(os.close, fd)
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ExportError(f"{path} is not a regular file")
            os.set_blocking(fd, True)
            file = stack.enter_context(os.fdopen(fd, "rb", closefd=False))
            if zipfile.is_zipfile(file):
                file.seek(0)
                archive = stack.enter_context(zipfile.ZipFile(file))
                members = [
                    member
                    for member in archive.infolist()
                    if member.filename.rsplit("/", 1)[-1] == "export.xml"
                ]
                if not members:
                    raise ExportError(f"{path.name} holds no export.xml")
                if len(members) > 1:
                    raise ExportError(
                        f"{path.name} holds {len(members)} export.xml files; "
                        "a Health export has one"
                    )
                stream: IO[bytes] = stack.enter_context(archive.open(members[0]))
                size = members[0].file_size
            else:
                file.seek(0)
                stream = file
                size = info.st_size
        except (OSError, zipfile.BadZipFile) as exc:
            raise ExportError(f"cannot read {path.name}: {exc}") from None
        except NotImplementedError:
            raise ExportError(
                f"{path.name} is compressed with a method this reader does not support"
            ) from None
        except RuntimeError as exc:
            # zipfile's only RuntimeError on open: an encrypted member without a password
            raise ExportError(f"cannot read {path.name}: {exc}") from None
        yield stream, size


def _read(stream: IO[bytes], name: str) -> bytes:
    """The next chunk of the export; a damaged or unreadable zip member is an ExportError."""
    try:
        return stream.read(CHUNK_BYTES)
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, lzma.LZMAError) as exc:
        raise ExportError(f"cannot read {name}: {type(exc).__name__}: {exc}") from None
    except NotImplementedError:
        raise ExportError(f"{name} is compressed with an unsupported method") from None


def read_batches(
    stream: IO[bytes], *, batch_size: int, since_ms: int | None = None, name: str = "export.xml"
) -> Iterator[Batch]:
    """Parse ``stream`` and yield batches of at most ``batch_size`` samples. A batch is yielded
    only once every record in it was read completely; a broken or truncated file raises
    ``ExportError`` (after the complete batches before the fault were yielded)."""
    handler = _Handler(since_ms)
    parser = create_parser()
    parser.setContentHandler(handler)
    guard = MarkupGuard(MAX_MARKUP_BYTES)
    consumed = 0
    try:
        while True:
            chunk = _read(stream, name)
            if not chunk:
                break
            consumed += len(chunk)
            parser.feed(guard.feed(chunk))
            while len(handler.batch.samples) >= batch_size:
                yield _split(handler, batch_size, consumed)
        parser.feed(guard.close())
        parser.close()
    except SAXParseException as exc:
        raise ExportError(
            f"{name} is broken or incomplete: {exc.getMessage()} "
            f"(line {exc.getLineNumber()}, column {exc.getColumnNumber()})"
        ) from None
    except DefusedXmlException as exc:
        raise ExportError(
            f"{name} declares XML entities or external references ({type(exc).__name__}); "
            "Health exports never do, so it was refused"
        ) from None
    except MarkupTooLong as exc:
        raise ExportError(f"{name} was refused: {exc}") from None
    except LookupError:
        # the XML declaration names an encoding Python does not know (a mutated "TF-8")
        raise ExportError(f"{name} declares an unknown character encoding") from None
    while len(handler.batch.samples) > batch_size:
        yield _split(handler, batch_size, consumed)
    last = handler.batch
    last.bytes_read = consumed
    yield last


def _split(handler: _Handler, batch_size: int, consumed: int) -> Batch:
    """Close the open batch after ``batch_size`` samples; the rest opens the next one."""
    full = handler.batch
    handler.batch = Batch(samples=full.samples[batch_size:])
    # Counts of what was skipped stay with the batch that closes; they are totals either way.
    full.samples = full.samples[:batch_size]
    full.bytes_read = consumed
    return full


def since_ms_of(text: str) -> int:
    """``--since``: an ISO date or date-time, naive = UTC, as epoch milliseconds."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return epoch_ms(moment)
