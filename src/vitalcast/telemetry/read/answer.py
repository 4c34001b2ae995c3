"""What a telemetry GET answers: the request state of a cache row, the metric selection, the
ETag, and the body joined from stored bytes. Pure: no I/O, no clock of its own."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from vitalcast import catalog
from vitalcast.errors import InvalidInput
from vitalcast.telemetry.compute.payload import PackedPayload, answer_json
from vitalcast.telemetry.grid import payload_current
from vitalcast.telemetry.keys import CacheState, Resolution, ScheduleReason, TelemetryKey
from vitalcast.telemetry.store.rows import HotRow

#: seconds a client should wait before asking again
RETRY_COMPUTING_S = 1
RETRY_SHED_S = 2
RETRY_STALE_S = 1
RETRY_READ_FAILED_S = 5

COMPUTE_FAILED = "COMPUTE_FAILED"
DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"
ERROR_MESSAGES = {
    COMPUTE_FAILED: "The last compute failed; it is retried with backoff.",
    DATABASE_UNAVAILABLE: "Freshness is unknown: the database could not be read.",
}
_BUCKET_MS = {resolution.value: resolution.bucket_ms for resolution in Resolution}
_METRIC_BIT = {code: 1 << index for index, code in enumerate(catalog.ALL_CODES)}


def holds_payload(row: HotRow) -> bool:
    """The hot row's cache row holds a payload that was current at its watermark."""
    return row.status is not None and CacheState(row.status).has_payload


@dataclass(frozen=True, slots=True)
class TelemetryAnswer:
    """What a telemetry GET answers; the route only renders it."""

    state: CacheState
    #: the metric codes asked for, in catalog order
    codes: tuple[str, ...]
    payload: PackedPayload | None = None
    retry_after_s: int | None = None
    error_code: str | None = None
    etag: str | None = None
    not_modified: bool = False
    #: the JSON delta from the client's watermark to the current payload (``history``); when
    #: set, the body carries it instead of the payload
    delta: bytes | None = None
    #: the session was archived by retention: the payload is the one kept, never recomputed
    archived: bool = False

    @property
    def http_status(self) -> int:
        if self.not_modified:
            return 304
        return 202 if self.state is CacheState.COMPUTING else 200

    def body(self) -> bytes:
        """The JSON body, joined from the stored bytes (nothing is re-encoded)."""
        if self.delta is not None:
            retry = b""
            if self.retry_after_s is not None:
                retry = b',"retry_after_seconds":' + str(self.retry_after_s).encode()
            return b"".join(
                (
                    b'{"state":',
                    orjson.dumps(self.state.value),
                    retry,
                    b',"delta":',
                    self.delta,
                    b"}",
                )
            )
        error = None
        if self.error_code is not None:
            error = {"code": self.error_code, "message": ERROR_MESSAGES[self.error_code]}
        body = answer_json(
            self.state.value,
            telemetry=None if self.payload is None else self.payload.json(self.codes),
            retry_after_s=self.retry_after_s,
            error=error,
        )
        return body[:-1] + b',"archived":true}' if self.archived else body


@dataclass(frozen=True, slots=True)
class Decision:
    """A hot row's request state and the compute it asks for (None: nothing to schedule)."""

    state: CacheState
    reason: ScheduleReason | None
    retry_after_s: int | None = None
    error_code: str | None = None


#: the decisions of a fresh row, the answer of nearly every GET: made once, not per request
_READY = Decision(CacheState.READY, None)
_NO_DATA = Decision(CacheState.NO_DATA, None)


def select_metrics(requested: Sequence[str] | None) -> tuple[str, ...]:
    """Catalog-ordered codes of a request: None → the defaults, ``all`` → every metric."""
    if not requested:
        return catalog.DEFAULT_CODES
    wanted = {code.strip().lower() for code in requested if code.strip()}
    if not wanted:
        return catalog.DEFAULT_CODES
    if "all" in wanted:
        return catalog.ALL_CODES
    unknown = sorted(wanted - catalog.BY_CODE.keys())
    if unknown:
        raise InvalidInput(f"Unknown metric code: {', '.join(unknown)}.", code="UNKNOWN_METRIC")
    return tuple(code for code in catalog.ALL_CODES if code in wanted)


def make_etag(
    key: TelemetryKey, watermark: int, codes: Sequence[str], *, live_at_ms: int | None = None
) -> str:
    """Strong ETag of (session, watermark, window, resolution, compute version, metric set) and,
    for a live payload, its compute time: a live window moves with time at one watermark."""
    mask = _mask(tuple(codes))
    live = "" if live_at_ms is None else f".t{live_at_ms}"
    return (
        f'"{key.session_id}.{watermark}.{key.window_minutes}.{key.resolution.value}'
        f'.v{key.compute_version}.{mask:x}{live}"'
    )


@functools.cache  # at most one entry per subset of the catalog
def _mask(codes: tuple[str, ...]) -> int:
    return sum(_METRIC_BIT[code] for code in codes)


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 weak comparison against an ``If-None-Match`` list (or ``*``)."""
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        tag = candidate.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


def is_current(row: HotRow, now_ms: int) -> bool:
    """The hot row's payload answers for its session now (``grid.payload_current``)."""
    return row.resolution is not None and payload_current(
        payload_watermark=row.source_watermark,
        session_watermark=row.session_watermark,
        live=row.live,
        session_start_ms=row.session_start_ms,
        bucket_ms=_BUCKET_MS[row.resolution],
        computed_at_ms=row.computed_at_ms,
        now_ms=now_ms,
    )


def decide(row: HotRow, now_ms: int) -> Decision:
    """The request state of a hot row, and whether (and why) a compute must be scheduled."""
    backing_off = row.next_attempt_ms is not None and row.next_attempt_ms > now_ms
    retry_failed = (
        max(1, math.ceil((row.next_attempt_ms - now_ms) / 1000))
        if backing_off and row.next_attempt_ms is not None
        else RETRY_COMPUTING_S
    )
    if row.status is None or row.status == CacheState.COMPUTING:
        return Decision(CacheState.COMPUTING, ScheduleReason.CACHE_MISS, RETRY_COMPUTING_S)
    if row.status == CacheState.FAILED:
        reason = None if backing_off else ScheduleReason.CACHE_MISS
        return Decision(CacheState.FAILED, reason, retry_failed, row.error_code)
    if is_current(row, now_ms):
        return _NO_DATA if row.status == CacheState.NO_DATA else _READY
    if row.error_code is not None:
        reason = None if backing_off else ScheduleReason.STALE_READ
        return Decision(CacheState.FAILED, reason, retry_failed, row.error_code)
    return Decision(CacheState.STALE, ScheduleReason.STALE_READ, RETRY_STALE_S)
