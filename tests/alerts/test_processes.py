"""Issue 25 acceptance on real processes: one alert episode driven through many recomputes on two
servers and two workers (PostgreSQL, Redis), across a restart, at 1m and 5m views, counts one
alert per level at every subscriber and one signed webhook per alert; an embedded server
SIGKILLed with deliveries pending delivers them after its restart."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from bullmq import Job, Queue

from tests.accounts import new_user
from tests.alerts.helpers import bearer, heart_rate, ingest, live_session, wait_view
from tests.conftest import REDIS_URL, in_thread
from tests.processes import (
    CLIENT_TLS,
    ServerProcess,
    redis_answers,
    serve_subprocess,
    serve_subprocesses,
    vitalcast_env,
)
from tests.queue.conftest import delete_prefix
from tests.queue.helpers import START_TIMEOUT_S, STOP_TIMEOUT_S, worker_subprocess
from tests.realtime.conftest import ClientFactory, SocketClient
from tests.services import service_missing
from tests.webhooks.receiver import Receiver
from vitalcast.redis_connections import blocking_options

pytestmark = pytest.mark.slow

#: retries 0.2 s, 0.4 s, 0.8 s, then every second: a receiver that comes up gets what is pending
#: within a second, not after the next doubling (which had left the two-server test waiting up
#: to 13 s when a loaded machine restarted server B slowly)
WEBHOOKS = {
    "webhook_allow_private": "true",
    "webhook_retry_base_ms": "200",
    "webhook_retry_max_ms": "1000",
}


@contextlib.contextmanager
def one_server(env: dict[str, str], log: Path) -> Iterator[ServerProcess]:
    with serve_subprocess(
        env, log, start_timeout_s=START_TIMEOUT_S, stop_timeout_s=STOP_TIMEOUT_S
    ) as server:
        yield server


async def views_saved(url: str, token: str, session_id: str, seq: int) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30, verify=CLIENT_TLS) as http:
        for resolution in ("1m", "5m"):
            await wait_view(http, token, session_id, resolution, seq)


async def subscribe(client: SocketClient, session_id: str, since: int | None = None) -> None:
    request: dict[str, Any] = {"session_id": session_id}
    if since is not None:
        request["since_watermark"] = since
    ack = await client.call("subscribe", request)
    assert ack["ok"], ack


async def test_one_episode_on_two_servers_and_two_workers_across_a_restart(
    pg_database_url: str | None, tmp_path: Path, socket_client: ClientFactory
) -> None:
    """Sixteen ingests through alternating servers, each recomputing the 1m and 5m views on
    one of two workers, with a server and a worker restarted half-way and the webhook receiver
    down until then: each subscriber receives exactly one elevated and one critical alert
    (then the marker alert of a third rule); the table holds one row per rule; the receiver
    gets every alert once, each under one webhook-id, verified by the reference library."""
    if pg_database_url is None:
        service_missing("PostgreSQL")
    assert pg_database_url is not None
    if not redis_answers(REDIS_URL):
        service_missing("Redis")
    prefix = f"vt{uuid.uuid4().hex[:10]}"
    env = vitalcast_env(
        tmp_path / "data",
        database_url=pg_database_url,
        redis_url=REDIS_URL,
        queue_prefix=prefix,
        socketio_channel=f"{prefix}-sio",
        **WEBHOOKS,
    )
    receiver = Receiver()
    user_id, token = await new_user(pg_database_url)
    try:
        with contextlib.ExitStack() as stack:
            a, b = stack.enter_context(
                serve_subprocesses(
                    env,
                    [tmp_path / "a.log", tmp_path / "b.log"],
                    start_timeout_s=START_TIMEOUT_S,
                    stop_timeout_s=STOP_TIMEOUT_S,
                )
            )
            stack.enter_context(worker_subprocess(env, tmp_path / "w1.log"))
            w2 = contextlib.ExitStack()
            w2.enter_context(worker_subprocess(env, tmp_path / "w2.log"))
            async with httpx.AsyncClient(base_url=a.url, timeout=30, verify=CLIENT_TLS) as http:
                created = await http.post(
                    "/api/v1/webhooks",
                    json={"url": receiver.url, "events": ["session.alert"]},
                    headers=bearer(token),
                )
                assert created.status_code == 201, created.text
                receiver.secret = created.json()["secret"]
                endpoint_id = created.json()["id"]
                session = await live_session(http, token)
            sid = session["id"]
            on_a = await socket_client(a.url, token)
            on_b = await socket_client(b.url, token)
            for client in (on_a, on_b):
                await subscribe(client, sid)
            seq = 0
            urls = [a.url, b.url]

            async def send(n: int, sample: dict[str, Any]) -> int:
                async with httpx.AsyncClient(
                    base_url=urls[n % 2], timeout=30, verify=CLIENT_TLS
                ) as http:
                    seq = await ingest(http, token, [sample])
                await views_saved(urls[(n + 1) % 2], token, sid, seq)
                return seq

            # before the crossing: the two views exist and are saved (ingest recomputes both)
            seq = await send(0, heart_rate("n", 22, 72))
            for n in range(8):
                seq = await send(n, heart_rate(f"e{n}", 20 - n, 115 + n))

            # restart: server B and worker 2 (SIGTERM), the receiver comes up meanwhile
            # Stopping and starting processes waits in threads: the loop keeps answering server
            # A's Engine.IO pings meanwhile (under a busy loop per core these waits outlasted the
            # ping interval and timeout, and A closed ``on_a``)
            seen_b = seq
            await asyncio.to_thread(w2.close)
            await asyncio.to_thread(
                stack.enter_context, worker_subprocess(env, tmp_path / "w2-again.log")
            )
            with contextlib.suppress(Exception):
                await on_b.sio.disconnect()
            b_log = tmp_path / "b.log"
            b.process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(b.process.wait, STOP_TIMEOUT_S)
            b = await asyncio.to_thread(stack.enter_context, one_server(env, b_log))
            urls[1] = b.url
            await receiver.start()
            on_b = await socket_client(b.url, token)
            await subscribe(on_b, sid, since=seen_b)

            for n in range(4):
                seq = await send(n, heart_rate(f"g{n}", 12 - n, 120))
            for n in range(4):
                seq = await send(n, heart_rate(f"c{n}", 8 - n, 135 + n))
            await send(0, heart_rate("low", 1, 38))

            got_a = await on_a.before("session.alert", lambda e: e["rule"] == "<=40", 90)
            got_b_after_restart = await on_b.before(
                "session.alert", lambda e: e["rule"] == "<=40", 90
            )
            await receiver.wait_for(3, timeout_s=60)
            async with httpx.AsyncClient(base_url=a.url, timeout=30, verify=CLIENT_TLS) as http:
                listed = await http.get(
                    f"/api/v1/webhooks/{endpoint_id}/deliveries", headers=bearer(token)
                )
            await asyncio.to_thread(w2.close)
    finally:
        await receiver.stop()
        in_thread(asyncio.run, delete_prefix(REDIS_URL, prefix))
    assert [(e["rule"], e["level"]) for e in got_a] == [
        (">=111", "elevated"),
        (">=131", "critical"),
    ]
    # B was restarted after the elevated alert and resumed from the watermark it had seen
    assert [(e["rule"], e["level"]) for e in got_b_after_restart] == [(">=131", "critical")]
    rules = sorted(r.body["data"]["rule"] for r in receiver.received)
    assert rules == ["<=40", ">=111", ">=131"]
    assert receiver.unverified == 0
    assert len({r.msg_id for r in receiver.received}) == 3
    deliveries = listed.json()["items"]
    assert sorted(d["id"] for d in deliveries) == sorted(r.msg_id for r in receiver.received)
    elevated = next(r.msg_id for r in receiver.received if r.body["data"]["rule"] == ">=111")
    first = next(d for d in deliveries if d["id"] == elevated)
    assert [x["outcome"] for x in first["attempts"]][-1] == "delivered"
    assert len(first["attempts"]) >= 2, "the first alert was sent while the receiver was down"
    # scaled out, webhooks are BullMQ jobs that the workers send; the servers only sweep
    logs = await asyncio.to_thread(lambda: {p.name: p.read_text() for p in tmp_path.glob("*.log")})
    sent_by = {name for name, text in logs.items() if "webhook_attempt" in text}
    assert sent_by and all(name.startswith("w") for name in sent_by), sent_by
    assert user_id


async def test_deliveries_pending_at_a_sigkill_are_sent_after_the_restart(
    tmp_path: Path, socket_client: ClientFactory
) -> None:
    """Embedded (SQLite): an alert's delivery fails while the receiver is down; the server is
    SIGKILLed; with the receiver up and the server started again on the same data, the
    delivery arrives under the id its failed attempts had, verified by the reference library."""
    env = vitalcast_env(tmp_path / "data", **WEBHOOKS)
    receiver = Receiver()
    database_url = f"sqlite+aiosqlite:///{(tmp_path / 'data' / 'vitalcast.db').resolve()}"
    try:
        with one_server(env, tmp_path / "first.log") as server:
            _user_id, token = await new_user(database_url)
            async with httpx.AsyncClient(
                base_url=server.url, timeout=30, verify=CLIENT_TLS
            ) as http:
                created = await http.post(
                    "/api/v1/webhooks",
                    json={"url": receiver.url, "events": ["session.alert"]},
                    headers=bearer(token),
                )
                receiver.secret = created.json()["secret"]
                endpoint = f"/api/v1/webhooks/{created.json()['id']}/deliveries"
                session = await live_session(http, token)
                client = await socket_client(server.url, token)
                await subscribe(client, session["id"])
                await ingest(http, token, [heart_rate("x", 5, 115)])
                await client.next("session.alert")
                for _ in range(600):
                    items = (await http.get(endpoint, headers=bearer(token))).json()["items"]
                    if items and len(items[0]["attempts"]) >= 2:
                        break
                    await asyncio.sleep(0.05)
                assert items[0]["status"] == "pending"
                pending_id = items[0]["id"]
            server.process.send_signal(signal.SIGKILL)
            await asyncio.to_thread(server.process.wait, 10)
        await receiver.start()
        # The restarted server sends the pending delivery at once, to the receiver on this
        # test's loop: its start-up is waited for in a thread, so the receiver answers meanwhile
        # (a blocked loop left the attempt hanging until the server was healthy)
        with contextlib.ExitStack() as stack:
            server = await asyncio.to_thread(
                stack.enter_context, one_server(env, tmp_path / "second.log")
            )
            await receiver.wait_for(1, timeout_s=60)
            async with httpx.AsyncClient(
                base_url=server.url, timeout=30, verify=CLIENT_TLS
            ) as http:
                for _ in range(600):
                    items = (await http.get(endpoint, headers=bearer(token))).json()["items"]
                    if items[0]["status"] == "delivered":
                        break
                    await asyncio.sleep(0.05)
    finally:
        await receiver.stop()
    assert [r.msg_id for r in receiver.received] == [pending_id]
    assert receiver.unverified == 0
    assert items[0]["status"] == "delivered"
    assert receiver.received[0].body["data"]["rule"] == ">=111"


async def test_scaled_out_deliveries_pending_at_a_sigkill_are_sent_after_the_restart(
    pg_database_url: str | None, tmp_path: Path, socket_client: ClientFactory
) -> None:
    """Scaled out (PostgreSQL, Redis): the alert's delivery is a BullMQ job whose attempts fail
    while the receiver is down; the server and the worker are SIGKILLed; started again with the
    receiver up, the job (still in Redis, delayed) is sent under the same webhook-id."""
    if pg_database_url is None:
        service_missing("PostgreSQL")
    assert pg_database_url is not None
    if not redis_answers(REDIS_URL):
        service_missing("Redis")
    prefix = f"vt{uuid.uuid4().hex[:10]}"
    env = vitalcast_env(
        tmp_path / "data",
        database_url=pg_database_url,
        redis_url=REDIS_URL,
        queue_prefix=prefix,
        socketio_channel=f"{prefix}-sio",
        **WEBHOOKS,
    )
    receiver = Receiver()
    _user_id, token = await new_user(pg_database_url)
    try:
        with (
            one_server(env, tmp_path / "first.log") as server,
            worker_subprocess(env, tmp_path / "w-first.log") as worker,
        ):
            async with httpx.AsyncClient(
                base_url=server.url, timeout=30, verify=CLIENT_TLS
            ) as http:
                created = await http.post(
                    "/api/v1/webhooks",
                    json={"url": receiver.url, "events": ["session.alert"]},
                    headers=bearer(token),
                )
                receiver.secret = created.json()["secret"]
                endpoint = f"/api/v1/webhooks/{created.json()['id']}/deliveries"
                session = await live_session(http, token)
                client = await socket_client(server.url, token)
                await subscribe(client, session["id"])
                await ingest(http, token, [heart_rate("x", 5, 115)])
                await client.next("session.alert", 60)
                for _ in range(600):
                    items = (await http.get(endpoint, headers=bearer(token))).json()["items"]
                    if items and len(items[0]["attempts"]) >= 2:
                        break
                    await asyncio.sleep(0.05)
                assert items[0]["status"] == "pending"
                pending_id = items[0]["id"]
            for child in (worker, server):
                child.process.send_signal(signal.SIGKILL)
                await asyncio.to_thread(child.process.wait, 10)
        queue = Queue(
            "webhook-deliveries", {"connection": blocking_options(REDIS_URL), "prefix": prefix}
        )
        try:
            job = await Job.fromId(queue, pending_id)
        finally:
            await queue.close()
        assert job is not None and job.data == {"delivery_id": pending_id}
        await receiver.start()
        # started in threads: the receiver on this loop answers the deliveries meanwhile
        with contextlib.ExitStack() as stack:
            server = await asyncio.to_thread(
                stack.enter_context, one_server(env, tmp_path / "second.log")
            )
            await asyncio.to_thread(
                stack.enter_context, worker_subprocess(env, tmp_path / "w-second.log")
            )
            await receiver.wait_for(1, timeout_s=60)
            async with httpx.AsyncClient(
                base_url=server.url, timeout=30, verify=CLIENT_TLS
            ) as http:
                for _ in range(600):
                    items = (await http.get(endpoint, headers=bearer(token))).json()["items"]
                    if items[0]["status"] == "delivered":
                        break
                    await asyncio.sleep(0.05)
    finally:
        await receiver.stop()
        in_thread(asyncio.run, delete_prefix(REDIS_URL, prefix))
    assert [r.msg_id for r in receiver.received] == [pending_id]
    assert receiver.unverified == 0
    assert items[0]["status"] == "delivered"
