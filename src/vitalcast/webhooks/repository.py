"""Core queries on webhook endpoints, deliveries and attempts. Each takes the caller's
connection: the caller decides the transaction (an alert and its deliveries commit together)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from vitalcast.db.prepared import Prepared
from vitalcast.db.tables import webhook_attempts, webhook_deliveries, webhook_endpoints
from vitalcast.webhooks.models import (
    Attempt,
    AttemptOutcome,
    Delivery,
    DeliveryStatus,
    Endpoint,
)

PENDING = DeliveryStatus.PENDING.value


def _endpoint(row: Any) -> Endpoint:  # Any: a row of the endpoints table, read by column name
    return Endpoint(
        id=row.id,
        user_id=row.user_id,
        url=row.url,
        events=tuple(e for e in row.events.split(",") if e),
        secret=row.secret,
        created_at_ms=int(row.created_at_ms),
        failing_since_ms=row.failing_since_ms,
        disabled_at_ms=row.disabled_at_ms,
        disabled_reason=row.disabled_reason,
    )


def _delivery(row: Any) -> Delivery:  # Any: a row of the deliveries table, read by column name
    return Delivery(
        id=row.id,
        endpoint_id=row.endpoint_id,
        user_id=row.user_id,
        event_type=row.event_type,
        body=bytes(row.body),
        status=DeliveryStatus(row.status),
        attempts=int(row.attempts),
        created_at_ms=int(row.created_at_ms),
        next_attempt_ms=int(row.next_attempt_ms),
        finished_at_ms=row.finished_at_ms,
    )


async def create_endpoint(
    conn: AsyncConnection,
    *,
    user_id: str,
    url: str,
    events: Sequence[str],
    secret: str,
    now_ms: int,
) -> Endpoint:
    endpoint = Endpoint(
        id=str(uuid.uuid4()),
        user_id=user_id,
        url=url,
        events=tuple(events),
        secret=secret,
        created_at_ms=now_ms,
        failing_since_ms=None,
        disabled_at_ms=None,
        disabled_reason=None,
    )
    await conn.execute(
        sa.insert(webhook_endpoints).values(
            id=endpoint.id,
            user_id=user_id,
            url=url,
            events=",".join(events),
            secret=secret,
            created_at_ms=now_ms,
        )
    )
    return endpoint


async def count_endpoints(conn: AsyncConnection, user_id: str) -> int:
    query = sa.select(sa.func.count()).where(webhook_endpoints.c.user_id == user_id)
    return int(await conn.scalar(query) or 0)


async def list_endpoints(conn: AsyncConnection, user_id: str) -> list[Endpoint]:
    rows = await conn.execute(
        sa.select(webhook_endpoints)
        .where(webhook_endpoints.c.user_id == user_id)
        .order_by(webhook_endpoints.c.created_at_ms, webhook_endpoints.c.id)
    )
    return [_endpoint(row) for row in rows]


async def get_endpoint(
    conn: AsyncConnection, endpoint_id: str, *, user_id: str | None = None
) -> Endpoint | None:
    """The endpoint, or None when absent (or, given ``user_id``, someone else's)."""
    query = sa.select(webhook_endpoints).where(webhook_endpoints.c.id == endpoint_id)
    if user_id is not None:
        query = query.where(webhook_endpoints.c.user_id == user_id)
    row = (await conn.execute(query)).first()
    return None if row is None else _endpoint(row)


async def delete_endpoint(conn: AsyncConnection, endpoint_id: str, *, user_id: str) -> bool:
    """Delete the endpoint with its deliveries and attempts; False when it was not there."""
    mine = (webhook_endpoints.c.id == endpoint_id) & (webhook_endpoints.c.user_id == user_id)
    if await conn.scalar(sa.select(webhook_endpoints.c.id).where(mine)) is None:
        return False
    deliveries = sa.select(webhook_deliveries.c.id).where(
        webhook_deliveries.c.endpoint_id == endpoint_id
    )
    await conn.execute(
        sa.delete(webhook_attempts).where(webhook_attempts.c.delivery_id.in_(deliveries))
    )
    await conn.execute(
        sa.delete(webhook_deliveries).where(webhook_deliveries.c.endpoint_id == endpoint_id)
    )
    await conn.execute(sa.delete(webhook_endpoints).where(mine))
    return True


async def enqueue(
    conn: AsyncConnection, *, user_id: str, event_type: str, body: bytes, now_ms: int
) -> list[str]:
    """One pending delivery of ``body`` per enabled endpoint of ``user_id`` that asked for
    ``event_type``; returns their ids (each is the ``webhook-id`` of every attempt)."""
    endpoints = await conn.execute(
        sa.select(webhook_endpoints.c.id, webhook_endpoints.c.events).where(
            webhook_endpoints.c.user_id == user_id,
            webhook_endpoints.c.disabled_at_ms.is_(None),
        )
    )
    targets = [row.id for row in endpoints if event_type in row.events.split(",")]
    if not targets:
        return []
    rows = [
        {
            "id": f"msg_{uuid.uuid4().hex}",
            "endpoint_id": endpoint_id,
            "user_id": user_id,
            "event_type": event_type,
            "body": body,
            "status": PENDING,
            "attempts": 0,
            "created_at_ms": now_ms,
            "next_attempt_ms": now_ms,
        }
        for endpoint_id in targets
    ]
    await conn.execute(sa.insert(webhook_deliveries), rows)
    return [row["id"] for row in rows]


#: the ids of due, unclaimed pending deliveries (built once: the dispatcher asks every second)
_DUE = Prepared(
    sa.select(webhook_deliveries.c.id)
    .where(
        webhook_deliveries.c.status == PENDING,
        webhook_deliveries.c.next_attempt_ms <= sa.bindparam("now_ms", type_=sa.BigInteger),
        sa.or_(
            webhook_deliveries.c.lease_until_ms.is_(None),
            webhook_deliveries.c.lease_until_ms < sa.bindparam("now_ms", type_=sa.BigInteger),
        ),
    )
    .order_by(webhook_deliveries.c.next_attempt_ms)
    .limit(sa.bindparam("limit", type_=sa.Integer))
    .with_for_update(skip_locked=True)
)
#: when the earliest pending delivery is due
#: a pending delivery is due at its next attempt, or once its claim lapsed if that is later
#: (``claim_due`` takes it when ``lease_until_ms < now``)
_NEXT_DUE = Prepared(
    sa.select(
        sa.func.min(
            sa.case(
                (
                    webhook_deliveries.c.lease_until_ms >= webhook_deliveries.c.next_attempt_ms,
                    webhook_deliveries.c.lease_until_ms + 1,
                ),
                else_=webhook_deliveries.c.next_attempt_ms,
            )
        )
    ).where(webhook_deliveries.c.status == PENDING)
)


async def claim_due(
    conn: AsyncConnection, *, now_ms: int, lease_ms: int, limit: int
) -> list[Delivery]:
    """Take up to ``limit`` due, unclaimed pending deliveries for ``lease_ms``. Concurrent
    claimers never take the same row: PostgreSQL skips rows another transaction locked, and
    SQLite's write transaction runs alone."""
    d = webhook_deliveries.c
    ids = [row.id for row in await _DUE.rows(conn, {"now_ms": now_ms, "limit": limit})]
    if not ids:
        return []
    rows = await conn.execute(
        sa.update(webhook_deliveries)
        .where(d.id.in_(ids))
        .values(lease_until_ms=now_ms + lease_ms)
        .returning(*webhook_deliveries.c)
    )
    return sorted((_delivery(row) for row in rows), key=lambda x: x.next_attempt_ms)


async def claim(
    conn: AsyncConnection, delivery_id: str, *, now_ms: int, lease_ms: int
) -> Delivery | None:
    """Take ``delivery_id`` for ``lease_ms`` if it is pending and nobody holds it."""
    d = webhook_deliveries.c
    row = (
        await conn.execute(
            sa.update(webhook_deliveries)
            .where(
                d.id == delivery_id,
                d.status == PENDING,
                sa.or_(d.lease_until_ms.is_(None), d.lease_until_ms < now_ms),
            )
            .values(lease_until_ms=now_ms + lease_ms)
            .returning(*webhook_deliveries.c)
        )
    ).first()
    return None if row is None else _delivery(row)


async def unclaim(conn: AsyncConnection, delivery_id: str) -> None:
    await conn.execute(
        sa.update(webhook_deliveries)
        .where(webhook_deliveries.c.id == delivery_id)
        .values(lease_until_ms=None)
    )


async def due_again_ms(conn: AsyncConnection, delivery_id: str) -> int | None:
    """For a delivery someone else holds: when to look again (None: it needs nothing more)."""
    d = webhook_deliveries.c
    row = (
        await conn.execute(
            sa.select(d.status, d.next_attempt_ms, d.lease_until_ms).where(d.id == delivery_id)
        )
    ).first()
    if row is None or row.status != PENDING:
        return None
    return int(max(row.next_attempt_ms, row.lease_until_ms or 0))


async def overdue(conn: AsyncConnection, *, before_ms: int, limit: int) -> list[str]:
    """Pending, unclaimed deliveries due before ``before_ms``."""
    d = webhook_deliveries.c
    rows = await conn.scalars(
        sa.select(d.id)
        .where(
            d.status == PENDING,
            d.next_attempt_ms < before_ms,
            sa.or_(d.lease_until_ms.is_(None), d.lease_until_ms < before_ms),
        )
        .order_by(d.next_attempt_ms)
        .limit(limit)
    )
    return [str(x) for x in rows]


async def next_due_ms(conn: AsyncConnection) -> int | None:
    """When the earliest pending delivery is due, its claim lapsed (None: nothing pending)."""
    value = await _NEXT_DUE.scalar(conn)
    return None if value is None else int(value)


async def record_attempt(
    conn: AsyncConnection,
    delivery: Delivery,
    *,
    at_ms: int,
    outcome: AttemptOutcome,
    status_code: int | None,
    duration_ms: int,
    next_attempt_ms: int | None,
) -> DeliveryStatus | None:
    """Store the attempt and the delivery's new state: delivered on success, pending until
    ``next_attempt_ms`` when given, failed otherwise. Returns the new status, or None when
    another sender recorded an attempt first (our claim had lapsed: the receiver may have got
    the message twice, under one ``webhook-id``)."""
    attempt = delivery.attempts + 1
    if outcome.success:
        status = DeliveryStatus.DELIVERED
    elif next_attempt_ms is not None:
        status = DeliveryStatus.PENDING
    else:
        status = DeliveryStatus.FAILED
    d = webhook_deliveries.c
    updated = await conn.scalar(
        sa.update(webhook_deliveries)
        .where(d.id == delivery.id, d.attempts == delivery.attempts, d.status == PENDING)
        .values(
            attempts=attempt,
            status=status.value,
            lease_until_ms=None,
            next_attempt_ms=next_attempt_ms if next_attempt_ms is not None else at_ms,
            finished_at_ms=None if status is DeliveryStatus.PENDING else at_ms,
        )
        .returning(d.id)
    )
    if updated is None:
        return None
    await conn.execute(
        sa.insert(webhook_attempts).values(
            delivery_id=delivery.id,
            attempt=attempt,
            at_ms=at_ms,
            outcome=outcome.value,
            status_code=status_code,
            duration_ms=duration_ms,
        )
    )
    return status


async def endpoint_succeeded(conn: AsyncConnection, endpoint_id: str, *, now_ms: int) -> None:
    await conn.execute(
        sa.update(webhook_endpoints)
        .where(webhook_endpoints.c.id == endpoint_id)
        .values(failing_since_ms=None, last_success_ms=now_ms)
    )


async def endpoint_failed(conn: AsyncConnection, delivery: Delivery) -> int | None:
    """Mark the endpoint failing, unless it already was, since ``delivery`` was created or its
    last success, whichever is later; returns since when (None: the endpoint is gone)."""
    e = webhook_endpoints.c
    row = (
        await conn.execute(
            sa.select(e.failing_since_ms, e.last_success_ms).where(e.id == delivery.endpoint_id)
        )
    ).first()
    if row is None:
        return None
    if row.failing_since_ms is not None:
        return int(row.failing_since_ms)
    since = max(delivery.created_at_ms, row.last_success_ms or 0)
    await conn.execute(
        sa.update(webhook_endpoints)
        .where(e.id == delivery.endpoint_id)
        .values(failing_since_ms=since)
    )
    return since


async def disable_endpoint(
    conn: AsyncConnection, endpoint_id: str, *, now_ms: int, reason: str
) -> None:
    """Disable the endpoint and give up its pending deliveries."""
    await conn.execute(
        sa.update(webhook_endpoints)
        .where(webhook_endpoints.c.id == endpoint_id, webhook_endpoints.c.disabled_at_ms.is_(None))
        .values(disabled_at_ms=now_ms, disabled_reason=reason)
    )
    d = webhook_deliveries.c
    await conn.execute(
        sa.update(webhook_deliveries)
        .where(d.endpoint_id == endpoint_id, d.status == PENDING)
        .values(status=DeliveryStatus.FAILED.value, lease_until_ms=None, finished_at_ms=now_ms)
    )


async def list_deliveries(
    conn: AsyncConnection, endpoint_id: str, *, limit: int
) -> list[tuple[Delivery, list[Attempt]]]:
    """The endpoint's newest deliveries with their attempts, newest first."""
    d = webhook_deliveries.c
    rows = await conn.execute(
        sa.select(webhook_deliveries)
        .where(d.endpoint_id == endpoint_id)
        .order_by(d.created_at_ms.desc(), d.id.desc())
        .limit(limit)
    )
    deliveries = [_delivery(row) for row in rows]
    if not deliveries:
        return []
    a = webhook_attempts.c
    attempt_rows = await conn.execute(
        sa.select(webhook_attempts)
        .where(a.delivery_id.in_([x.id for x in deliveries]))
        .order_by(a.delivery_id, a.attempt)
    )
    attempts: dict[str, list[Attempt]] = {}
    for row in attempt_rows:
        attempts.setdefault(row.delivery_id, []).append(
            Attempt(
                delivery_id=row.delivery_id,
                attempt=int(row.attempt),
                at_ms=int(row.at_ms),
                outcome=AttemptOutcome(row.outcome),
                status_code=row.status_code,
                duration_ms=int(row.duration_ms),
            )
        )
    return [(x, attempts.get(x.id, [])) for x in deliveries]
