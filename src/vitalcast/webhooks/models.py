"""What the webhook parts pass around: endpoints, deliveries, attempts and their states."""

from __future__ import annotations

import enum
from dataclasses import dataclass

#: event types an endpoint may ask for
EVENT_TYPES = frozenset({"session.alert"})


class DeliveryStatus(enum.StrEnum):
    """Where one message to one endpoint stands."""

    #: not delivered yet; the next attempt is due at ``next_attempt_ms``
    PENDING = "pending"
    #: a 2xx answer was received
    DELIVERED = "delivered"
    #: given up: the retry window ran out, or the endpoint was disabled or deleted
    FAILED = "failed"


class AttemptOutcome(enum.StrEnum):
    """What one attempt came to (the ``outcome`` label of the delivery metrics)."""

    #: the receiver answered 2xx
    DELIVERED = "delivered"
    #: the receiver answered, but not 2xx (3xx included: redirects are never followed)
    HTTP_ERROR = "http_error"
    #: a redirect: refused, never followed (it could point at a private address)
    REDIRECT = "redirect"
    #: no answer within the timeouts
    TIMEOUT = "timeout"
    #: the connection failed (refused, reset, TLS, DNS)
    CONNECT_ERROR = "connect_error"
    #: the URL resolved to an address that is not allowed (private, loopback, link-local …)
    ADDRESS_REFUSED = "address_refused"
    #: the endpoint was disabled or deleted before the attempt; nothing was sent
    ENDPOINT_GONE = "endpoint_gone"

    @property
    def success(self) -> bool:
        return self is AttemptOutcome.DELIVERED


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One receiver URL of one user."""

    id: str
    user_id: str
    url: str
    events: tuple[str, ...]
    secret: str
    created_at_ms: int
    failing_since_ms: int | None
    disabled_at_ms: int | None
    disabled_reason: str | None

    @property
    def enabled(self) -> bool:
        return self.disabled_at_ms is None


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message to one endpoint; ``id`` is its ``webhook-id`` on every attempt."""

    id: str
    endpoint_id: str
    user_id: str
    event_type: str
    body: bytes
    status: DeliveryStatus
    attempts: int
    created_at_ms: int
    next_attempt_ms: int
    finished_at_ms: int | None


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try at sending a delivery."""

    delivery_id: str
    attempt: int
    at_ms: int
    outcome: AttemptOutcome
    status_code: int | None
    duration_ms: int
