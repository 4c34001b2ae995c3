"""CSV renderings of a session: one row per raw sample, or one row per bucket of its payload.

Times are ISO 8601 in UTC with milliseconds, next to the epoch milliseconds the API uses; values
are in the catalog's canonical unit, written exactly (``repr`` of the float).

Text cells come from clients (a device named ``=HYPERLINK(…)`` arrives through an ingest or an
imported export) and a spreadsheet would run them as formulas: every text cell that begins with
``=``, ``+``, ``-``, ``@``, a tab or a carriage return is written with a leading ``'``, as OWASP
describes for CSV injection. Numeric cells are ours and are written untouched, so a negative
number stays a number.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterable, AsyncIterator, Iterator, Sequence

import orjson

from vitalcast.catalog import BY_CODE, MetricKind
from vitalcast.clock import iso_ms
from vitalcast.samples import Sample
from vitalcast.telemetry.compute.payload import PackedPayload

SAMPLE_COLUMNS = (
    "start",
    "end",
    "start_ms",
    "end_ms",
    "metric",
    "value",
    "unit",
    "source",
    "record_id",
    "device",
)
BUCKET_COLUMNS = (
    "bucket_start",
    "bucket_start_ms",
    "bucket_ms",
    "metric",
    "unit",
    "kind",
    "count",
    "mean",
    "min",
    "max",
    "sum",
)


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def text_cell(value: str) -> str:
    """``value`` made inert for spreadsheets: a leading ``'`` when it could start a formula."""
    return "'" + value if value.startswith(_FORMULA_START) else value


def _rows_csv(rows: Iterator[Sequence[object]] | Sequence[Sequence[object]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue().encode()


async def samples_csv(partitions: AsyncIterable[Sequence[Sample]]) -> AsyncIterator[bytes]:
    """The header, then one encoded chunk per partition of samples."""
    yield _rows_csv([SAMPLE_COLUMNS])
    async for partition in partitions:
        yield _rows_csv(
            (
                iso_ms(s.start_ms),
                iso_ms(s.end_ms),
                s.start_ms,
                s.end_ms,
                text_cell(s.metric),
                repr(s.value),
                text_cell(s.unit),
                text_cell(s.source),
                text_cell(s.record_id),
                text_cell(s.device or ""),
            )
            for s in partition
        )


def buckets_csv(payload: PackedPayload) -> bytes:
    """Every bucket of every metric in the payload, metrics in catalog order."""
    head = orjson.loads(payload.head + b"}}")
    bucket_ms = head["bucket_ms"]
    rows: list[Sequence[object]] = [BUCKET_COLUMNS]
    for code in BY_CODE:
        fragment = payload.fragments.get(code)
        if fragment is None:
            continue
        series = orjson.loads(b"{" + fragment + b"}")[code]
        metric = BY_CODE[code]
        scalar = metric.kind is MetricKind.SCALAR
        for i, t in enumerate(series["t"]):
            rows.append(
                (
                    iso_ms(t),
                    t,
                    bucket_ms,
                    text_cell(code),
                    text_cell(metric.unit),
                    text_cell(metric.kind.value),
                    series["count"][i],
                    repr(float(series["mean"][i])) if scalar else "",
                    repr(float(series["min"][i])) if scalar else "",
                    repr(float(series["max"][i])) if scalar else "",
                    "" if scalar else repr(float(series["sum"][i])),
                )
            )
    return _rows_csv(rows)
