"""/api/v1/webhooks: the caller's Standard Webhooks endpoints and their delivery attempts."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, Field

from vitalcast.api.deps import CurrentUser, Parts
from vitalcast.api.errors import problem_responses
from vitalcast.api.schemas import NO_NUL, StrictModel, iso
from vitalcast.webhooks.models import Attempt, Delivery, Endpoint

router = APIRouter(
    prefix="/api/v1/webhooks", tags=["webhooks"], responses=problem_responses(401, 413, 422, 503)
)
_NOT_FOUND = problem_responses(404)

EndpointId = Annotated[
    str,
    Path(
        pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
        description="Webhook endpoint id (UUID).",
    ),
]


class WebhookCreate(StrictModel):
    url: str = Field(min_length=1, max_length=2048, pattern=NO_NUL)
    events: list[Literal["session.alert"]] = Field(min_length=1, max_length=10)


class WebhookOut(BaseModel):
    """An endpoint as its owner sees it; the secret only in the answer that created it."""

    id: str
    url: str
    events: list[str]
    created_at: str | None
    created_at_ms: int
    disabled: bool
    disabled_at_ms: int | None
    disabled_reason: str | None
    failing_since_ms: int | None
    secret: str | None = None

    @classmethod
    def of(cls, endpoint: Endpoint, *, with_secret: bool = False) -> WebhookOut:
        return cls(
            id=endpoint.id,
            url=endpoint.url,
            events=list(endpoint.events),
            created_at=iso(endpoint.created_at_ms),
            created_at_ms=endpoint.created_at_ms,
            disabled=not endpoint.enabled,
            disabled_at_ms=endpoint.disabled_at_ms,
            disabled_reason=endpoint.disabled_reason,
            failing_since_ms=endpoint.failing_since_ms,
            secret=endpoint.secret if with_secret else None,
        )


class WebhookList(BaseModel):
    items: list[WebhookOut]


class AttemptOut(BaseModel):
    attempt: int
    at_ms: int
    outcome: str
    status_code: int | None
    duration_ms: int

    @classmethod
    def of(cls, attempt: Attempt) -> AttemptOut:
        return cls(
            attempt=attempt.attempt,
            at_ms=attempt.at_ms,
            outcome=attempt.outcome.value,
            status_code=attempt.status_code,
            duration_ms=attempt.duration_ms,
        )


class DeliveryOut(BaseModel):
    """One message (its ``webhook-id``) and every attempt at it; the body is not repeated."""

    id: str
    event_type: str
    status: str
    created_at_ms: int
    next_attempt_ms: int | None
    finished_at_ms: int | None
    attempts: list[AttemptOut]

    @classmethod
    def of(cls, delivery: Delivery, attempts: list[Attempt]) -> DeliveryOut:
        pending = delivery.finished_at_ms is None
        return cls(
            id=delivery.id,
            event_type=delivery.event_type,
            status=delivery.status.value,
            created_at_ms=delivery.created_at_ms,
            next_attempt_ms=delivery.next_attempt_ms if pending else None,
            finished_at_ms=delivery.finished_at_ms,
            attempts=[AttemptOut.of(a) for a in attempts],
        )


class DeliveryList(BaseModel):
    items: list[DeliveryOut]


@router.post("", response_model=WebhookOut, status_code=201, responses=problem_responses(400, 409))
async def create_webhook(body: WebhookCreate, user: CurrentUser, parts: Parts) -> WebhookOut:
    """Register an endpoint; the answer carries its ``whsec_`` secret, never shown again."""
    endpoint = await parts.webhooks.create(user.user_id, body.url, body.events)
    return WebhookOut.of(endpoint, with_secret=True)


@router.get("", response_model=WebhookList)
async def list_webhooks(user: CurrentUser, parts: Parts) -> WebhookList:
    """The caller's endpoints (disabled ones say why)."""
    return WebhookList(
        items=[WebhookOut.of(e) for e in await parts.webhooks.endpoints(user.user_id)]
    )


@router.delete("/{endpoint_id}", status_code=204, responses=_NOT_FOUND)
async def delete_webhook(endpoint_id: EndpointId, user: CurrentUser, parts: Parts) -> Response:
    await parts.webhooks.delete(user.user_id, endpoint_id)
    return Response(status_code=204)


@router.get("/{endpoint_id}/deliveries", response_model=DeliveryList, responses=_NOT_FOUND)
async def list_deliveries(
    endpoint_id: EndpointId,
    user: CurrentUser,
    parts: Parts,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> DeliveryList:
    """The endpoint's newest deliveries, each with its attempts."""
    found = await parts.webhooks.deliveries(user.user_id, endpoint_id, limit=limit)
    return DeliveryList(items=[DeliveryOut.of(d, a) for d, a in found])
