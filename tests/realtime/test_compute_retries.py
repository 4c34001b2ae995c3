"""Retry in the embedded mode, end to end on a served app: a compute that fails (through the
service's aggregator seam) or finds a crashed holder's lease heals by itself, with nobody calling
GET, and the subscriber hears about it."""

from __future__ import annotations

from typing import Any

from tests.doubles import FailingFirst
from tests.ingest.helpers import MINUTE_MS, hr, now_ms
from tests.realtime.conftest import ClientFactory, LiveServer, serve_in_thread
from tests.realtime.test_end_to_end import ingest, next_update_at, telemetry
from tests.realtime.test_socket_server import create_session
from vitalcast.settings import Settings
from vitalcast.telemetry.keys import Resolution, TelemetryKey
from vitalcast.telemetry.store.leases import SessionTelemetryCacheRepository
from vitalcast.telemetry.store.rows import Lease
from vitalcast.wiring import Seams


async def subscribed_session(live: LiveServer, users: Any, socket_client: ClientFactory) -> Any:
    user_id, token = await users.create()
    session = await create_session(live.url, token)
    client = await socket_client(live.url, token)
    assert (await client.call("subscribe", {"session_id": session["id"]}))["ok"] is True
    return user_id, token, session, client


async def test_compute_failing_twice_ends_ready_and_the_subscriber_hears(
    settings: Settings, users: Any, socket_client: ClientFactory
) -> None:
    """The ingest's compute fails twice (the aggregator seam raises); the coordinator retries
    after each backoff (1 s, 2 s) and the third run saves: the subscriber gets session.updated
    (ready) and a GET afterwards is ready at that watermark."""
    seam = FailingFirst(failures=2)
    with serve_in_thread(settings, Seams(aggregator=seam)) as live:
        _user_id, token, session, client = await subscribed_session(live, users, socket_client)
        samples = [hr(f"r{i}", now_ms() - i * MINUTE_MS) for i in range(5)]
        seq = await ingest(live.url, token, samples)
        event = await next_update_at(client, seq, timeout_s=20)
        assert event["state"] == "ready" and event["source_watermark"] == seq
        assert seam.calls == 3
        stats = live.parts.coordinator.stats
        assert stats.retries == 2 and stats.outcomes["failed"] == 2
        body = await telemetry(live.url, token, session["id"])
        assert body["state"] == "ready" and body["telemetry"]["source_watermark"] == seq


async def test_lease_of_a_crashed_holder_delays_the_compute_but_does_not_drop_it(
    live: LiveServer, users: Any, socket_client: ClientFactory, db: Any
) -> None:
    """A dead process still holds the view's lease (as after a restart): the ingest's compute
    finds it busy, is retried as the lease runs out, and the subscriber gets the update."""
    user_id, token, session, client = await subscribed_session(live, users, socket_client)
    key = TelemetryKey(session["id"], 60, Resolution.ONE_MINUTE, user_id=user_id)
    async with db.write() as conn:
        lease = await SessionTelemetryCacheRepository().take_lease(
            conn, key, owner="crashed-node", now_ms=now_ms(), lease_ms=1_500
        )
    assert isinstance(lease, Lease)

    seq = await ingest(live.url, token, [hr("r1", now_ms() - MINUTE_MS)])
    event = await next_update_at(client, seq, timeout_s=20)
    assert event["state"] == "ready"
    stats = live.parts.coordinator.stats
    assert stats.outcomes["lease_busy"] >= 1 and stats.retries >= 1
