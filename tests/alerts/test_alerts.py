"""``session.alert`` on a served app (SQLite and PostgreSQL): once per episode and rule whatever
the number of saves and views, escalation as a new alert, resume after a reconnect, webhooks."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.alerts.helpers import bearer, heart_rate, ingest, live_session, wait_view
from tests.realtime.conftest import ClientFactory, LiveServer, serve_in_thread
from tests.webhooks.conftest import webhook_settings
from tests.webhooks.receiver import Receiver

ALERT_FIELDS = {
    "v",
    "type",
    "session_id",
    "metric",
    "rule",
    "level",
    "start_ms",
    "extreme",
    "source_watermark",
}


@pytest.fixture
def live(database_url: str, tmp_path: Any):
    settings = webhook_settings(database_url, tmp_path / "data")
    with serve_in_thread(settings) as server:
        yield server


async def announced(live: LiveServer, session_id: str) -> list[Any]:
    """The session's stored alerts, read on the server's own loop."""
    return list(await asyncio.to_thread(live.run, live.parts.alerts.since(session_id, 0)))


async def saved_everywhere(http: httpx.AsyncClient, token: str, session_id: str, seq: int) -> None:
    """Both views of the session (1m and 5m) are saved at ``seq`` or later."""
    for resolution in ("1m", "5m"):
        await wait_view(http, token, session_id, resolution, seq)


async def test_one_alert_per_episode_and_rule_across_saves_and_views(
    live: LiveServer, users: Any, socket_client: ClientFactory
) -> None:
    """Many saves of a growing episode at two resolutions announce it once; crossing the
    critical threshold is one more alert (escalation); the event carries no other value.
    Nothing-else-arrived is shown by a later alert of another rule that must come next on the
    same socket (one server sends to one socket in order)."""
    _user, token = await users.create()
    async with httpx.AsyncClient(base_url=live.url) as http:
        session = await live_session(http, token)
        sid = session["id"]
        client = await socket_client(live.url, token)
        assert (await client.call("subscribe", {"session_id": sid}))["ok"]
        seq = await ingest(http, token, [heart_rate(f"n{i}", 20 - i, 72) for i in range(5)])
        await saved_everywhere(http, token, sid, seq)

        seq = await ingest(http, token, [heart_rate("e0", 10, 115)])
        first = await client.next("session.alert")
        assert (first["rule"], first["level"]) == (">=111", "elevated")
        assert set(first) == ALERT_FIELDS
        assert first["metric"] == "heart_rate" and first["extreme"] == 115
        assert first["source_watermark"] == seq

        for i in range(1, 6):
            seq = await ingest(http, token, [heart_rate(f"e{i}", 10 - i, 115 + i)])
            await saved_everywhere(http, token, sid, seq)
        seq = await ingest(http, token, [heart_rate("c0", 4, 135)])
        escalation = await client.next("session.alert")
        assert (escalation["rule"], escalation["level"]) == (">=131", "critical")
        for i in range(1, 4):
            seq = await ingest(http, token, [heart_rate(f"c{i}", 4 - i, 136)])
            await saved_everywhere(http, token, sid, seq)
        payload = await wait_view(http, token, sid, "1m", seq)
        episodes = payload["metrics"]["heart_rate"]["insights"]["episodes"]
        assert {e["rule"] for e in episodes} == {">=111", ">=131"}

        await ingest(http, token, [heart_rate("low", 0.5, 38)])
        earlier = await client.before("session.alert", lambda a: a["rule"] == "<=40")
        assert earlier == []
    stored = await announced(live, sid)
    assert [a.rule for a in stored] == [">=111", ">=131", "<=40"]


async def test_a_reconnecting_client_gets_the_alerts_it_missed(
    live: LiveServer, users: Any, socket_client: ClientFactory
) -> None:
    """Subscribing with since_watermark replays every session.alert announced by a later save,
    and none announced at or before it."""
    _user, token = await users.create()
    async with httpx.AsyncClient(base_url=live.url) as http:
        session = await live_session(http, token)
        watcher = await socket_client(live.url, token)
        await watcher.call("subscribe", {"session_id": session["id"]})
        seq = await ingest(http, token, [heart_rate("a", 12, 118)])
        await wait_view(http, token, session["id"], "1m", seq)
        seen = await watcher.next("session.alert")
        assert seen["rule"] == ">=111"
        seq = await ingest(http, token, [heart_rate("b", 11, 140)])
        await wait_view(http, token, session["id"], "1m", seq)
        missed = await watcher.next("session.alert")

        back = await socket_client(live.url, token)
        ack = await back.call(
            "subscribe", {"session_id": session["id"], "since_watermark": seen["source_watermark"]}
        )
        assert ack["ok"]
        replayed = await back.next("session.alert")
        assert replayed == missed and replayed["rule"] == ">=131"
        assert back.drain("session.alert") == []
        everything = await socket_client(live.url, token)
        await everything.call("subscribe", {"session_id": session["id"], "since_watermark": 0})
        assert [await everything.next("session.alert") for _ in range(2)] == [seen, missed]


async def test_before_phase_and_ended_sessions_announce_nothing(
    live: LiveServer, users: Any, socket_client: ClientFactory
) -> None:
    """An episode before the session start is no alert; nor is a crossing saved once the
    session has ended (its views are no longer live)."""
    _user, token = await users.create()
    async with httpx.AsyncClient(base_url=live.url) as http:
        session = await live_session(http, token)
        client = await socket_client(live.url, token)
        await client.call("subscribe", {"session_id": session["id"]})
        seq = await ingest(http, token, [heart_rate("pre", 40, 150), heart_rate("in", 5, 80)])
        payload = await wait_view(http, token, session["id"], "1m", seq)
        assert payload["metrics"]["heart_rate"]["insights"]["episodes"]
        ended = await http.post(
            f"/api/v1/sessions/{session['id']}/end", json={}, headers=bearer(token)
        )
        assert ended.status_code == 200
        seq = await ingest(http, token, [heart_rate("late", 3, 150)])
        payload = await wait_view(http, token, session["id"], "1m", seq)
        during = [
            e
            for e in payload["metrics"]["heart_rate"]["insights"]["episodes"]
            if e["start_ms"] >= session["start_ms"]
        ]
        assert during, "the late crossing is an episode of the ended session"
        assert client.drain("session.alert") == []
        assert await announced(live, session["id"]) == []


async def test_an_alert_reaches_the_owners_webhook_signed(
    live: LiveServer, users: Any, socket_client: ClientFactory
) -> None:
    """The announced alert is delivered to the owner's endpoint as a Standard Webhooks message
    the reference library verifies, carrying the same event as the socket; another user's
    endpoint gets nothing."""
    receiver, stranger = Receiver(), Receiver()
    await receiver.start()
    await stranger.start()
    try:
        _user_id, token = await users.create()
        _other, other_token = await users.create()
        async with httpx.AsyncClient(base_url=live.url) as http:
            for who, target in ((token, receiver), (other_token, stranger)):
                created = await http.post(
                    "/api/v1/webhooks",
                    json={"url": target.url, "events": ["session.alert"]},
                    headers=bearer(who),
                )
                assert created.status_code == 201, created.text
                target.secret = created.json()["secret"]
            session = await live_session(http, token)
            client = await socket_client(live.url, token)
            await client.call("subscribe", {"session_id": session["id"]})
            await ingest(http, token, [heart_rate("w", 6, 125)])
            event = await client.next("session.alert")
            await receiver.wait_for(1)
        got = receiver.received[0]
        assert got.body["type"] == "session.alert" and got.body["data"] == event
        assert got.msg_id.startswith("msg_") and receiver.unverified == 0
        assert stranger.hits == 0
    finally:
        await receiver.stop()
        await stranger.stop()


async def test_a_share_of_the_session_hears_its_alerts(
    live: LiveServer, users: Any, socket_client: ClientFactory
) -> None:
    """A caregiver subscribed through a share token receives the session's session.alert,
    the same event as the owner."""
    _user, token = await users.create()
    async with httpx.AsyncClient(base_url=live.url) as http:
        session = await live_session(http, token)
        shared = await http.post(
            f"/api/v1/sessions/{session['id']}/shares",
            json={"expires_in_minutes": 30},
            headers=bearer(token),
        )
        assert shared.status_code == 201, shared.text
        owner = await socket_client(live.url, token)
        caregiver = await socket_client(live.url, shared.json()["token"])
        for client in (owner, caregiver):
            assert (await client.call("subscribe", {"session_id": session["id"]}))["ok"]
        await ingest(http, token, [heart_rate("s", 4, 112)])
        assert await caregiver.next("session.alert") == await owner.next("session.alert")
