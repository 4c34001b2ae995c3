"""uvicorn's httptools protocol with a bound on a request's head (request line and headers).

httptools hands uvicorn a header only once it is complete and concatenates its pieces until
then, so one 200 MB header line on an unauthenticated request was buffered whole (54 s,
+628 MB of RSS). uvicorn bounds this only for its h11 protocol (``h11_max_incomplete_event_size``),
which is several times slower per request. Here the bytes received while a head is being read
are counted as they arrive, and a head past ``MAX_HEAD_BYTES`` is answered 431 and the
connection closed before more is read: what is buffered stays within the bound plus one read.
"""

from __future__ import annotations

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

#: request line and headers together; bearer tokens from an OpenID issuer run to a few KiB
MAX_HEAD_BYTES = 32 * 1024

_PROBLEM = orjson.dumps(
    {
        "type": "about:blank",
        "title": "Headers too large",
        "status": 431,
        "code": "HEADERS_TOO_LARGE",
        "detail": f"The request line and headers may take at most {MAX_HEAD_BYTES} bytes.",
    }
)
_ANSWER = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: application/problem+json\r\n"
    b"content-length: " + str(len(_PROBLEM)).encode() + b"\r\n"
    b"connection: close\r\n\r\n" + _PROBLEM
)


class BoundedHeadProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` that refuses a request head longer than ``MAX_HEAD_BYTES``."""

    #: bytes of the head being read so far; None while a body is read (nothing is counted)
    _head_bytes: int | None = 0

    def data_received(self, data: bytes) -> None:
        if self._head_bytes is not None:
            self._head_bytes += len(data)
        super().data_received(data)
        if (
            self._head_bytes is not None
            and self._head_bytes > MAX_HEAD_BYTES
            and not self.transport.is_closing()
        ):
            self.logger.info("request head over %d bytes refused", MAX_HEAD_BYTES)
            if self.cycle is None or self.cycle.response_complete:
                self.transport.write(_ANSWER)
            self.transport.close()

    def on_message_begin(self) -> None:
        self._head_bytes = 0
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        super().on_headers_complete()
