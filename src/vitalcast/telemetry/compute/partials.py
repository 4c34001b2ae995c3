"""A view's partials: the GROUP BY rows behind its payload, stored beside it in a form that loads
fast, and the digests of the payload's parts (for deltas, see ``history``).

The rows are exactly what ``aggregate.aggregate_rows`` returned for the window (AHEAD rows of a live
window included), kept per metric and sorted by (bucket, phase), so an incremental compute
replaces the rows of the buckets it aggregated again and hands the rest to the same pure assembly
as a full compute. Each metric's rows are stored as their own *segment*: packed little-endian
columns, deflated (zlib level 1: the columns are regular). A metric whose rows a compute did not
change keeps its segment byte for byte, so saving a live update re-encodes only the metrics that
moved::

    b"VCR3" | header | zlib(digests JSON) | per metric: (u8 code length, code, u32 rows,
                                                       u32 segment length, segment)
    segment = zlib( bucket i64[n] | phase u8[n] | count i64[n] | sum i64[n] | min f64[n]
                    | max f64[n] | first i64[n] | last i64[n] )

Decoding is one inflate per metric, a handful of ``array.frombytes`` calls and one ``zip``: no
per-value parsing.
"""

from __future__ import annotations

import struct
import sys
import zlib
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from operator import itemgetter
from typing import Any

import orjson

from vitalcast.json_types import JsonObject
from vitalcast.telemetry.compute.downsample import Row
from vitalcast.telemetry.grid import TelemetryWindow

MAGIC = b"VCR3"
# window start, end, session start, session end (NO_END while live), window minutes, bucket_ms,
# metrics, digests length
_HEADER = struct.Struct("<qqqqiiBI")
_SEGMENT = struct.Struct("<II")
_NO_END = -(2**63)
_COLUMNS = ("q", "B", "q", "q", "d", "d", "q", "q")  # bucket … last (the code is the metric's)
_ORDER = itemgetter(0, 1, 2)
#: a metric's rows are sorted by this
ROW_ORDER = itemgetter(1, 2)
_SWAP = sys.byteorder == "big"


@dataclass(frozen=True, slots=True)
class MetricRows:
    """One metric's rows, sorted by (bucket, phase), and their stored segment when known (a
    metric carried over unchanged from the partials it was decoded from)."""

    rows: Sequence[Row]
    segment: bytes | None = None


@dataclass(frozen=True, slots=True)
class Partials:
    """The rows of one view's last compute, per metric, and the window they were aggregated for."""

    window: TelemetryWindow
    bucket_ms: int
    metrics: Mapping[str, MetricRows]
    #: digests of the payload's parts, as ``changes.part_digests`` makes them
    digests: JsonObject = field(default_factory=dict)

    @classmethod
    def of_rows(
        cls,
        window: TelemetryWindow,
        bucket_ms: int,
        rows: Iterable[Row],
        digests: JsonObject | None = None,
    ) -> Partials:
        """Partials from rows in any order."""
        metrics = {
            code: MetricRows(list(metric_rows))
            for code, metric_rows in groupby(sorted(rows, key=_ORDER), key=itemgetter(0))
        }
        return cls(window, bucket_ms, metrics, digests or {})

    @property
    def rows(self) -> list[Row]:
        """Every row, sorted by (metric, bucket, phase)."""
        return [row for code in sorted(self.metrics) for row in self.metrics[code].rows]


def _segment(rows: Sequence[Row]) -> bytes:
    by_position = list(zip(*rows, strict=True)) if rows else [()] * 9
    columns: list[tuple[Any, ...]] = by_position  # Any: text, ints or floats per Row position
    parts = []
    for position, typecode in enumerate(_COLUMNS, start=1):
        column = array(typecode, columns[position])
        if _SWAP:
            column.byteswap()
        parts.append(column.tobytes())
    return zlib.compress(b"".join(parts), 1)


def _rows(code: str, n: int, segment: bytes) -> list[Row]:
    data = zlib.decompress(segment)
    columns: list[Any] = [[code] * n]  # Any: Row's columns by position (text, int and float arrays)
    offset = 0
    for typecode in _COLUMNS:
        column = array(typecode)
        size = column.itemsize * n
        column.frombytes(data[offset : offset + size])
        if _SWAP:
            column.byteswap()
        columns.append(column)
        offset += size
    if offset != len(data):
        raise ValueError("corrupt telemetry partials segment")
    return list(zip(*columns, strict=True))


def sealed(partials: Partials) -> Partials:
    """``partials`` with every metric's segment encoded (those it has are kept)."""
    metrics = {
        code: metric
        if metric.segment is not None
        else MetricRows(metric.rows, _segment(metric.rows))
        for code, metric in partials.metrics.items()
    }
    return Partials(partials.window, partials.bucket_ms, metrics, partials.digests)


def encode(partials: Partials) -> bytes:
    """The stored form of ``partials`` (a metric's known segment is reused as it is)."""
    window = partials.window
    digests = zlib.compress(orjson.dumps(partials.digests), 1)
    codes = sorted(code for code, metric in partials.metrics.items() if metric.rows)
    parts = [
        MAGIC,
        _HEADER.pack(
            window.start_ms,
            window.end_ms,
            window.session_start_ms,
            _NO_END if window.session_end_ms is None else window.session_end_ms,
            window.window_minutes,
            partials.bucket_ms,
            len(codes),
            len(digests),
        ),
        digests,
    ]
    for code in codes:
        metric = partials.metrics[code]
        segment = metric.segment if metric.segment is not None else _segment(metric.rows)
        name = code.encode()
        parts += [bytes((len(name),)), name, _SEGMENT.pack(len(metric.rows), len(segment)), segment]
    return b"".join(parts)


def decode(blob: bytes) -> Partials:
    """The partials stored as ``blob``; ValueError when it is not a partials blob (another
    format version included: the compute is then full)."""
    if blob[:4] != MAGIC:
        raise ValueError("not a telemetry partials blob")
    try:
        start, end, session_start, session_end, minutes, bucket_ms, n_codes, digests_len = (
            _HEADER.unpack_from(blob, 4)
        )
        offset = 4 + _HEADER.size
        digests = orjson.loads(zlib.decompress(blob[offset : offset + digests_len]))
        offset += digests_len
        metrics: dict[str, MetricRows] = {}
        for _ in range(n_codes):
            length = blob[offset]
            code = blob[offset + 1 : offset + 1 + length].decode()
            offset += 1 + length
            n, size = _SEGMENT.unpack_from(blob, offset)
            offset += _SEGMENT.size
            segment = blob[offset : offset + size]
            offset += size
            metrics[code] = MetricRows(_rows(code, n, segment), segment)
    except (
        zlib.error,
        struct.error,
        IndexError,
        UnicodeDecodeError,
        orjson.JSONDecodeError,
    ) as exc:
        raise ValueError("corrupt telemetry partials blob") from exc
    window = TelemetryWindow(
        start, end, session_start, None if session_end == _NO_END else session_end, minutes
    )
    return Partials(window, bucket_ms, metrics, digests)
