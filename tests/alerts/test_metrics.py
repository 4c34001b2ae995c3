"""``/metrics`` of alerts and webhooks (issue 25, requirement 4) on a served app, both databases:
after one announced alert delivered to one endpoint and refused by another, the counters and
histograms moved by exactly that much."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.alerts.helpers import bearer, heart_rate, ingest, live_session
from tests.realtime.conftest import ClientFactory, serve_in_thread
from tests.webhooks.conftest import webhook_settings
from tests.webhooks.receiver import Receiver

#: the samples of the alert and webhook metrics a test reads, by name and labels
WATCHED = {
    ("vitalcast_alerts_emitted_total", (("level", "elevated"),)),
    ("vitalcast_alerts_emitted_total", (("level", "critical"),)),
    ("vitalcast_webhook_deliveries_total", (("outcome", "delivered"),)),
    ("vitalcast_webhook_deliveries_total", (("outcome", "http_error"),)),
    ("vitalcast_webhook_attempt_seconds_count", ()),
    ("vitalcast_webhook_delivery_latency_seconds_count", ()),
}


async def scrape(http: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The watched samples of ``/metrics`` (0 when a labelled counter has no sample yet)."""
    answer = await http.get("/metrics")
    assert answer.status_code == 200
    found = dict.fromkeys(WATCHED, 0.0)
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            if key in found:
                found[key] = sample.value
    return found


async def test_alert_and_webhook_counters_move_on_an_alert_and_its_deliveries(
    database_url: str, tmp_path: Path, users: Any, socket_client: ClientFactory
) -> None:
    # a failed attempt is retried an hour later: within the test each endpoint is tried once
    settings = webhook_settings(database_url, tmp_path / "data", webhook_retry_base_ms=3_600_000)
    good, failing = Receiver(), Receiver(status=500)
    await good.start()
    await failing.start()
    try:
        with serve_in_thread(settings) as live:
            _user, token = await users.create()
            async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
                for receiver in (good, failing):
                    created = await http.post(
                        "/api/v1/webhooks",
                        json={"url": receiver.url, "events": ["session.alert"]},
                        headers=bearer(token),
                    )
                    assert created.status_code == 201, created.text
                    receiver.secret = created.json()["secret"]
                before = await scrape(http)
                session = await live_session(http, token)
                client = await socket_client(live.url, token)
                assert (await client.call("subscribe", {"session_id": session["id"]}))["ok"]
                await ingest(http, token, [heart_rate("m", 6, 125)])
                assert (await client.next("session.alert"))["level"] == "elevated"
                await good.wait_for(1)
                await failing.wait_for(1)

                expected = {
                    ("vitalcast_alerts_emitted_total", (("level", "elevated"),)): 1,
                    ("vitalcast_alerts_emitted_total", (("level", "critical"),)): 0,
                    ("vitalcast_webhook_deliveries_total", (("outcome", "delivered"),)): 1,
                    ("vitalcast_webhook_deliveries_total", (("outcome", "http_error"),)): 1,
                    ("vitalcast_webhook_attempt_seconds_count", ()): 2,
                    ("vitalcast_webhook_delivery_latency_seconds_count", ()): 1,
                }
                # an attempt is counted once its outcome is recorded, just after the receiver
                # answered: wait for that (bounded), then the counts are exact
                deadline = time.monotonic() + 30
                while True:
                    after = await scrape(http)
                    moved = {key: after[key] - before[key] for key in WATCHED}
                    if moved == expected or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.05)
                assert moved == expected
    finally:
        await good.stop()
        await failing.stop()
