"""The one range of moments vitalcast stores, for sessions and samples alike: from the Unix epoch
to a few minutes ahead of the server clock.

Nothing a wearable records predates 1970, and a time far ahead (year 9999) is a broken clock or
a forged request whose sample would sit in every future window. Phones drift, so a moment up to
``FUTURE_TOLERANCE_MS`` ahead of the server's now is still accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

from vitalcast.clock import MINUTE_MS

EARLIEST_MS = 0
# Clocks of phones and watches drift: a sample, session start or end this far ahead of the
# server's now is still accepted; anything later is FUTURE_TIMESTAMP.
FUTURE_TOLERANCE_MS = 5 * MINUTE_MS

#: before 1970-01-01T00:00:00Z
BEFORE_EPOCH = "BEFORE_EPOCH"
#: more than FUTURE_TOLERANCE_MS ahead of the server clock
FUTURE_TIMESTAMP = "FUTURE_TIMESTAMP"


@dataclass(frozen=True, slots=True)
class OutOfRange:
    """Why a moment is refused: a stable code and a sentence naming the field."""

    code: str
    message: str


def check(field: str, moment_ms: int, *, now_ms: int) -> OutOfRange | None:
    """None when ``moment_ms`` lies in the range, otherwise why not."""
    if moment_ms < EARLIEST_MS:
        return OutOfRange(BEFORE_EPOCH, f"{field} is before 1970-01-01T00:00:00Z.")
    if moment_ms > now_ms + FUTURE_TOLERANCE_MS:
        return OutOfRange(FUTURE_TIMESTAMP, f"{field} is more than 5 minutes ahead.")
    return None
