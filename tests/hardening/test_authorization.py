"""The authorization matrix: every HTTP route and every Socket.IO event, as the owner of a session,
another user, no token, an expired token, a forged one, a well-signed one of a user that does
not exist, a share token of the session and a share token of another session of the same owner,
against a real server process on each database. The table is the contract; the test fails on any cell that differs, and on any route
the server has that the table does not list."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import socketio

from tests.conftest import TEST_SECRET
from tests.ingest.helpers import MINUTE_MS, hr, iso, now_ms
from tests.processes import serve_subprocess, vitalcast_env
from vitalcast.auth import issue_token
from vitalcast.testing import user_with_token

OWNER, OTHER, NONE, EXPIRED, FORGED = "owner", "other", "no token", "expired", "forged"
UNKNOWN = "unknown user"
SHARE, SHARE_ELSEWHERE = "share", "share of another session"
PRINCIPALS = (OWNER, OTHER, NONE, EXPIRED, FORGED, UNKNOWN, SHARE, SHARE_ELSEWHERE)
# What a share token may do: read its one session (another one is 404) and the catalog.
SHARE_READS = {
    "GET /api/v1/sessions/{session_id}",
    "GET /api/v1/sessions/{session_id}/telemetry",
    "GET /api/v1/sessions/{session_id}/export.csv",
    "GET /api/v1/sessions/{session_id}/fhir",
}
SHARE_OPEN = {"GET /api/v1/catalog", "GET /api/v1/share"}
# A token of a user the database does not hold is refused like a bad signature.
REFUSED = {
    NONE: "UNAUTHENTICATED",
    EXPIRED: "TOKEN_EXPIRED",
    FORGED: "TOKEN_INVALID",
    UNKNOWN: "TOKEN_INVALID",
}

# (method, path) → expected (status, code or None) for owner and other; the three refused
# principals get 401 with their REFUSED code on every authenticated route.
PUBLIC = {"GET /", "GET /docs", "GET /healthz", "GET /readyz", "GET /metrics", "GET /openapi.json"}
# Public pages outside the OpenAPI schema.
UNDOCUMENTED = {"GET /", "GET /docs", "GET /openapi.json"}
HTTP_MATRIX: dict[str, dict[str, tuple[int, str | None]]] = {
    "GET /api/v1/catalog": {OWNER: (200, None), OTHER: (200, None)},
    "POST /api/v1/sessions": {OWNER: (201, None), OTHER: (201, None)},
    "GET /api/v1/sessions": {OWNER: (200, None), OTHER: (200, None)},
    "GET /api/v1/sessions/{session_id}": {OWNER: (200, None), OTHER: (404, "SESSION_NOT_FOUND")},
    "POST /api/v1/sessions/{session_id}/end": {
        OWNER: (200, None),
        OTHER: (404, "SESSION_NOT_FOUND"),
    },
    "POST /api/v1/sessions/{session_id}/cancel": {
        OWNER: (200, None),
        OTHER: (404, "SESSION_NOT_FOUND"),
    },
    "POST /api/v1/samples": {OWNER: (200, None), OTHER: (200, None)},
    "GET /api/v1/sessions/{session_id}/telemetry": {
        OWNER: (200, None),
        OTHER: (404, "SESSION_NOT_FOUND"),
    },
    "GET /api/v1/sessions/{session_id}/export.csv": {
        OWNER: (200, None),
        OTHER: (404, "SESSION_NOT_FOUND"),
    },
    "GET /api/v1/sessions/{session_id}/fhir": {
        OWNER: (200, None),
        OTHER: (404, "SESSION_NOT_FOUND"),
    },
    # the caller's own completed sessions, whoever calls
    "GET /api/v1/insights": {OWNER: (200, None), OTHER: (200, None)},
    "POST /api/v1/sessions/{session_id}/shares": {
        OWNER: (201, None),
        OTHER: (404, "SESSION_NOT_FOUND"),
    },
    "GET /api/v1/sessions/{session_id}/shares": {
        OWNER: (200, None),
        OTHER: (404, "SESSION_NOT_FOUND"),
    },
    "DELETE /api/v1/shares/{share_id}": {OWNER: (204, None), OTHER: (404, "SHARE_NOT_FOUND")},
    # what a share token opens; a user's own token is none
    "GET /api/v1/share": {OWNER: (404, "SHARE_NOT_FOUND"), OTHER: (404, "SHARE_NOT_FOUND")},
    "GET /api/v1/shares/{share_id}/access": {
        OWNER: (200, None),
        OTHER: (404, "SHARE_NOT_FOUND"),
    },
    # the caller's own samples, whoever calls
    "POST /api/v1/samples/delete": {OWNER: (200, None), OTHER: (200, None)},
    "DELETE /api/v1/sessions/{session_id}": {
        OWNER: (204, None),
        OTHER: (404, "SESSION_NOT_FOUND"),
    },
    # the caller's own account, whoever calls (erasure: a user of its own, see ``_call``)
    "GET /api/v1/me/export": {OWNER: (200, None), OTHER: (200, None)},
    "DELETE /api/v1/me": {OWNER: (202, None), OTHER: (202, None)},
    "POST /api/v1/webhooks": {OWNER: (201, None), OTHER: (201, None)},
    "GET /api/v1/webhooks": {OWNER: (200, None), OTHER: (200, None)},
    "DELETE /api/v1/webhooks/{endpoint_id}": {
        OWNER: (204, None),
        OTHER: (404, "WEBHOOK_NOT_FOUND"),
    },
    "GET /api/v1/webhooks/{endpoint_id}/deliveries": {
        OWNER: (200, None),
        OTHER: (404, "WEBHOOK_NOT_FOUND"),
    },
}
# A public address literal: registering it needs no DNS.
WEBHOOK = {"url": "https://93.184.215.14/hook", "events": ["session.alert"]}


def _share_cell(route: str, who: str) -> tuple[int, str | None]:
    """A share token's answer: its session's reads, 404 for another session's, 403 the rest."""
    if route in SHARE_OPEN:
        return 200, None
    if route in SHARE_READS:
        return (200, None) if who == SHARE else (404, "SESSION_NOT_FOUND")
    return 403, "SHARE_SCOPE"


# Socket.IO: the refused principals never get a socket, so their events cannot be sent at all.
SOCKET_MATRIX: dict[str, dict[str, Any]] = {
    "connect": {
        OWNER: "connected",
        OTHER: "connected",
        NONE: "refused UNAUTHENTICATED",
        EXPIRED: "refused TOKEN_EXPIRED",
        FORGED: "refused TOKEN_INVALID",
        UNKNOWN: "refused TOKEN_INVALID",
    },
    "subscribe": {
        OWNER: "ok",
        OTHER: "SESSION_NOT_FOUND",
        SHARE: "ok",
        SHARE_ELSEWHERE: "SESSION_NOT_FOUND",
    },
    "unsubscribe": {OWNER: "ok", OTHER: "ok", SHARE: "ok", SHARE_ELSEWHERE: "ok"},
}
SOCKET_MATRIX["connect"] |= {SHARE: "connected", SHARE_ELSEWHERE: "connected"}


@dataclass
class World:
    base: str
    tokens: dict[str, str | None]
    shared_session: str | None = None
    owner_sessions: set[str] = field(default_factory=set)
    #: a share of ``shared_session`` that stays live (the owner's DELETE gets its own)
    share_id: str | None = None
    database_url: str = ""

    def headers(self, who: str) -> dict[str, str]:
        token = self.tokens[who]
        return {} if token is None else {"Authorization": f"Bearer {token}"}


def _tokens(owner_id: str, other_id: str) -> dict[str, str | None]:
    now_s = int(time.time())
    return {
        OWNER: issue_token(TEST_SECRET, owner_id, now_s=now_s, ttl_s=3600),
        OTHER: issue_token(TEST_SECRET, other_id, now_s=now_s, ttl_s=3600),
        NONE: None,
        EXPIRED: issue_token(TEST_SECRET, owner_id, now_s=now_s - 7200, ttl_s=3600),
        FORGED: issue_token(
            "another-secret-of-the-same-length-0123456789ab", owner_id, now_s=now_s, ttl_s=3600
        ),
        UNKNOWN: issue_token(TEST_SECRET, str(uuid.uuid4()), now_s=now_s, ttl_s=3600),
    }


async def _owner_session(client: httpx.AsyncClient, world: World) -> str:
    """A fresh session of the owner's, started an hour ago, with a sample in it."""
    start = now_ms() - 60 * MINUTE_MS
    created = await client.post(
        "/api/v1/sessions", json={"started_at": iso(start)}, headers=world.headers(OWNER)
    )
    assert created.status_code == 201
    sample = {"samples": [hr(f"s{start}", start + MINUTE_MS)]}
    assert (
        await client.post("/api/v1/samples", json=sample, headers=world.headers(OWNER))
    ).is_success
    world.owner_sessions.add(created.json()["id"])
    return str(created.json()["id"])


async def _share(client: httpx.AsyncClient, world: World, session_id: str) -> tuple[str, str]:
    """(id, token) of a new hour-long share of the owner's ``session_id``."""
    created = await client.post(
        f"/api/v1/sessions/{session_id}/shares",
        json={"expires_in_minutes": 60},
        headers=world.headers(OWNER),
    )
    assert created.status_code == 201, created.text
    return created.json()["id"], created.json()["token"]


async def _share_tokens(client: httpx.AsyncClient, world: World) -> None:
    """The share principals: one of the shared session, one of another session of the owner."""
    if world.shared_session is None:
        world.shared_session = await _owner_session(client, world)
    world.share_id, world.tokens[SHARE] = await _share(client, world, world.shared_session)
    elsewhere = await _owner_session(client, world)
    _, world.tokens[SHARE_ELSEWHERE] = await _share(client, world, elsewhere)


async def _call(client: httpx.AsyncClient, world: World, route: str, who: str) -> httpx.Response:
    method, path = route.split(" ", 1)
    if world.shared_session is None:
        world.shared_session = await _owner_session(client, world)
    # The owner's end, cancel and delete change their session: give each its own.
    changes = who == OWNER and (route.endswith(("/end", "/cancel")) or method == "DELETE")
    session_id = await _owner_session(client, world) if changes else world.shared_session
    url = path.replace("{session_id}", session_id)
    if "{share_id}" in path:
        # The owner's revoke ends its share: give it its own.
        share_id = (
            (await _share(client, world, session_id))[0]
            if who == OWNER and method == "DELETE"
            else world.share_id
        )
        url = url.replace("{share_id}", str(share_id))
    if "{endpoint_id}" in path:
        created = await client.post("/api/v1/webhooks", json=WEBHOOK, headers=world.headers(OWNER))
        url = url.replace("{endpoint_id}", created.json()["id"])
    body: Any = None
    if route == "POST /api/v1/samples":
        body = {"samples": [hr(f"{who}-r", now_ms() - MINUTE_MS)]}
    elif route == "POST /api/v1/samples/delete":
        # A stretch before the owner's sessions: it must not touch them, whoever calls.
        body = {"from": iso(0), "to": iso(MINUTE_MS)}
    elif route == "POST /api/v1/sessions/{session_id}/shares":
        body = {"expires_in_minutes": 30}
    elif route == "POST /api/v1/webhooks":
        body = WEBHOOK
    elif method == "POST":
        body = {}
    headers = world.headers(who)
    if route == "DELETE /api/v1/me" and who in (OWNER, OTHER):
        # An erasure needs the user's own token and ends that user: each valid principal
        # erases a user of its own, and the owner's session must stay.
        _fresh, token = await user_with_token(world.database_url, TEST_SECRET)
        headers = {"Authorization": f"Bearer {token}"}
    response = await client.request(method, url, json=body, headers=headers)
    if who != OWNER:
        # Nothing another caller did may have touched the owner's session.
        mine = await client.get(f"/api/v1/sessions/{session_id}", headers=world.headers(OWNER))
        assert mine.json()["status"] == "active", route
    if route == "GET /api/v1/sessions" and response.status_code == 200:
        ids = {item["id"] for item in response.json()["items"]}
        assert (session_id in ids) is (who == OWNER), "a list shows exactly the caller's sessions"
    if route == "GET /api/v1/sessions/{session_id}/shares" and response.status_code == 200:
        assert all("token" not in item for item in response.json()["items"]), "never the token"
    if route == "GET /api/v1/insights" and response.status_code == 200 and who != OWNER:
        listed = {line["session_id"] for line in response.json()["sessions"]}
        assert not listed & world.owner_sessions, "insights list only the caller's sessions"
    return response


def _cell(response: httpx.Response, route: str = "") -> tuple[int, str | None]:
    if response.status_code >= 400:
        assert response.headers["content-type"] == "application/problem+json"
        return response.status_code, response.json()["code"]
    if response.status_code == 202 and route != "DELETE /api/v1/me":
        return 200, None  # a cold telemetry view is "computing": served, not refused
    if response.status_code == 200 and response.headers.get("content-type", "").startswith(
        "text/csv"
    ):
        response.read()  # the export streamed to its end: nothing failed midway
    return response.status_code, None


async def _socket_cells(world: World) -> dict[str, dict[str, Any]]:
    async with httpx.AsyncClient(base_url=world.base) as client:
        session_id = world.shared_session or await _owner_session(client, world)
    cells: dict[str, dict[str, Any]] = {event: {} for event in SOCKET_MATRIX}
    for who in PRINCIPALS:
        refusals: list[Any] = []
        sio = socketio.AsyncClient(reconnection=False)
        sio.on("connect_error", refusals.append)
        token = world.tokens[who]
        try:
            await sio.connect(
                world.base,
                auth=None if token is None else {"token": token},
                transports=["websocket"],
                wait_timeout=10,
            )
        except socketio.exceptions.ConnectionError:
            reason = refusals[0].get("message") if refusals else "without a reason"
            cells["connect"][who] = f"refused {reason}"
            continue
        try:
            cells["connect"][who] = "connected"
            for event in ("subscribe", "unsubscribe"):
                ack = await sio.call(event, {"session_id": session_id}, timeout=10)
                cells[event][who] = "ok" if ack.get("ok") else ack.get("code")
        finally:
            await sio.disconnect()
    return cells


@pytest.mark.slow
async def test_authorization_matrix(database_url: str, users, tmp_path: Path) -> None:
    """Every route and Socket.IO event answers each principal exactly as the table says:
    another user's session is 404 / SESSION_NOT_FOUND (never 403), missing, expired and forged
    tokens and tokens of unknown users are 401 with their own code or a refused connection
    (never a 500, never an empty list), public endpoints stay public."""
    owner_id, _ = await users.create("owner")
    other_id, _ = await users.create("other")
    env = vitalcast_env(tmp_path / "data", log_level="warning", database_url=database_url)
    with serve_subprocess(env, tmp_path / "server.log") as server:
        world = World(server.url, _tokens(owner_id, other_id), database_url=database_url)
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            await _share_tokens(client, world)
            schema = (await client.get("/openapi.json")).json()
            served = {f"{m.upper()} {p}" for p, ops in schema["paths"].items() for m in ops}
            assert served == set(HTTP_MATRIX) | (PUBLIC - UNDOCUMENTED)

            expected: dict[str, dict[str, tuple[int, str | None]]] = {}
            actual: dict[str, dict[str, tuple[int, str | None]]] = {}
            for route in sorted(HTTP_MATRIX.keys() | PUBLIC):
                expected[route], actual[route] = {}, {}
                for who in PRINCIPALS:
                    if route in PUBLIC:
                        expected[route][who] = (200, None)
                    elif who in (SHARE, SHARE_ELSEWHERE):
                        expected[route][who] = _share_cell(route, who)
                    elif who in REFUSED:
                        expected[route][who] = (401, REFUSED[who])
                    else:
                        expected[route][who] = HTTP_MATRIX[route][who]
                    actual[route][who] = _cell(await _call(client, world, route, who), route)
        socket_cells = await asyncio.wait_for(_socket_cells(world), 60)
    assert actual == expected
    assert socket_cells == SOCKET_MATRIX
