"""Webhook endpoints and deliveries on a running app (SQLite and PostgreSQL), against real
receivers that check every signature with the ``standardwebhooks`` reference library."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import orjson
import pytest

from tests.conftest import Users
from vitalcast.clock import now_ms
from vitalcast.settings import Settings
from vitalcast.webhooks import repository
from vitalcast.webhooks.addresses import system_resolver
from vitalcast.webhooks.models import Delivery, DeliveryStatus
from vitalcast.wiring import Seams


async def publish(running: Any, user_id: str, count: int = 1) -> list[str]:
    """Commit ``count`` session.alert messages for ``user_id`` as the alert path does (the
    deliveries in the event's transaction), then wake the dispatcher."""
    parts = running.parts
    ids: list[str] = []
    async with parts.db.write() as conn:
        for n in range(count):
            body = orjson.dumps({"type": "session.alert", "data": {"n": n}})
            ids += await repository.enqueue(
                conn, user_id=user_id, event_type="session.alert", body=body, now_ms=now_ms()
            )
    parts.dispatcher.wake()
    return ids


async def public_dns(host: str, port: int) -> list[str]:
    """A resolver for names a test makes up (the test machine has no DNS): a public address."""
    return ["93.184.215.14"]


async def create(running: Any, headers: dict[str, str], url: str, **extra: Any) -> Any:
    return await running.client.post(
        "/api/v1/webhooks", json={"url": url, "events": ["session.alert"], **extra}, headers=headers
    )


async def deliveries(running: Any, headers: dict[str, str], endpoint_id: str) -> list[Any]:
    answer = await running.client.get(f"/api/v1/webhooks/{endpoint_id}/deliveries", headers=headers)
    assert answer.status_code == 200
    return list(answer.json()["items"])


async def wait_until(check: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_endpoints_are_created_listed_and_deleted_by_their_owner_only(
    make_settings, run_app, users: Users
):
    """201 with a whsec_ secret of 24 random bytes, listed without it, someone else's is a 404,
    unknown event types are refused, delete is 204 and then 404."""
    async with run_app(make_settings(), Seams(resolver=public_dns)) as running:
        mine, theirs = await users.headers(), await users.headers()
        created = await create(running, mine, "https://example.org/hook")
        assert created.status_code == 201, created.text
        endpoint = created.json()
        assert endpoint["secret"].startswith("whsec_")
        assert len(base64.b64decode(endpoint["secret"].removeprefix("whsec_"))) == 24
        listed = (await running.client.get("/api/v1/webhooks", headers=mine)).json()["items"]
        assert [e["id"] for e in listed] == [endpoint["id"]]
        assert listed[0]["secret"] is None and listed[0]["disabled"] is False
        assert (await running.client.get("/api/v1/webhooks", headers=theirs)).json()["items"] == []
        path = f"/api/v1/webhooks/{endpoint['id']}"
        for call in ("get", "delete"):
            suffix = "/deliveries" if call == "get" else ""
            refused = await getattr(running.client, call)(path + suffix, headers=theirs)
            assert refused.status_code == 404
            assert refused.json()["code"] == "WEBHOOK_NOT_FOUND"
        unknown = await create(running, mine, "https://example.org/hook", events=["x.y"])
        assert unknown.status_code == 422 and unknown.json()["code"] == "VALIDATION_ERROR"
        assert (await running.client.delete(path, headers=mine)).status_code == 204
        assert (await running.client.delete(path, headers=mine)).status_code == 404


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "https://127.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "https://169.254.169.254/latest/meta-data/",
        "https://10.1.2.3/hook",
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://localhost/hook",
        "https://user:pass@example.org/hook",
        "ftp://example.org/hook",
    ],
)
async def test_private_addresses_and_plain_http_are_refused(make_settings, run_app, users, url):
    """Without VITALCAST_WEBHOOK_ALLOW_PRIVATE, only https to public addresses is accepted:
    loopback, link-local (the cloud metadata service), private ranges, a host name that resolves
    to loopback, credentials and other schemes are 422 WEBHOOK_URL_REFUSED; nothing is stored."""

    async def dns(host: str, port: int) -> list[str]:
        # localhost through the machine's own resolver: a real name with a private answer
        return await (system_resolver if host == "localhost" else public_dns)(host, port)

    async with run_app(make_settings(webhook_allow_private=False), Seams(resolver=dns)) as running:
        headers = await users.headers()
        answer = await create(running, headers, url)
        assert answer.status_code == 422, answer.text
        assert answer.json()["code"] == "WEBHOOK_URL_REFUSED"
        listed = await running.client.get("/api/v1/webhooks", headers=headers)
        assert listed.json()["items"] == []


async def test_a_name_that_resolves_to_a_private_address_when_sending_is_not_contacted(
    make_settings, run_app, users: Users, receivers
):
    """DNS checked at every attempt: a name that was public at creation and resolves to
    loopback later (rebinding) is refused when sending, and the receiver there gets nothing."""
    receiver = receivers()
    await receiver.start()
    answers = {"rebind.test": ["93.184.215.14"]}

    async def resolver(host: str, port: int) -> list[str]:
        return answers[host]

    settings = make_settings(webhook_allow_private=False, webhook_retry_window_ms=1_000)
    async with run_app(settings, Seams(resolver=resolver)) as running:
        user_id, token = await users.create()
        headers = {"Authorization": f"Bearer {token}"}
        url = f"https://rebind.test:{receiver.port}/hook"
        endpoint = (await create(running, headers, url)).json()
        answers["rebind.test"] = ["127.0.0.1"]
        await publish(running, user_id)

        async def given_up() -> bool:
            items = await deliveries(running, headers, endpoint["id"])
            return items[0]["status"] == "failed"

        await wait_until(given_up)
        items = await deliveries(running, headers, endpoint["id"])
        assert {a["outcome"] for a in items[0]["attempts"]} == {"address_refused"}
    assert receiver.hits == 0


async def test_the_connection_goes_to_the_checked_address_under_the_urls_host_name(
    make_settings, run_app, users: Users, receivers
):
    """The sender connects to the address it resolved and checked, not to a second lookup's,
    and presents the URL's host name (a name only our resolver knows reaches the receiver)."""
    receiver = receivers()
    await receiver.start()

    async def resolver(host: str, port: int) -> list[str]:
        assert host == "receiver.test"
        return ["127.0.0.1"]

    async with run_app(make_settings(), Seams(resolver=resolver)) as running:
        user_id, token = await users.create()
        headers = {"Authorization": f"Bearer {token}"}
        url = f"http://receiver.test:{receiver.port}/hook"
        receiver.secret = (await create(running, headers, url)).json()["secret"]
        await publish(running, user_id)
        await receiver.wait_for(1)
    assert receiver.received[0].host == f"receiver.test:{receiver.port}"
    assert receiver.unverified == 0


async def test_a_redirect_is_never_followed(make_settings, run_app, users: Users, receivers):
    """A receiver answering 307 towards another address (here the metadata service's, and a
    second local receiver) gets its attempt recorded as ``redirect``; the target is never
    contacted and the delivery is retried, not counted as delivered."""
    target = receivers()
    await target.start()
    redirecting = receivers(redirect_to=target.url)
    await redirecting.start()
    async with run_app(make_settings(webhook_retry_window_ms=1_000)) as running:
        user_id, token = await users.create()
        headers = {"Authorization": f"Bearer {token}"}
        endpoint = (await create(running, headers, redirecting.url)).json()
        await publish(running, user_id)

        async def given_up() -> bool:
            return (await deliveries(running, headers, endpoint["id"]))[0]["status"] == "failed"

        await wait_until(given_up)
        attempts = (await deliveries(running, headers, endpoint["id"]))[0]["attempts"]
    assert redirecting.hits == len(attempts) >= 2
    assert {a["outcome"] for a in attempts} == {"redirect"}
    assert {a["status_code"] for a in attempts} == {307}
    assert target.hits == 0


async def test_receiver_down_then_up_gets_every_message_once_under_one_id_each(
    make_settings, run_app, users: Users, receivers
):
    """Messages sent while the receiver is down are retried with backoff; once it is up every
    one arrives, verified by the reference library, each body under exactly one webhook-id."""
    receiver = receivers()
    async with run_app(make_settings()) as running:
        user_id, token = await users.create()
        headers = {"Authorization": f"Bearer {token}"}
        endpoint = (await create(running, headers, receiver.url)).json()
        receiver.secret = endpoint["secret"]
        ids = await publish(running, user_id, count=5)

        async def retried() -> bool:
            items = await deliveries(running, headers, endpoint["id"])
            return all(len(item["attempts"]) >= 2 for item in items)

        await wait_until(retried)
        listed = (await running.client.get("/api/v1/webhooks", headers=headers)).json()["items"]
        assert listed[0]["failing_since_ms"] is not None
        await receiver.start()

        async def all_delivered() -> bool:
            items = await deliveries(running, headers, endpoint["id"])
            return {item["status"] for item in items} == {"delivered"}

        await wait_until(all_delivered)
        items = await deliveries(running, headers, endpoint["id"])
        listed = (await running.client.get("/api/v1/webhooks", headers=headers)).json()["items"]
    assert {item["status"] for item in items} == {"delivered"}
    for item in items:
        outcomes = [a["outcome"] for a in item["attempts"]]
        assert outcomes[-1] == "delivered" and set(outcomes[:-1]) == {"connect_error"}
    assert receiver.unverified == 0
    ids_by_body: dict[int, set[str]] = {}
    for got in receiver.received:
        ids_by_body.setdefault(got.body["data"]["n"], set()).add(got.msg_id)
    assert ids_by_body == {n: {ids[n]} for n in range(5)}
    assert listed[0]["failing_since_ms"] is None


async def test_an_endpoint_failing_for_the_whole_window_is_disabled_and_says_so(
    make_settings, run_app, users: Users, receivers
):
    """Answering 500 for the retry window (shortened here) disables the endpoint: its listing
    says so and why, its deliveries are given up, and new events create none for it."""
    receiver = receivers(status=500)
    async with run_app(make_settings(webhook_retry_window_ms=1_500)) as running:
        user_id, token = await users.create()
        headers = {"Authorization": f"Bearer {token}"}
        endpoint = (await create(running, headers, receiver.url)).json()
        receiver.secret = endpoint["secret"]
        await receiver.start()
        await publish(running, user_id)

        async def disabled() -> bool:
            listed = await running.client.get("/api/v1/webhooks", headers=headers)
            return bool(listed.json()["items"][0]["disabled"])

        await wait_until(disabled)
        listed = (await running.client.get("/api/v1/webhooks", headers=headers)).json()["items"]
        assert "failed" in listed[0]["disabled_reason"]
        items = await deliveries(running, headers, endpoint["id"])
        assert [item["status"] for item in items] == ["failed"]
        assert {a["outcome"] for a in items[0]["attempts"]} == {"http_error"}
        assert await publish(running, user_id) == []
    assert receiver.received and receiver.unverified == 0


async def test_retries_double_from_the_base_up_to_the_longest_wait_within_the_window(
    make_settings, run_app
):
    """The schedule after each failed attempt: the base, doubled per attempt, never more than
    ``webhook_retry_max_ms`` apart, never past the window's end, and none after it."""
    settings = make_settings(
        webhook_retry_base_ms=100, webhook_retry_max_ms=1_000, webhook_retry_window_ms=60_000
    )
    async with run_app(settings) as running:
        dispatcher = running.parts.dispatcher

        def after(attempts: int, failed_at_ms: int) -> int | None:
            delivery = Delivery(
                "d", "e", "u", "session.alert", b"{}", DeliveryStatus.PENDING, attempts, 0, 0, None
            )
            return dispatcher.next_attempt_ms(delivery, failed_at_ms)

        assert [after(n, 10_000) for n in range(6)] == [
            10_100, 10_200, 10_400, 10_800, 11_000, 11_000,
        ]  # fmt: skip
        assert after(50, 59_500) == 60_000
        assert after(50, 60_000) is None


async def test_the_default_schedule_is_the_documented_one(settings: Settings, run_app) -> None:
    """With the defaults: 5 s after the first failure, doubling, at most 4 h apart, the last
    attempt exactly 24 h after the message was created, then none: 18 attempts in all."""
    async with run_app(settings) as running:
        dispatcher = running.parts.dispatcher
        delays_s: list[float] = []
        failed_at_ms, attempts = 0, 1
        while True:
            delivery = Delivery(
                "d",
                "e",
                "u",
                "session.alert",
                b"{}",
                DeliveryStatus.PENDING,
                attempts - 1,
                0,
                0,
                None,
            )
            after = dispatcher.next_attempt_ms(delivery, failed_at_ms)
            if after is None:
                break
            delays_s.append((after - failed_at_ms) / 1000)
            failed_at_ms, attempts = after, attempts + 1
    doubling = [5.0 * 2**k for k in range(12)]  # 5 s … 10,240 s, each under 4 h
    assert delays_s == [*doubling, 14_400.0, 14_400.0, 14_400.0, 14_400.0, 8_325.0]
    assert (failed_at_ms, attempts) == (86_400_000, 18)


async def test_a_slow_receiver_does_not_hold_the_sender(
    make_settings, run_app, users: Users, receivers
):
    """With one sending slot, a receiver that never answers in time costs its attempt a timeout
    and the next endpoint's message still goes out."""
    slow = receivers(delay_s=30)
    fast = receivers()
    await slow.start()
    await fast.start()
    settings = make_settings(webhook_timeout_s=0.3, webhook_concurrency=1)
    async with run_app(settings) as running:
        user_id, token = await users.create()
        headers = {"Authorization": f"Bearer {token}"}
        slow_endpoint = (await create(running, headers, slow.url)).json()
        fast.secret = (await create(running, headers, fast.url)).json()["secret"]
        await publish(running, user_id)
        await fast.wait_for(1)

        async def timed_out() -> bool:
            items = await deliveries(running, headers, slow_endpoint["id"])
            return bool(items[0]["attempts"])

        await wait_until(timed_out)
        attempts = (await deliveries(running, headers, slow_endpoint["id"]))[0]["attempts"]
    assert attempts[0]["outcome"] == "timeout"
    assert attempts[0]["duration_ms"] < 5_000


async def test_a_claimed_delivery_falls_due_when_its_claim_lapses(db, users: Users) -> None:
    """The dispatcher sleeps until the next due time (or a wake) rather than looking every
    second, so that time must be right: a pending delivery is due at its next attempt, and a
    claimed one (its sender may have died) only once the claim lapsed, when ``claim_due`` may
    take it over; a delivered one is due never."""
    user_id, _ = await users.create()
    now = now_ms()
    assert await db.unit(repository.next_due_ms) is None
    async with db.write() as conn:
        await repository.create_endpoint(
            conn,
            user_id=user_id,
            url="https://example.org/hook",
            events=["session.alert"],
            secret="whsec_dGVzdA==",
            now_ms=now,
        )
        (delivery_id,) = await repository.enqueue(
            conn, user_id=user_id, event_type="session.alert", body=b"{}", now_ms=now
        )
    due = await db.unit(repository.next_due_ms)
    assert due is not None and due <= now_ms()
    claimed = await db.unit(
        lambda conn: repository.claim_due(conn, now_ms=now_ms(), lease_ms=60_000, limit=5),
        write=True,
    )
    assert [d.id for d in claimed] == [delivery_id]
    lapses = await db.unit(repository.next_due_ms)
    assert lapses is not None and lapses > now_ms() + 50_000
    async with db.write() as conn:
        assert await repository.claim_due(conn, now_ms=lapses - 1, lease_ms=1, limit=5) == []
    async with db.write() as conn:
        taken = await repository.claim_due(conn, now_ms=lapses, lease_ms=60_000, limit=5)
    assert [d.id for d in taken] == [delivery_id]
