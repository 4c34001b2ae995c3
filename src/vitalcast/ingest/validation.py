"""Pure validation of an ingest request body: raw JSON → normalised samples and per-sample
rejections with stable codes. No I/O, so every rule is testable without a database.

A structurally broken request (not an object, a sample that is not an object, a field of the wrong
type, an unparseable timestamp) is a whole-request 422: nothing of it is applied. Content rules
(unknown metric, unit, range, time) reject single samples; the rest of the batch is stored.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from vitalcast import timerange
from vitalcast.catalog import BY_CODE
from vitalcast.clock import epoch_ms
from vitalcast.errors import InvalidInput, PayloadTooLarge
from vitalcast.samples import Sample

MAX_SAMPLES = 5_000
MAX_BODY_BYTES = 5 * 1024 * 1024
_MAX_TEXT = {"source": 64, "record_id": 200, "metric": 64, "unit": 32, "device": 200}
_SAMPLE_FIELDS = frozenset(
    {"source", "record_id", "metric", "value", "unit", "start", "end", "device"}
)


class RejectionCode(enum.StrEnum):
    """Why one sample of a batch was not stored."""

    #: the metric code is not in the catalog
    UNKNOWN_METRIC = "UNKNOWN_METRIC"
    #: the unit is neither canonical nor an accepted alias of the metric
    UNIT_NOT_ACCEPTED = "UNIT_NOT_ACCEPTED"
    #: NaN or ±infinity
    NON_FINITE_VALUE = "NON_FINITE_VALUE"
    #: outside the metric's plausible range (after unit conversion)
    VALUE_OUT_OF_RANGE = "VALUE_OUT_OF_RANGE"
    #: end before start
    END_BEFORE_START = "END_BEFORE_START"
    #: a timestamp without a UTC offset
    NAIVE_TIMESTAMP = "NAIVE_TIMESTAMP"
    #: start or end more than 5 minutes ahead of the server clock
    FUTURE_TIMESTAMP = timerange.FUTURE_TIMESTAMP
    #: start or end before 1970
    BEFORE_EPOCH = timerange.BEFORE_EPOCH
    #: the same (source, record_id) appeared earlier in this batch
    DUPLICATE_IN_BATCH = "DUPLICATE_IN_BATCH"


@dataclass(frozen=True, slots=True)
class Rejection:
    index: int
    code: RejectionCode
    message: str

    def as_dict(self) -> dict[str, object]:
        return {"index": self.index, "code": self.code.value, "message": self.message}


@dataclass(frozen=True, slots=True)
class ValidatedBatch:
    request_id: str | None
    samples: list[Sample]
    deletions: list[tuple[str, str]]
    rejected: list[Rejection]


def _malformed(message: str) -> InvalidInput:
    return InvalidInput(message, code="VALIDATION_ERROR")


def storable(text: str) -> bool:
    """True when both databases can store ``text``: no NUL (PostgreSQL refuses it) and no lone
    surrogate (the standard-library JSON fallback lets ``\\ud800`` through; UTF-8 cannot encode it)."""
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(raw: Mapping[str, object], name: str, where: str, *, required: bool) -> str | None:
    value = raw.get(name)
    if value is None:
        if required:
            raise _malformed(f"{where}.{name} is required.")
        return None
    if not isinstance(value, str) or not value or len(value) > _MAX_TEXT[name]:
        raise _malformed(f"{where}.{name} must be a string of 1 to {_MAX_TEXT[name]} characters.")
    if not storable(value):
        raise _malformed(f"{where}.{name} holds a NUL or an unpaired surrogate.")
    return value


def _timestamp(raw: Mapping[str, object], name: str, where: str) -> datetime | None:
    value = raw.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise _malformed(f"{where}.{name} must be an ISO 8601 string.")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise _malformed(f"{where}.{name} is not an ISO 8601 timestamp.") from None


def _epoch_ms(moment: datetime) -> int:
    return epoch_ms(moment)


def _check_sample(index: int, raw: object, now_ms: int) -> Sample | Rejection:
    where = f"samples[{index}]"
    if not isinstance(raw, dict):
        raise _malformed(f"{where} must be an object.")
    unknown = raw.keys() - _SAMPLE_FIELDS
    if unknown:
        raise _malformed(f"{where} has unknown fields: {', '.join(sorted(unknown))}.")
    source = _text(raw, "source", where, required=True)
    record_id = _text(raw, "record_id", where, required=True)
    metric_code = _text(raw, "metric", where, required=True)
    unit = _text(raw, "unit", where, required=False)
    device = _text(raw, "device", where, required=False)
    value = raw.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _malformed(f"{where}.value must be a number.")
    start = _timestamp(raw, "start", where)
    if start is None:
        raise _malformed(f"{where}.start is required.")
    end = _timestamp(raw, "end", where)
    assert source is not None and record_id is not None and metric_code is not None

    def reject(code: RejectionCode, message: str) -> Rejection:
        return Rejection(index, code, message)

    metric = BY_CODE.get(metric_code)
    if metric is None:
        return reject(RejectionCode.UNKNOWN_METRIC, "The metric is not in the catalog.")
    if start.tzinfo is None or (end is not None and end.tzinfo is None):
        return reject(RejectionCode.NAIVE_TIMESTAMP, "Timestamps need a UTC offset.")
    try:
        number = float(value)
    except OverflowError:
        # An integer literal beyond float range: finite, but far outside every plausible range.
        return reject(RejectionCode.VALUE_OUT_OF_RANGE, "The value is out of range.")
    if not math.isfinite(number):
        return reject(RejectionCode.NON_FINITE_VALUE, "The value is not a finite number.")
    canonical = metric.to_canonical(number, unit)
    if canonical is None:
        return reject(
            RejectionCode.UNIT_NOT_ACCEPTED, f"Accepted units: {', '.join(metric.units)}."
        )
    if not (metric.min_value <= canonical <= metric.max_value):
        return reject(
            RejectionCode.VALUE_OUT_OF_RANGE,
            f"Plausible range is {metric.min_value:g} to {metric.max_value:g} {metric.unit}.",
        )
    start_ms = _epoch_ms(start)
    end_ms = start_ms if end is None else _epoch_ms(end)
    for name, moment_ms in (("start", start_ms), ("end", end_ms)):
        out_of_range = timerange.check(name, moment_ms, now_ms=now_ms)
        if out_of_range is not None:
            return reject(RejectionCode(out_of_range.code), out_of_range.message)
    if end_ms < start_ms:
        return reject(RejectionCode.END_BEFORE_START, "end is before start.")
    return Sample(
        source=source,
        record_id=record_id,
        metric=metric.code,
        value=canonical,
        unit=metric.unit,
        start_ms=start_ms,
        end_ms=end_ms,
        device=device,
    )


def _deletion(index: int, raw: object) -> tuple[str, str]:
    where = f"deleted[{index}]"
    if not isinstance(raw, dict) or raw.keys() - {"source", "record_id"}:
        raise _malformed(f"{where} must be an object with source and record_id.")
    source = _text(raw, "source", where, required=True)
    record_id = _text(raw, "record_id", where, required=True)
    assert source is not None and record_id is not None
    return source, record_id


def validate_batch(body: object, *, now_ms: int) -> ValidatedBatch:
    """Check a decoded request body. Raises for whole-request errors (422/413); returns the
    storable samples and the per-sample rejections otherwise."""
    if not isinstance(body, dict):
        raise _malformed("The body must be a JSON object.")
    unknown = body.keys() - {"request_id", "samples", "deleted"}
    if unknown:
        raise _malformed(f"Unknown fields: {', '.join(sorted(unknown))}.")
    request_id = body.get("request_id")
    if request_id is not None and (
        not isinstance(request_id, str)
        or not request_id
        or len(request_id) > 200
        or not storable(request_id)
    ):
        raise _malformed("request_id must be a string of 1 to 200 characters.")
    raw_samples = body.get("samples", [])
    raw_deleted = body.get("deleted", [])
    if not isinstance(raw_samples, list) or not isinstance(raw_deleted, list):
        raise _malformed("samples and deleted must be arrays.")
    if len(raw_samples) > MAX_SAMPLES or len(raw_deleted) > MAX_SAMPLES:
        raise PayloadTooLarge(
            f"At most {MAX_SAMPLES} samples and {MAX_SAMPLES} deletions per request.",
            code="TOO_MANY_SAMPLES",
        )
    deletions = list(dict.fromkeys(_deletion(i, raw) for i, raw in enumerate(raw_deleted)))
    to_delete = set(deletions)
    samples: list[Sample] = []
    rejected: list[Rejection] = []
    # Every sample's identity counts, rejected or not: a later one with an identity seen earlier
    # is a duplicate even when the earlier one was rejected (for its own reason), so nothing of
    # that identity is stored from this batch.
    seen: set[tuple[str, str]] = set()
    for index, raw in enumerate(raw_samples):
        checked = _check_sample(index, raw, now_ms)
        identity = (raw["source"], raw["record_id"])
        if identity in seen or identity in to_delete:
            rejected.append(
                Rejection(
                    index,
                    RejectionCode.DUPLICATE_IN_BATCH,
                    "This source and record_id appear more than once in the batch.",
                )
            )
        elif isinstance(checked, Rejection):
            rejected.append(checked)
        else:
            samples.append(checked)
        seen.add(identity)
    return ValidatedBatch(request_id, samples, deletions, rejected)
