"""A view's partials: the GROUP BY rows behind its payload, stored beside it in a form that loads
fast, and the digests of the payload's parts (for deltas, see ``history``).

The rows are exactly what ``compute.aggregate_rows`` returned for the window (AHEAD rows of a live
window included), so an incremental compute replaces some of them and hands the rest to the same
pure assembly as a full compute. They are stored column by column as packed little-endian
arrays, sorted by (metric, bucket, phase), and the whole is deflated (zlib level 1: the columns
are regular, so a 24-hour view's shrink severalfold for a fraction of a millisecond)::

    b"VCR2" | zlib( header | code table | metric index u8[n] | bucket i64[n] | phase u8[n]
                  | count i64[n] | sum i64[n] | min f64[n] | max f64[n] | first i64[n]
                  | last i64[n] | digests (JSON) )

Decoding is one inflate, a handful of ``array.frombytes`` calls and one ``zip``: no per-value
parsing.
"""

from __future__ import annotations

import struct
import sys
import zlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import orjson

from vitalcast.telemetry.downsample import Row
from vitalcast.telemetry.models import TelemetryWindow

MAGIC = b"VCR2"
# window start, end, session start, session end (NO_END while live), window minutes, bucket_ms,
# rows, metric codes
_HEADER = struct.Struct("<qqqqiiIB")
_NO_END = -(2**63)
_COLUMNS = ("q", "B", "q", "q", "d", "d", "q", "q")  # bucket … last (after the metric index)
_ORDER = itemgetter(0, 1, 2)
_SWAP = sys.byteorder == "big"


@dataclass(frozen=True, slots=True)
class Partials:
    """The rows of one view's last compute and the window they were aggregated for."""

    window: TelemetryWindow
    bucket_ms: int
    rows: Sequence[Row]
    #: digests of the payload's parts, as ``history.part_digests`` makes them
    digests: dict[str, Any] = field(default_factory=dict)


def _column(typecode: str, values: Any) -> bytes:
    column = array(typecode, values)
    if _SWAP:
        column.byteswap()
    return column.tobytes()


def encode(partials: Partials) -> bytes:
    """The stored form of ``partials``."""
    rows = sorted(partials.rows, key=_ORDER)
    columns: list[tuple[Any, ...]] = list(zip(*rows, strict=True)) if rows else [()] * 9
    codes = sorted(set(columns[0]))
    index = {code: i for i, code in enumerate(codes)}
    window = partials.window
    parts = [
        _HEADER.pack(
            window.start_ms,
            window.end_ms,
            window.session_start_ms,
            _NO_END if window.session_end_ms is None else window.session_end_ms,
            window.window_minutes,
            partials.bucket_ms,
            len(rows),
            len(codes),
        )
    ]
    for code in codes:
        name = code.encode()
        parts += [bytes((len(name),)), name]
    parts.append(bytes(map(index.__getitem__, columns[0])))
    for position, typecode in enumerate(_COLUMNS, start=1):
        parts.append(_column(typecode, columns[position]))
    parts.append(orjson.dumps(partials.digests))
    return MAGIC + zlib.compress(b"".join(parts), 1)


def decode(blob: bytes) -> Partials:
    """The partials stored as ``blob``; ValueError when it is not a partials blob (another
    format version included: the compute is then full)."""
    if blob[:4] != MAGIC:
        raise ValueError("not a telemetry partials blob")
    try:
        data = zlib.decompress(blob[4:])
    except zlib.error as exc:
        raise ValueError("corrupt telemetry partials blob") from exc
    start, end, session_start, session_end, minutes, bucket_ms, n, n_codes = _HEADER.unpack_from(
        data
    )
    offset = _HEADER.size
    codes: list[str] = []
    for _ in range(n_codes):
        length = data[offset]
        codes.append(data[offset + 1 : offset + 1 + length].decode())
        offset += 1 + length
    columns: list[Any] = [[codes[i] for i in data[offset : offset + n]]]
    offset += n
    for typecode in _COLUMNS:
        column = array(typecode)
        size = column.itemsize * n
        column.frombytes(data[offset : offset + size])
        if _SWAP:
            column.byteswap()
        columns.append(column)
        offset += size
    window = TelemetryWindow(
        start, end, session_start, None if session_end == _NO_END else session_end, minutes
    )
    rows: list[Row] = list(zip(*columns, strict=True))
    return Partials(window, bucket_ms, rows, orjson.loads(data[offset:]))
