"""Inputs that once broke the API with a 500 (found by probing and fuzzing), pinned on both
databases: each now gets a precise 4xx problem or a per-sample rejection, and stores nothing bad."""

from __future__ import annotations

import base64
import json
import sys

import httpx
import pytest
import sqlalchemy as sa

from tests.ingest.helpers import MINUTE_MS, hr, iso, now_ms
from vitalcast.db.tables import health_samples


@pytest.fixture
async def client(app):
    """A client that turns an unhandled server error into a 500 answer instead of raising."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def _stored(db) -> int:
    async with db.read() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(health_samples)))


def _problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code


async def test_integer_beyond_float_range_is_rejected_per_sample(client, users, db):
    """A 400-digit integer value is VALUE_OUT_OF_RANGE for that sample; the others are stored."""
    headers = await users.headers() | {"content-type": "application/json"}
    start = iso(now_ms() - MINUTE_MS)
    good = json.dumps(hr("ok", now_ms() - MINUTE_MS))
    raw = (
        '{"samples": [{"source": "s", "record_id": "big", "metric": "heart_rate", '
        f'"value": {"9" * 400}, "start": "{start}"}}, {good}]}}'
    )
    response = await client.post("/api/v1/samples", content=raw, headers=headers)
    assert response.status_code == 207
    assert [r["code"] for r in response.json()["rejected"]] == ["VALUE_OUT_OF_RANGE"]
    assert await _stored(db) == 1


@pytest.mark.parametrize(
    "raw_text",
    ['"r\\u0000x"', '"\\ud800"', '"ok\\udfff"'],
    ids=["nul", "lone-high-surrogate", "lone-low-surrogate"],
)
@pytest.mark.parametrize("field", ["source", "record_id", "device"])
async def test_unstorable_text_is_a_422_not_a_500(client, users, db, raw_text, field):
    """NUL (refused by PostgreSQL) or an unpaired surrogate (not UTF-8) in a stored text field is
    a whole-request VALIDATION_ERROR, and nothing of the request is stored."""
    headers = await users.headers() | {"content-type": "application/json"}
    sample = hr("r1", now_ms() - MINUTE_MS) | {field: "PLACEHOLDER"}
    other = hr("r2", now_ms() - MINUTE_MS)
    raw = json.dumps({"samples": [other, sample]}).replace('"PLACEHOLDER"', raw_text)
    _problem(
        await client.post("/api/v1/samples", content=raw, headers=headers), 422, "VALIDATION_ERROR"
    )
    assert await _stored(db) == 0


async def test_unstorable_request_id_is_a_422(client, users, db):
    """A request_id holding NUL is refused before it reaches the replay table."""
    headers = await users.headers()
    body = {"request_id": "a\x00b", "samples": [hr("r1", now_ms() - MINUTE_MS)]}
    _problem(
        await client.post("/api/v1/samples", json=body, headers=headers), 422, "VALIDATION_ERROR"
    )
    assert await _stored(db) == 0


@pytest.mark.parametrize("recursion_limit", [None, 20_000], ids=["default-limit", "raised-limit"])
@pytest.mark.parametrize(
    "raw",
    [
        b'{"samples": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        # orjson stops at the NaN; the deep part is the standard library's to refuse
        b'{"deleted": [NaN], "samples": ' + b"[" * 5_000 + b"]" * 5_000 + b"}",
        b'{"samples": ' + b'[{"a": "]]"},' * 3_000 + b"]" * 3_000 + b"}",
    ],
    ids=["deep", "nan-then-deep", "deep-with-brackets-in-strings"],
)
async def test_deeply_nested_json_is_malformed_not_a_crash(client, users, raw, recursion_limit):
    """JSON nested deeper than the parsers recurse is MALFORMED_JSON (it was a RecursionError),
    whatever the interpreter's recursion limit (Hypothesis raises it during its tests) and the
    stack depth of the caller: no parser is handed a body nested that deep."""
    headers = await users.headers() | {"content-type": "application/json"}
    default = sys.getrecursionlimit()
    sys.setrecursionlimit(recursion_limit or default)
    try:
        response = await client.post("/api/v1/samples", content=raw, headers=headers)
    finally:
        sys.setrecursionlimit(default)
    _problem(response, 422, "MALFORMED_JSON")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"notes": "a\x00b"}, "VALIDATION_ERROR"),
        ({"client_session_id": "c\x00"}, "VALIDATION_ERROR"),
        ({"started_at": "0001-01-01T00:00:00+14:00"}, "BEFORE_EPOCH"),
        ({"started_at": "1969-12-31T23:59:59Z"}, "BEFORE_EPOCH"),
        ({"started_at": "9999-12-31T23:59:59-14:00"}, "FUTURE_TIMESTAMP"),
        ({"started_at": 0}, "VALIDATION_ERROR"),
    ],
    ids=["nul-notes", "nul-client-id", "before-year-1-utc", "before-epoch", "year-10000", "number"],
)
async def test_bad_session_fields_are_422_and_leave_the_list_readable(client, users, body, code):
    """Unstorable text or a start outside 1970 … now is a 422 with its code; nothing is created,
    so the caller's session list keeps answering (a stored year-0 start made it a 500 for good)."""
    headers = await users.headers()
    _problem(await client.post("/api/v1/sessions", json=body, headers=headers), 422, code)
    listed = await client.get("/api/v1/sessions", headers=headers)
    assert listed.status_code == 200
    assert listed.json()["items"] == []


@pytest.mark.parametrize(
    ("times", "code"),
    [
        ({"start": "1969-12-31T23:59:59Z"}, "BEFORE_EPOCH"),
        ({"start": "0001-01-01T00:00:00+14:00"}, "BEFORE_EPOCH"),
        ({"start": "9999-12-31T23:59:59-14:00"}, "FUTURE_TIMESTAMP"),
        ({"end": "9999-12-31T23:59:59Z"}, "FUTURE_TIMESTAMP"),
    ],
    ids=["start-1969", "start-year-1", "start-year-10000", "end-year-9999"],
)
async def test_samples_keep_to_the_sessions_time_range(client, users, db, times, code):
    """A sample dated before 1970 or far ahead (start or end) is rejected with the code a
    session time gets (vitalcast.timerange); the sample beside it is stored."""
    headers = await users.headers()
    good = hr("good", now_ms() - MINUTE_MS)
    bad = hr("bad", now_ms() - MINUTE_MS) | times
    response = await client.post("/api/v1/samples", json={"samples": [bad, good]}, headers=headers)
    assert response.status_code == 207, response.text
    assert [r["code"] for r in response.json()["rejected"]] == [code]
    assert await _stored(db) == 1


@pytest.mark.parametrize(
    "path",
    ["/api/v1/sessions/%00", "/api/v1/sessions/not-a-uuid", "/api/v1/sessions/a%00b/telemetry"],
)
async def test_session_ids_that_are_not_uuids_are_422(client, users, path):
    """A session id must be a UUID; anything else (NUL included) is refused before any query."""
    _problem(await client.get(path, headers=await users.headers()), 422, "VALIDATION_ERROR")


@pytest.mark.parametrize(
    "decoded",
    ["99999999999999999999999|00000000-0000-0000-0000-000000000000", "1|x\x00y", "1|abc"],
    ids=["bigint-overflow", "nul", "not-a-uuid"],
)
async def test_forged_cursors_are_invalid_cursor(client, users, decoded):
    """A cursor whose parts do not fit the columns (BIGINT, UUID) is INVALID_CURSOR."""
    cursor = base64.urlsafe_b64encode(decoded.encode()).decode()
    response = await client.get(
        "/api/v1/sessions", params={"cursor": cursor}, headers=await users.headers()
    )
    _problem(response, 422, "INVALID_CURSOR")


async def test_wrong_method_names_every_allowed_method(client, users):
    """A 405 is a problem with an Allow header listing every method the path supports."""
    response = await client.request("PUT", "/api/v1/sessions", headers=await users.headers())
    _problem(response, 405, "METHOD_NOT_ALLOWED")
    assert response.headers["allow"] == "GET, POST"
