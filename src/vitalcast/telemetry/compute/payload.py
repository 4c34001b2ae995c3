"""The stored form of a payload: encoded once, answered by joining bytes.

A cache hit must not decode and re-encode the payload, also when a request filters metrics. So
the payload is stored as the JSON *head* (every field, ending in ``"metrics":{``) plus one JSON
*fragment* per metric (``"heart_rate":{…}``), behind a small binary index::

    b"VCP1" | u32 head length | u8 fragment count | (u8 code length, code, u32 length)* | head | fragments*

A selection of metrics is then ``head + b",".join(fragments) + b"}}"``: valid JSON, byte for
byte the same as encoding the filtered payload would give.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import orjson

from vitalcast.json_types import JsonMapping, JsonObject

MAGIC = b"VCP1"
_HEAD = struct.Struct(">IB")
_LEN = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class PackedPayload:
    """A decoded index over stored bytes; the JSON inside is never parsed."""

    head: bytes
    fragments: Mapping[str, bytes]

    def json(self, codes: Iterable[str]) -> bytes:
        """The payload JSON holding the metrics of ``codes`` that it has, in ``codes`` order."""
        fragments = self.fragments
        selected = [fragments[code] for code in codes if code in fragments]
        return b"".join((self.head, b",".join(selected), b"}}"))

    def metric(self, code: str) -> JsonObject | None:
        """One metric of the payload, decoded (None when it has no samples of ``code``)."""
        fragment = self.fragments.get(code)
        if fragment is None:
            return None
        decoded: JsonObject = orjson.loads(b"{" + fragment + b"}")[code]
        return decoded


def pack(document: JsonMapping, metrics: Mapping[str, JsonMapping]) -> bytes:
    """Encode ``document`` (every payload field but ``metrics``) and each metric once."""
    if "metrics" in document:
        raise ValueError("metrics are packed separately")
    head = orjson.dumps(document)[:-1] + (b',"metrics":{' if document else b'"metrics":{')
    parts = [MAGIC, _HEAD.pack(len(head), len(metrics))]
    fragments = []
    for code, series in metrics.items():
        fragment = orjson.dumps(code) + b":" + orjson.dumps(series)
        name = code.encode()
        parts += [bytes((len(name),)), name, _LEN.pack(len(fragment))]
        fragments.append(fragment)
    return b"".join([*parts, head, *fragments])


def unpack(blob: bytes) -> PackedPayload:
    """The index of a packed payload (slices only; nothing is parsed as JSON)."""
    if blob[:4] != MAGIC:
        raise ValueError("not a packed telemetry payload")
    head_len, count = _HEAD.unpack_from(blob, 4)
    offset = 4 + _HEAD.size
    lengths: list[tuple[str, int]] = []
    for _ in range(count):
        name_len = blob[offset]
        name = blob[offset + 1 : offset + 1 + name_len].decode()
        offset += 1 + name_len
        (length,) = _LEN.unpack_from(blob, offset)
        offset += _LEN.size
        lengths.append((name, length))
    head = blob[offset : offset + head_len]
    offset += head_len
    fragments: dict[str, bytes] = {}
    for name, length in lengths:
        fragments[name] = blob[offset : offset + length]
        offset += length
    return PackedPayload(head, fragments)


def answer_json(
    state: str,
    *,
    telemetry: bytes | None,
    retry_after_s: int | None = None,
    error: Mapping[str, str] | None = None,
) -> bytes:
    """The GET body ``{state, retry_after_seconds?, error?, telemetry}`` around payload bytes."""
    parts = [b'{"state":', orjson.dumps(state)]
    if retry_after_s is not None:
        parts += [b',"retry_after_seconds":', str(int(retry_after_s)).encode()]
    if error is not None:
        parts += [b',"error":', orjson.dumps(error)]
    parts += [b',"telemetry":', b"null" if telemetry is None else telemetry, b"}"]
    return b"".join(parts)
