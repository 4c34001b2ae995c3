"""What a share token may do over HTTP: read its one session, nothing else.

Decided from the method and path before any route runs, and closed by default: a route added
later is refused to share tokens until it is listed here. Reads of another session are 404
``SESSION_NOT_FOUND`` (as for any caller who does not own it); every write and every listing is
403 ``SHARE_SCOPE``. The metric catalog, which holds no one's data, and ``GET /api/v1/share``
(what this share token opens) stay open.
"""

from __future__ import annotations

import re

from vitalcast.auth import Principal
from vitalcast.errors import Forbidden, NotFound
from vitalcast.shares import AccessKind

_SESSION = r"^/api/v1/sessions/(?P<session_id>[^/]+)"
_READS = (
    (re.compile(_SESSION + r"$"), AccessKind.SESSION),
    (re.compile(_SESSION + r"/telemetry$"), AccessKind.TELEMETRY),
    (re.compile(_SESSION + r"/export\.csv$"), AccessKind.EXPORT_CSV),
    (re.compile(_SESSION + r"/fhir$"), AccessKind.FHIR),
)
# The catalog holds no one's data; /share tells a share token which session it opens.
_OPEN = frozenset({"/api/v1/catalog", "/api/v1/share"})
_READ_METHODS = frozenset({"GET", "HEAD"})


def share_read(method: str, path: str, principal: Principal) -> AccessKind | None:
    """The kind of read a share token's request is (None: an open path, not logged); raises
    ``Forbidden`` (SHARE_SCOPE) or ``NotFound`` (SESSION_NOT_FOUND) otherwise."""
    if method in _READ_METHODS:
        if path in _OPEN:
            return None
        for pattern, kind in _READS:
            found = pattern.match(path)
            if found is not None:
                if found["session_id"].lower() != principal.session_id:
                    raise NotFound("Session not found.", code="SESSION_NOT_FOUND")
                return kind
    raise Forbidden("A share token reads its one session and nothing else.", code="SHARE_SCOPE")
