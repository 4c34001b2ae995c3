"""The error tree of vitalcast; each error has a stable ``code``, mapped to HTTP in api/errors.

    VitalcastError
    ├── NotFound              SESSION_NOT_FOUND … (also: someone else's resource)
    ├── InvalidInput          VALIDATION_ERROR, UNKNOWN_METRIC, WINDOW_OUT_OF_RANGE …
    ├── PayloadTooLarge       TOO_MANY_SAMPLES, BODY_TOO_LARGE
    ├── Conflict              REQUEST_ID_REUSED, SESSION_NOT_ACTIVE
    ├── Unauthenticated       UNAUTHENTICATED, TOKEN_EXPIRED, TOKEN_INVALID, TOKEN_REVOKED,
    │                         SHARE_REVOKED, SHARE_EXPIRED
    ├── Forbidden             SHARE_SCOPE (a share token outside the one session it reads)
    ├── RateLimited           RATE_LIMITED
    └── DependencyUnavailable DATABASE_UNAVAILABLE, QUEUE_UNAVAILABLE

Expected outcomes (a rejected sample, a shed compute, a deduplicated job) are values, not errors.
"""

from __future__ import annotations


class VitalcastError(Exception):
    """Base of every error vitalcast raises on purpose."""

    code = "INTERNAL_ERROR"

    def __init__(
        self, message: str, *, code: str | None = None, retry_after_s: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.retry_after_s = retry_after_s

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class NotFound(VitalcastError):
    """The resource does not exist or belongs to someone else (existence never leaks)."""

    code = "NOT_FOUND"


class InvalidInput(VitalcastError):
    """The request is well-formed transport but its content is unacceptable."""

    code = "VALIDATION_ERROR"


class PayloadTooLarge(VitalcastError):
    """The request exceeds a size limit; nothing of it was applied."""

    code = "PAYLOAD_TOO_LARGE"


class Conflict(VitalcastError):
    """The request contradicts earlier state (e.g. a request_id replayed with another body)."""

    code = "CONFLICT"


class Unauthenticated(VitalcastError):
    """No valid bearer token."""

    code = "UNAUTHENTICATED"


class Forbidden(VitalcastError):
    """The caller is known but its token may not do this (a share token's write or listing)."""

    code = "FORBIDDEN"


class RateLimited(VitalcastError):
    """Too many requests for this user; retry after ``retry_after_s``."""

    code = "RATE_LIMITED"


class Gone(VitalcastError):
    """What was asked for existed and was removed on purpose (RAW_EXPIRED: retention)."""

    code = "GONE"


class DependencyUnavailable(VitalcastError):
    """A backing service (database, Redis) cannot be reached; retry after ``retry_after_s``."""

    code = "DEPENDENCY_UNAVAILABLE"
