"""Driving one alert episode through a real server: a live session started half an hour ago,
heart-rate samples that cross the catalog's rules (>=111 elevated, >=131 critical)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from tests.ingest.helpers import MINUTE_MS, hr, iso, now_ms

SESSION_AGE_MS = 30 * MINUTE_MS


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def live_session(http: httpx.AsyncClient, token: str) -> dict[str, Any]:
    """A session started half an hour ago, still running."""
    answer = await http.post(
        "/api/v1/sessions",
        json={"started_at": iso(now_ms() - SESSION_AGE_MS)},
        headers=bearer(token),
    )
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


async def ingest(http: httpx.AsyncClient, token: str, samples: list[dict[str, Any]]) -> int:
    answer = await http.post("/api/v1/samples", json={"samples": samples}, headers=bearer(token))
    assert answer.status_code == 200, answer.text
    return int(answer.json()["change_seq"])


async def view(
    http: httpx.AsyncClient, token: str, session_id: str, resolution: str
) -> dict[str, Any]:
    answer = await http.get(
        f"/api/v1/sessions/{session_id}/telemetry",
        params={"resolution": resolution},
        headers=bearer(token),
    )
    assert answer.status_code in (200, 202), answer.text
    return dict(answer.json())


async def wait_view(
    http: httpx.AsyncClient, token: str, session_id: str, resolution: str, watermark: int
) -> dict[str, Any]:
    """The view once it is ready at ``watermark`` or later (polls up to 60 s)."""
    deadline = time.monotonic() + 60
    while True:
        body = await view(http, token, session_id, resolution)
        payload = body.get("telemetry") or {}
        if body["state"] == "ready" and (payload.get("source_watermark") or 0) >= watermark:
            return payload
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.1)


def heart_rate(tag: str, minutes_ago: float, value: float) -> dict[str, Any]:
    """A heart-rate sample ``minutes_ago`` before now (inside the live session)."""
    return hr(f"{tag}", now_ms() - int(minutes_ago * MINUTE_MS), value)
