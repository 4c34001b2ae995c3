"""Per-user rate limits on ingest and telemetry reads: 429 problems, shared budgets through Redis,
and a limiter that falls back to memory (never a 5xx) while its Redis is away."""

from __future__ import annotations

import asyncio
import random
import shutil
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as redis
import sqlalchemy as sa

from tests.conftest import TEST_SECRET
from tests.ingest.helpers import MINUTE_MS, hr, now_ms
from tests.processes import RedisServer, spare_port
from vitalcast.app import create_app
from vitalcast.db.tables import health_samples
from vitalcast.ratelimit import MAX_SLICE, RateLimiter, Scope
from vitalcast.settings import Settings


@pytest.fixture
def database_url(tmp_path: Path, sqlite_template: Path) -> str:
    """The limiter does not touch storage: one backend (SQLite) is enough here."""
    path = tmp_path / "vitalcast.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        secret=TEST_SECRET,
        rate_limit_ingest="3/minute",
        rate_limit_telemetry="2/minute",
    )


async def _post(client: httpx.AsyncClient, headers: dict[str, str], record_id: str) -> Any:
    body = {"samples": [hr(record_id, now_ms() - MINUTE_MS)]}
    return await client.post("/api/v1/samples", json=body, headers=headers)


def _assert_rate_limited(response: httpx.Response) -> int:
    assert response.status_code == 429
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "RATE_LIMITED"
    assert response.headers["Retry-After"] == str(body["retry_after_seconds"])
    return int(body["retry_after_seconds"])


async def test_ingest_beyond_budget_is_429_and_stores_nothing(client, users, db):
    """The 4th ingest in a minute at 3/minute is a 429 problem whose Retry-After matches its body
    and stores nothing; another user's budget is untouched and /metrics counts the refusal."""
    alice = await users.headers()
    bob = await users.headers()
    for i in range(3):
        assert (await _post(client, alice, f"a{i}")).status_code == 200
    retry_after = _assert_rate_limited(await _post(client, alice, "a3"))
    assert 1 <= retry_after <= 60
    assert (await _post(client, bob, "b0")).status_code == 200
    async with db.read() as conn:
        stored = await conn.scalars(sa.select(health_samples.c.record_id))
        assert sorted(stored) == ["a0", "a1", "a2", "b0"]
    metrics = (await client.get("/metrics")).text
    assert 'vitalcast_rate_limited_total{scope="ingest"} 1.0' in metrics


async def test_unauthenticated_ingest_is_401_not_counted(client, users):
    """Authentication is decided before the budget: bad tokens get 401 and spend nothing."""
    alice = await users.headers()
    for _ in range(5):
        response = await client.post("/api/v1/samples", json={"samples": []})
        assert response.status_code == 401
    assert (await _post(client, alice, "a0")).status_code == 200


async def test_telemetry_reads_have_their_own_budget(client, users):
    """Telemetry GETs beyond 2/minute are 429 while the same user's ingest budget is unspent."""
    headers = await users.headers()
    session = (await client.post("/api/v1/sessions", json={}, headers=headers)).json()
    url = f"/api/v1/sessions/{session['id']}/telemetry"
    for _ in range(2):
        assert (await client.get(url, headers=headers)).status_code in (200, 202)
    _assert_rate_limited(await client.get(url, headers=headers))
    assert (await _post(client, headers, "t0")).status_code == 200


async def test_insights_spend_the_telemetry_budget(client, users):
    """GET /insights draws on the telemetry read budget: a telemetry GET and an insights GET
    spend 2/minute, the next of either is a 429."""
    headers = await users.headers()
    session = (await client.post("/api/v1/sessions", json={}, headers=headers)).json()
    telemetry = await client.get(f"/api/v1/sessions/{session['id']}/telemetry", headers=headers)
    assert telemetry.status_code in (200, 202)
    assert (await client.get("/api/v1/insights", headers=headers)).status_code == 200
    _assert_rate_limited(await client.get("/api/v1/insights", headers=headers))


async def test_retry_after_is_when_a_retry_is_admitted(tmp_path, database_url, users):
    """Waiting exactly Retry-After seconds after a 429 is enough for the next request to pass."""
    settings = Settings(
        data_dir=tmp_path / "d2",
        database_url=database_url,
        secret=TEST_SECRET,
        rate_limit_ingest="2/second",
    )
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        headers = await users.headers()
        for i in range(2):
            assert (await _post(client, headers, f"r{i}")).status_code == 200
        retry_after = _assert_rate_limited(await _post(client, headers, "r2"))
        assert retry_after == 1
        await asyncio.sleep(retry_after)
        assert (await _post(client, headers, "r2")).status_code == 200


@pytest.fixture
async def two_nodes(
    settings: Settings, redis_url: str, redis_keys_cleanup: str
) -> AsyncIterator[list[httpx.AsyncClient]]:
    """Two server apps (as two nodes would be) configured with the same Redis."""
    shared = settings.model_copy(
        update={
            "redis_url": redis_url,
            "rate_limit_prefix": f"{redis_keys_cleanup}-rl",
            "queue_prefix": redis_keys_cleanup,
            "socketio_channel": f"{redis_keys_cleanup}-sio",
        }
    )
    apps = [create_app(shared), create_app(shared)]
    async with (
        apps[0].router.lifespan_context(apps[0]),
        apps[1].router.lifespan_context(apps[1]),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=apps[0]), base_url="http://a") as a,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=apps[1]), base_url="http://b") as b,
    ):
        yield [a, b]


async def test_nodes_share_one_budget_through_redis(
    two_nodes, users, redis_url, redis_keys_cleanup
):
    """With Redis configured, requests on two nodes draw on one per-user budget kept in Redis."""
    node_a, node_b = two_nodes
    headers = await users.headers()
    assert (await _post(node_a, headers, "n0")).status_code == 200
    assert (await _post(node_b, headers, "n1")).status_code == 200
    assert (await _post(node_a, headers, "n2")).status_code == 200
    _assert_rate_limited(await _post(node_b, headers, "n3"))
    _assert_rate_limited(await _post(node_a, headers, "n3"))
    client = redis.Redis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{redis_keys_cleanup}-rl*")]
    finally:
        await client.aclose()
    assert len(keys) == 1


async def test_unreachable_redis_falls_back_to_memory_and_recovers(tmp_path):
    """Redis down: every hit is still answered and limited in memory; once Redis is back the
    limiter counts in Redis again by itself."""
    port = spare_port()
    limiter = RateLimiter(
        {Scope.INGEST: "3/minute", Scope.TELEMETRY: "10/minute"},
        redis_url=f"redis://127.0.0.1:{port}/0",
        key_prefix="vc-fallback",
        fallback_s=0.2,
    )
    try:
        decisions = [await limiter.hit(Scope.INGEST, "u1") for _ in range(4)]
        assert [d.allowed for d in decisions] == [True, True, True, False]
        assert decisions[-1].retry_after_s >= 1
        assert limiter.backend == "memory"

        server = RedisServer(tmp_path, port=port)
        server.start()
        try:
            await asyncio.sleep(0.3)
            assert (await limiter.hit(Scope.INGEST, "u2")).allowed
            assert limiter.backend == "redis"
            client = redis.Redis.from_url(server.url)
            try:
                assert [k async for k in client.scan_iter(match="vc-fallback*")] != []
            finally:
                await client.aclose()
            for _ in range(2):
                assert (await limiter.hit(Scope.INGEST, "u2")).allowed
            assert not (await limiter.hit(Scope.INGEST, "u2")).allowed
        finally:
            server.kill()
        assert (await limiter.hit(Scope.INGEST, "u3")).allowed
        assert limiter.backend == "memory"
    finally:
        await limiter.close()


async def test_in_process_budget_starts_no_thread_per_request_and_keeps_its_window() -> None:
    """The in-process counters decide the moving window as before (3 allowed, the 4th refused
    with a retry time) and start no thread on the way (limits' stock memory storage starts a
    timer thread after requests)."""

    limiter = RateLimiter(
        {Scope.INGEST: "3/minute", Scope.TELEMETRY: "100/minute", Scope.SHARE: "100/minute"}
    )
    # the storage's first, one-off sweep timer has run out
    await asyncio.sleep(0.05)
    before = threading.active_count()
    allowed = [(await limiter.hit(Scope.INGEST, "user-a")).allowed for _ in range(4)]
    refused = await limiter.hit(Scope.INGEST, "user-a")
    other = await limiter.hit(Scope.INGEST, "user-b")
    assert allowed == [True, True, True, False]
    assert refused.retry_after_s > 0
    assert other.allowed
    assert threading.active_count() == before
    await limiter.close()


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A Redis of the test's own, so its command counts are the limiter's alone."""
    server = RedisServer(tmp_path, port=spare_port())
    server.start()
    try:
        yield server
    finally:
        server.kill()


async def _evalsha_calls(client: redis.Redis) -> int:
    """Scripts Redis ran (INFO commandstats): every acquire and window read is one."""
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_a_slice_admits_many_requests_per_round_trip(own_redis):
    """At 600/minute a node takes 12 entries (lease 0.02) per round trip, two acquires in one
    pipeline: 36 requests cost 3 round trips, the last 35 two (4 scripts), and start no task; 20
    concurrent requests of one user wait for one slice instead of asking each; the window in
    Redis holds what was taken; after Redis forgot its scripts the next slice loads them."""
    rates = {Scope.INGEST: "600/minute", Scope.TELEMETRY: "100/minute"}
    limiter = RateLimiter(rates, redis_url=own_redis.url, key_prefix="vc-slice")
    client = redis.Redis.from_url(own_redis.url)
    key = "vc-slice:LIMITER/u1/600/1/minute"
    try:
        tasks = len(asyncio.all_tasks())
        assert (await limiter.hit(Scope.INGEST, "u1")).allowed  # (loads the script)
        before = await _evalsha_calls(client)
        assert all([(await limiter.hit(Scope.INGEST, "u1")).allowed for _ in range(35)])
        assert await _evalsha_calls(client) - before == 4
        assert await client.llen(key) == 36
        assert len(asyncio.all_tasks()) == tasks

        before = await _evalsha_calls(client)
        burst = await asyncio.gather(*(limiter.hit(Scope.INGEST, "u2") for _ in range(20)))
        assert all(d.allowed for d in burst)
        # 12 for the first and the 11 who waited for it, 12 more for the other 8
        assert await _evalsha_calls(client) - before == 4

        await client.script_flush()
        assert all([(await limiter.hit(Scope.INGEST, "u1")).allowed for _ in range(7)])
        assert await client.llen(key) == 48
    finally:
        await client.aclose()
        await limiter.close()


async def test_a_slice_of_a_large_budget_takes_at_most_max_slice_entries(own_redis):
    """A moving window stores one entry per request: at 1,000,000/minute a slice is 100
    entries (MAX_SLICE), not 20,000."""
    rates = {Scope.INGEST: "1000000/minute", Scope.TELEMETRY: "100/minute"}
    limiter = RateLimiter(rates, redis_url=own_redis.url, key_prefix="vc-large")
    client = redis.Redis.from_url(own_redis.url)
    try:
        assert (await limiter.hit(Scope.INGEST, "u1")).allowed
        assert await client.llen("vc-large:LIMITER/u1/1000000/1/minute") == MAX_SLICE == 100
    finally:
        await client.aclose()
        await limiter.close()


async def test_two_nodes_share_one_budget_in_slices(own_redis):
    """Two limiters (two nodes) on one Redis, a user's requests spread over both in a random
    order: together they admit at most the limit in the window (nothing beyond, since every
    slice's entries are in it), and at least the limit less what each may hold unspent
    (slice − 1 each); then both refuse with the same Retry-After, and a refusal adds no entry
    to the window."""
    rates = {Scope.INGEST: "100/minute", Scope.TELEMETRY: "100/minute"}
    nodes = [
        RateLimiter(rates, redis_url=own_redis.url, key_prefix="vc-two", lease=0.1)
        for _ in range(2)
    ]
    client = redis.Redis.from_url(own_redis.url)
    order = random.Random(22)
    try:
        admitted = 0
        for _ in range(150):
            admitted += (await order.choice(nodes).hit(Scope.INGEST, "u1")).allowed
        assert 100 - 2 * 9 <= admitted <= 100
        entries = await client.llen("vc-two:LIMITER/u1/100/1/minute")
        assert entries == 100
        refusals = [await node.hit(Scope.INGEST, "u1") for node in nodes for _ in range(3)]
        assert not any(d.allowed for d in refusals)
        assert len({d.retry_after_s for d in refusals}) == 1
        assert 1 <= refusals[0].retry_after_s <= 60
        assert await client.llen("vc-two:LIMITER/u1/100/1/minute") == entries
        assert (await nodes[0].hit(Scope.INGEST, "u2")).allowed
    finally:
        await client.aclose()
        for node in nodes:
            await node.close()


async def test_a_refusal_stands_until_retry_after_without_asking_redis(own_redis):
    """Scaled out, the refusal's Retry-After is when the window frees an entry: a retry before
    it is refused by the node itself (no script runs), a retry after it is admitted."""
    rates = {Scope.INGEST: "2/second", Scope.TELEMETRY: "100/minute"}
    limiter = RateLimiter(rates, redis_url=own_redis.url, key_prefix="vc-refusal")
    client = redis.Redis.from_url(own_redis.url)
    try:
        assert (await limiter.hit(Scope.INGEST, "u1")).allowed
        assert (await limiter.hit(Scope.INGEST, "u1")).allowed
        refused = await limiter.hit(Scope.INGEST, "u1")
        assert not refused.allowed and refused.retry_after_s == 1
        before = await _evalsha_calls(client)
        again = await limiter.hit(Scope.INGEST, "u1")
        assert not again.allowed and again.retry_after_s == 1
        assert await _evalsha_calls(client) == before
        await asyncio.sleep(refused.retry_after_s)
        assert (await limiter.hit(Scope.INGEST, "u1")).allowed
    finally:
        await client.aclose()
        await limiter.close()


async def test_a_held_slice_outlives_a_redis_outage_then_memory_then_redis(tmp_path):
    """Redis gone while a node holds a slice: the slice is spent without Redis, then the node
    counts in memory (answered, never an error), and after Redis is back it takes slices from
    Redis again."""
    server = RedisServer(tmp_path, port=spare_port())
    server.start()
    rates = {Scope.INGEST: "100/minute", Scope.TELEMETRY: "100/minute"}
    limiter = RateLimiter(
        rates, redis_url=server.url, key_prefix="vc-outage", fallback_s=0.2, lease=0.1
    )
    try:
        assert (await limiter.hit(Scope.INGEST, "u1")).allowed
        server.kill()
        assert all([(await limiter.hit(Scope.INGEST, "u1")).allowed for _ in range(9)])
        assert limiter.backend == "redis"  # nothing asked Redis yet
        assert (await limiter.hit(Scope.INGEST, "u1")).allowed
        assert limiter.backend == "memory"

        server.start()
        # a probe per fallback_s; one may still meet a pooled connection of the killed server
        for _ in range(5):
            await asyncio.sleep(0.3)
            assert (await limiter.hit(Scope.INGEST, "u1")).allowed
            if limiter.backend == "redis":
                break
        assert limiter.backend == "redis"
        client = redis.Redis.from_url(server.url)
        try:
            assert await client.llen("vc-outage:LIMITER/u1/100/1/minute") == 10  # a new slice
        finally:
            await client.aclose()
    finally:
        await limiter.close()
        server.kill()
