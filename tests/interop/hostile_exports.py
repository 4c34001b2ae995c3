"""Hostile Apple Health exports, written in a streaming way so that making a 256 MiB attribute
costs the test little memory: oversized attributes and text, many attributes, deep nesting,
invented types, and zip archives damaged in each way ``zipfile`` can fail."""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from tests.interop.health_exports import HEADER, HR, Rec, apple_date, at

MIB = 1 << 20
_PAD = b"x" * MIB


def _good(value: str, minute: float) -> bytes:
    return Rec(HR, "count/min", value, at(minute)).xml().encode()


def _write_with_padding(out: IO[bytes], before: bytes, size: int, after: bytes) -> None:
    out.write(before)
    left = size
    while left > 0:
        out.write(_PAD[: min(left, MIB)])
        left -= MIB
    out.write(after)


def _huge_record_parts() -> tuple[bytes, bytes, bytes]:
    """(head, tail) around a ``device`` attribute's value, plus the good records around it."""
    head = (
        f' <Record type="{HR}" sourceName="Watch" unit="count/min" value="71" '
        f'startDate="{apple_date(at(1))}" endDate="{apple_date(at(1))}" device="'
    ).encode()
    return head, b'"/>\n', _good("72", 2)


def huge_attribute(path: Path, size: int, *, zipped: bool) -> Path:
    """One record whose ``device`` is ``size`` bytes, between two good records."""
    head, tail, after = _huge_record_parts()
    before = HEADER.encode() + _good("70", 0) + head
    rest = tail + after + b"</HealthData>\n"
    if zipped:
        with (
            zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive,
            archive.open("apple_health_export/export.xml", "w", force_zip64=True) as out,
        ):
            _write_with_padding(out, before, size, rest)
    else:
        with path.open("wb") as out:
            _write_with_padding(out, before, size, rest)
    return path


def huge_text(path: Path, size: int) -> Path:
    """A record whose element holds ``size`` bytes of text."""
    open_tag = _good("71", 1).replace(b"/>", b">")
    with path.open("wb") as out:
        _write_with_padding(
            out, HEADER.encode() + _good("70", 0) + open_tag, size, b"</Record>\n</HealthData>\n"
        )
    return path


def many_attributes(path: Path, count: int) -> Path:
    """A record with ``count`` extra attributes (a tag of ``count`` × ~12 bytes)."""
    head, _, after = _huge_record_parts()
    with path.open("wb") as out:
        out.write(HEADER.encode() + _good("70", 0) + head + b'x"')
        for start in range(0, count, 10_000):
            stop = min(count, start + 10_000)
            out.write("".join(f' a{i}="1"' for i in range(start, stop)).encode())
        out.write(b"/>\n" + after + b"</HealthData>\n")
    return path


def deep_nesting(path: Path, levels: int) -> Path:
    with path.open("wb") as out:
        out.write(HEADER.encode())
        for _ in range(0, levels, 100_000):
            out.write(b"<a>" * 100_000)
        for _ in range(0, levels, 100_000):
            out.write(b"</a>" * 100_000)
        out.write(b"</HealthData>\n")
    return path


def invented_types(path: Path, count: int) -> Path:
    """``count`` records, each of a type no one else uses."""
    date = apple_date(at(0))

    def records() -> Iterator[bytes]:
        for i in range(count):
            yield (
                f'<Record type="HKQuantityTypeIdentifierInvented{i}" sourceName="s" '
                f'startDate="{date}" endDate="{date}" value="1"/>\n'
            ).encode()

    with path.open("wb") as out:
        out.write(HEADER.encode())
        batch: list[bytes] = []
        for record in records():
            batch.append(record)
            if len(batch) == 10_000:
                out.write(b"".join(batch))
                batch.clear()
        out.write(b"".join(batch) + b"</HealthData>\n")
    return path


def huge_comment(path: Path, size: int) -> Path:
    with path.open("wb") as out:
        _write_with_padding(out, HEADER.encode() + b"<!--", size, b"-->\n</HealthData>\n")
    return path


# -- zip faults ---------------------------------------------------------------------------------


def _export_bytes() -> bytes:
    return HEADER.encode() + b"".join(_good(str(60 + i), i) for i in range(200)) + b"</HealthData>"


def _patch_headers(path: Path, *, flag_bits: int = 0, method: int | None = None) -> None:
    """Set general-purpose flag bits and/or the method in every local and central header."""
    data = bytearray(path.read_bytes())
    for signature, flag_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        start = 0
        while (i := data.find(signature, start)) >= 0:
            flags = struct.unpack_from("<H", data, i + flag_at)[0] | flag_bits
            struct.pack_into("<H", data, i + flag_at, flags)
            if method is not None:
                struct.pack_into("<H", data, i + method_at, method)
            start = i + 4
    path.write_bytes(bytes(data))


def _corrupt_member_data(path: Path, compression: int) -> None:
    """Damage the member's compressed data so that the decompressor itself fails (not only
    the CRC check at the end): a reserved block type for deflate, noise inside LZMA data."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.infolist()[0]
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    begin = info.header_offset + 30 + name_len + extra_len
    if compression == zipfile.ZIP_DEFLATED:
        data[begin] = 0xFF  # BFINAL=1, BTYPE=11: reserved, "invalid block type"
    else:
        middle = begin + info.compress_size // 2
        for i in range(max(begin + 8, middle - 64), middle + 64):
            data[i] = (data[i] * 7 + 91) % 256
    path.write_bytes(bytes(data))


def zip_fault(path: Path, fault: str) -> Path:
    """``export.zip`` with one fault: encrypted, deflate, lzma, method, two-exports."""
    compression = zipfile.ZIP_LZMA if fault == "lzma" else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        archive.writestr("apple_health_export/export.xml", _export_bytes())
        if fault == "two-exports":
            archive.writestr("other/export.xml", _export_bytes())
    if fault == "encrypted":
        _patch_headers(path, flag_bits=0x1)
    elif fault == "method":
        _patch_headers(path, method=99)
    elif fault in ("deflate", "lzma"):
        _corrupt_member_data(path, compression)
    return path
