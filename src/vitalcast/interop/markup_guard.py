"""A byte filter in front of the XML parser that never lets it buffer one huge tag.

expat delivers text in pieces as it arrives, but a start tag only once it is complete: one
256 MiB attribute (262 KB of zip) makes the parser hold the whole tag, then Python a copy of
each value. Health exports never write markup longer than a few hundred bytes, so the guard
holds back at most ``limit`` bytes of the markup being read. A start tag that grows beyond it is
not passed on: it is read to its end (quotes respected) and replaced by an empty element of the
same name carrying ``OVERSIZED``, so the parse goes on and the handler can count that record
as malformed. Anything else that long (a comment, a DTD, a processing instruction) ends the
import with ``MarkupTooLong``.

Markup is found by ``<``, which cannot appear raw in attribute values or text, so each span
between two ``<`` is one piece of markup plus the text after it. Scanning uses ``bytes.find``
and a precompiled search, so the guard costs a copy of the data, not a Python step per byte.
"""

from __future__ import annotations

import re

#: attribute set on the stand-in for a start tag longer than the guard's limit
OVERSIZED = "vitalcast-oversized"

_NAME = re.compile(rb"<([A-Za-z_][\w.\-]*(?::[\w.\-]+)?)")
_TAG_STOP = re.compile(rb"[>\"']")


class MarkupTooLong(ValueError):
    """Markup other than an element tag (comment, DTD, instruction) longer than the limit."""


class MarkupGuard:
    """``feed(chunk)`` returns the bytes to hand to the parser for ``chunk``, with at most
    ``limit`` bytes of unfinished markup held back between calls; ``close()`` returns the rest.
    Markup is judged when it spans chunks, so the parser never buffers more than ``limit``
    plus one chunk."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        #: the markup (and its text) since the last ``<``, not passed on yet
        self._held = bytearray()
        #: set while discarding an oversized start tag: its element name
        self._skipping: bytes | None = None
        #: inside a quoted attribute value of the tag being scanned: its quote
        self._quote: bytes | None = None
        #: the last byte of the skipped tag seen so far (``/`` makes it self-closing)
        self._last = b""
        #: passing text through until the next ``<`` (its markup was short, the text is not)
        self._text = False
        #: oversized start tags replaced so far
        self.replaced = 0

    def feed(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        data = memoryview(chunk)
        while len(data):
            if self._skipping is not None:
                data = self._skip(data, out)
            elif self._text:
                i = chunk.find(b"<", len(chunk) - len(data))
                if i < 0:
                    out.append(bytes(data))
                    break
                start = len(chunk) - len(data)
                out.append(chunk[start:i])
                self._text = False
                data = data[i - start :]
            else:
                start = len(chunk) - len(data)
                j = chunk.rfind(b"<", start)
                if j < 0:
                    self._held += data
                else:
                    out.append(bytes(self._held))
                    out.append(chunk[start:j])
                    self._held = bytearray(chunk[j:])
                data = data[len(data) :]
                if len(self._held) > self._limit:
                    self._oversized(out)
        return b"".join(out)

    def close(self) -> bytes:
        """What is still held (an unfinished file ends here; the parser judges it)."""
        rest, self._held = bytes(self._held), bytearray()
        return rest

    def _oversized(self, out: list[bytes]) -> None:
        """The held span passed the limit: pass on short markup with long text after it,
        start skipping a long start tag, refuse any other long markup."""
        held = self._held
        if not held.startswith(b"<"):
            pass  # text after a skipped tag's stand-in
        elif held.startswith(b"</"):
            if held.find(b">") < 0:
                raise MarkupTooLong(f"the file holds an end tag longer than {self._limit:,} bytes")
        else:
            match = _NAME.match(held, 0, 300)
            if match is None:
                raise MarkupTooLong(
                    f"the file holds markup longer than {self._limit:,} bytes that is not an "
                    "element tag"
                )
            self._quote = None
            tag_end = self._tag_end(held, match.end())
            if tag_end < 0:
                self._skipping = match.group(1)
                self._last = bytes(held[-1:])
                self._held = bytearray()
                return
        out.append(bytes(held))
        self._held = bytearray()
        self._text = True

    def _skip(self, data: memoryview, out: list[bytes]) -> memoryview:
        """Discard the oversized tag up to its ``>``; then emit its stand-in."""
        raw = data.obj if isinstance(data.obj, bytes) else bytes(data)
        offset = len(raw) - len(data)
        end = self._tag_end(raw, offset)
        if end < 0:
            self._last = raw[-1:]
            return data[len(data) :]
        before = raw[end - 1 : end] if end > offset else self._last
        name = self._skipping or b"_"
        closing = b"/>" if before == b"/" else b">"
        out.append(b"<" + name + b" " + OVERSIZED.encode() + b'="1"' + closing)
        self.replaced += 1
        self._skipping = None
        return data[end + 1 - offset :]

    def _tag_end(self, data: bytes | bytearray, pos: int) -> int:
        """Index of the ``>`` that ends the tag being scanned from ``pos``, or -1 when ``data``
        ends first (the open quote, if any, is kept for the next call)."""
        while True:
            if self._quote is not None:
                q = data.find(self._quote, pos)
                if q < 0:
                    return -1
                self._quote = None
                pos = q + 1
                continue
            stop = _TAG_STOP.search(data, pos)
            if stop is None:
                return -1
            char = stop.group()
            if char == b">":
                return stop.start()
            self._quote = char
            pos = stop.end()
