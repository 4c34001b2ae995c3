"""The Apple Health reader under mutated files (Hypothesis): whatever bytes an export is made
of, reading it ends in batches or in ``ExportError`` (the CLI's one-line ``import failed: …``),
never in another exception; and the markup guard hands the parser exactly what it got, however
the file is cut into chunks, as long as no tag is oversized."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.interop.health_exports import full_export
from vitalcast.interop.apple_health import ExportError, read_batches
from vitalcast.interop.markup_guard import MarkupGuard

_FUZZ = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def _valid_export() -> bytes:
    """The interop suite's full export (every kind of element Apple writes), as bytes."""
    with tempfile.TemporaryDirectory() as folder:
        return full_export(Path(folder) / "export.xml").read_bytes()


VALID = _valid_export()

mutation = st.tuples(
    st.integers(0, len(VALID) - 1),
    st.sampled_from(["delete", "insert", "replace", "duplicate"]),
    st.binary(min_size=1, max_size=64)
    | st.sampled_from(
        [b"<", b">", b'"', b"'", b"<Record ", b"</HealthData>", b"<a>" * 40, b"&lol;", b"\x00"]
    ),
)


def mutate(data: bytes, edits: list[tuple[int, str, bytes]]) -> bytes:
    out = bytearray(data)
    for at, kind, chunk in edits:
        at = min(at, len(out))
        if kind == "delete":
            del out[at : at + len(chunk)]
        elif kind == "insert":
            out[at:at] = chunk
        elif kind == "replace":
            out[at : at + len(chunk)] = chunk
        else:
            out[at:at] = out[at : at + len(chunk) * 8]
    return bytes(out)


@_FUZZ
@given(st.lists(mutation, min_size=1, max_size=6))
def test_a_mutated_export_is_read_or_refused_in_one_error(edits):
    data = mutate(VALID, edits)
    try:
        for batch in read_batches(io.BytesIO(data), batch_size=4):
            assert len(batch.samples) <= 4
    except ExportError as exc:
        assert "\n" not in str(exc)


@_FUZZ
@given(st.lists(st.integers(1, 4096), min_size=1, max_size=40))
def test_the_markup_guard_is_transparent_at_any_chunking(sizes):
    guard = MarkupGuard(1 << 20)
    out, at, i = [], 0, 0
    while at < len(VALID):
        size = sizes[i % len(sizes)]
        out.append(guard.feed(VALID[at : at + size]))
        at, i = at + size, i + 1
    assert b"".join(out) + guard.close() == VALID
