"""POST /api/v1/samples: rejection codes, partial batches, limits, idempotency, concurrency."""

from __future__ import annotations

import asyncio
import json

import pytest
import sqlalchemy as sa

from tests.ingest.helpers import MINUTE_MS, hr, iso, now_ms
from vitalcast.db.tables import health_samples
from vitalcast.db.tables import users as users_table


async def _count_samples(db) -> int:
    async with db.read() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(health_samples)))


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"metric": "blood_sugar"}, "UNKNOWN_METRIC"),
        ({"unit": "mmHg"}, "UNIT_NOT_ACCEPTED"),
        ({"value": 1e999}, "NON_FINITE_VALUE"),
        ({"value": 400}, "VALUE_OUT_OF_RANGE"),
        ({"end": "1970-01-01T00:00:00+00:00"}, "END_BEFORE_START"),
        ({"start": "2026-01-01T10:00:00"}, "NAIVE_TIMESTAMP"),
        ({"start_in_ms": 10 * MINUTE_MS}, "FUTURE_TIMESTAMP"),
    ],
)
async def test_each_rejection_code(client, users, db, overrides, code):
    """Every per-sample rule rejects with its exact code and stores nothing of that sample.
    Times are taken when the test runs (``start_in_ms`` from now), never at collection: a
    suite slower than the 5-minute tolerance must not turn "the future" into the past."""
    headers = await users.headers()
    overrides = dict(overrides)
    start_ms = now_ms() + overrides.pop("start_in_ms", -MINUTE_MS)
    sample = hr("a", start_ms, **overrides)
    # json.dumps writes Infinity for 1e999, which a phone's encoder may do too.
    response = await client.post(
        "/api/v1/samples",
        content=json.dumps({"samples": [sample]}),
        headers=headers | {"content-type": "application/json"},
    )
    assert response.status_code == 207
    body = response.json()
    assert body["rejected"] == [
        {"index": 0, "code": code, "message": body["rejected"][0]["message"]}
    ]
    assert body["inserted"] == 0
    assert await _count_samples(db) == 0


async def test_nan_literal_and_duplicate_in_batch(client, users, db):
    """NaN in the JSON text is NON_FINITE_VALUE; a repeated identity is DUPLICATE_IN_BATCH."""
    headers = await users.headers() | {"content-type": "application/json"}
    at = iso(now_ms() - MINUTE_MS)
    raw = (
        '{"samples": [{"source": "s", "record_id": "n", "metric": "heart_rate", "value": NaN,'
        f' "start": "{at}"}},'
        f' {{"source": "s", "record_id": "d", "metric": "heart_rate", "value": 60, "start": "{at}"}},'
        f' {{"source": "s", "record_id": "d", "metric": "heart_rate", "value": 61, "start": "{at}"}}]}}'
    )
    response = await client.post("/api/v1/samples", content=raw, headers=headers)
    assert response.status_code == 207
    codes = [(r["index"], r["code"]) for r in response.json()["rejected"]]
    assert codes == [(0, "NON_FINITE_VALUE"), (2, "DUPLICATE_IN_BATCH")]
    assert await _count_samples(db) == 1


async def test_a_rejected_sample_still_makes_a_later_one_of_its_identity_a_duplicate(
    client, users, db
):
    """[d1 at 1000 bpm, d1 at 70 bpm]: the first is out of range, the second a duplicate of it
    (not stored in its place); a third identity of the batch is stored, and nothing of d1 is."""
    headers = await users.headers()
    at = now_ms() - MINUTE_MS
    samples = [hr("d1", at, value=1000), hr("d1", at, value=70), hr("ok", at, value=71)]
    response = await client.post("/api/v1/samples", json={"samples": samples}, headers=headers)
    assert response.status_code == 207
    body = response.json()
    assert [(r["index"], r["code"]) for r in body["rejected"]] == [
        (0, "VALUE_OUT_OF_RANGE"),
        (1, "DUPLICATE_IN_BATCH"),
    ]
    assert body["inserted"] == 1
    async with db.read() as conn:
        stored = [r.record_id for r in await conn.execute(sa.select(health_samples))]
    assert stored == ["ok"]


async def test_units_convert_to_canonical(client, users, db):
    """Accepted aliases are converted: seconds of HRV to ms, °F to °C, a fraction to percent."""
    headers = await users.headers()
    at = now_ms() - MINUTE_MS
    samples = [
        hr("hrv", at, metric="heart_rate_variability", value=0.045, unit="s"),
        hr("temp", at, metric="skin_temperature", value=93.2, unit="degF"),
        hr("spo2", at, metric="blood_oxygen", value=0.97, unit="fraction"),
        hr("kj", at, metric="active_energy_burned", value=41.84, unit="kJ"),
    ]
    assert (
        await client.post("/api/v1/samples", json={"samples": samples}, headers=headers)
    ).status_code == 200
    async with db.read() as conn:
        rows = {
            r.record_id: (r.value, r.unit) for r in await conn.execute(sa.select(health_samples))
        }
    assert rows["hrv"] == (pytest.approx(45.0), "ms")
    assert rows["temp"] == (pytest.approx(34.0), "degC")
    assert rows["spo2"] == (pytest.approx(97.0), "%")
    assert rows["kj"] == (pytest.approx(10.0), "kcal")


async def test_three_bad_seven_good_stores_exactly_seven(client, users, db):
    """A mixed batch stores every valid sample and reports each rejected one by index."""
    headers = await users.headers()
    at = now_ms() - 10 * MINUTE_MS
    samples = [hr(f"g{i}", at + i * 1000, value=60 + i) for i in range(7)]
    samples.insert(2, hr("b1", at, value=-5))
    samples.insert(5, hr("b2", at, metric="nope"))
    samples.append(hr("b3", at, unit="kg"))
    response = await client.post("/api/v1/samples", json={"samples": samples}, headers=headers)
    body = response.json()
    assert response.status_code == 207
    assert body["inserted"] == 7
    assert [(r["index"], r["code"]) for r in body["rejected"]] == [
        (2, "VALUE_OUT_OF_RANGE"),
        (5, "UNKNOWN_METRIC"),
        (9, "UNIT_NOT_ACCEPTED"),
    ]
    async with db.read() as conn:
        stored = {r.record_id for r in await conn.execute(sa.select(health_samples.c.record_id))}
    assert stored == {f"g{i}" for i in range(7)}


def problem(status: int, code: str, title: str, detail: str) -> dict[str, object]:
    """An RFC 9457 problem body as the API documents it, written out in full."""
    return {"type": "about:blank", "title": title, "status": status, "code": code, "detail": detail}


def assert_problem(response, expected: dict[str, object]) -> None:
    assert response.status_code == expected["status"]
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == expected


async def test_over_limits_store_nothing(client, users, db):
    """More than 5,000 samples or more than 5 MB is a 413 problem (every field of it) and
    stores nothing."""
    headers = await users.headers()
    at = now_ms() - 60 * MINUTE_MS
    too_many = [hr(f"r{i}", at + i) for i in range(5_001)]
    response = await client.post("/api/v1/samples", json={"samples": too_many}, headers=headers)
    assert_problem(
        response,
        problem(
            413,
            "TOO_MANY_SAMPLES",
            "Too many samples",
            "At most 5000 samples and 5000 deletions per request.",
        ),
    )
    big = [hr(f"r{i}", at + i, device="x" * 190) for i in range(4_000)]
    payload = json.dumps(
        {
            "samples": big,
            "deleted": [{"source": "s" * 60, "record_id": "y" * 190} for _ in range(5_000)],
        }
    )
    payload += " " * (5 * 1024 * 1024)  # whitespace keeps it valid JSON, only larger
    assert len(payload) > 5 * 1024 * 1024
    response = await client.post(
        "/api/v1/samples", content=payload, headers=headers | {"content-type": "application/json"}
    )
    assert_problem(
        response,
        problem(413, "BODY_TOO_LARGE", "Body too large", "The body is larger than 5 MB."),
    )
    assert await _count_samples(db) == 0


async def test_malformed_requests_are_422_problem_json(client, users, db):
    """Broken JSON or a wrongly shaped sample is a whole-request 422 with nothing stored."""
    headers = await users.headers() | {"content-type": "application/json"}
    at = iso(now_ms() - MINUTE_MS)
    for content in [
        b"{not json",
        b"[]",
        json.dumps({"samples": [hr("ok", now_ms() - MINUTE_MS), {"source": "s"}]}).encode(),
        json.dumps(
            {
                "samples": [
                    {
                        "source": "s",
                        "record_id": "r",
                        "metric": "heart_rate",
                        "value": "72",
                        "start": at,
                    }
                ]
            }
        ).encode(),
        json.dumps(
            {
                "samples": [
                    {
                        "source": "s",
                        "record_id": "r",
                        "metric": "heart_rate",
                        "value": 72,
                        "start": "yesterday",
                    }
                ]
            }
        ).encode(),
    ]:
        response = await client.post("/api/v1/samples", content=content, headers=headers)
        assert response.status_code == 422, content
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] in {"MALFORMED_JSON", "VALIDATION_ERROR"}
    assert await _count_samples(db) == 0


async def test_replayed_request_id_returns_first_response(client, users, db):
    """A replayed request_id returns the identical response and changes no row; another body is
    a 409 problem (every field of it) that changes nothing either."""
    headers = await users.headers()
    at = now_ms() - MINUTE_MS
    body = {"request_id": "sync-1", "samples": [hr("a", at), hr("b", at, value=400)]}
    first = await client.post("/api/v1/samples", json=body, headers=headers)
    async with db.read() as conn:
        seq = await conn.scalar(sa.select(users_table.c.change_seq))
    replay = await client.post("/api/v1/samples", json=body, headers=headers)
    assert replay.status_code == first.status_code == 207
    assert replay.content == first.content
    async with db.read() as conn:
        assert await conn.scalar(sa.select(users_table.c.change_seq)) == seq
    assert await _count_samples(db) == 1
    other = await client.post(
        "/api/v1/samples", json={"request_id": "sync-1", "samples": [hr("c", at)]}, headers=headers
    )
    assert_problem(
        other,
        problem(
            409,
            "REQUEST_ID_REUSED",
            "Request id reused",
            "This request_id was used with another body.",
        ),
    )
    assert await _count_samples(db) == 1


async def test_parallel_ingests_lose_nothing(client, users, db, database_url):
    """20 concurrent requests of one user store every sample; change_seq counts changing requests."""
    headers = await users.headers()
    at = now_ms() - 60 * MINUTE_MS
    batches = [[hr(f"p{i}-{j}", at + i * 1000 + j) for j in range(50)] for i in range(20)]
    batches[7] = batches[3]  # an identical re-send changes nothing
    responses = await asyncio.gather(
        *[client.post("/api/v1/samples", json={"samples": b}, headers=headers) for b in batches]
    )
    assert all(r.status_code == 200 for r in responses)
    assert await _count_samples(db) == 19 * 50
    async with db.read() as conn:
        assert await conn.scalar(sa.select(users_table.c.change_seq)) == 19
    assert sorted(r.json()["change_seq"] for r in responses)[-1] == 19


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer not-a-jwt", "Basic abc"],
)
async def test_ingest_requires_valid_token(client, authorization):
    """Without a valid bearer token the answer is 401 problem+json."""
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await client.post("/api/v1/samples", json={"samples": []}, headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
