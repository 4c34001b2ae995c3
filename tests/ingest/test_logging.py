"""Logs never carry sample values, tokens or request bodies."""

from __future__ import annotations

import logging

from structlog.testing import capture_logs

from tests.ingest.helpers import MINUTE_MS, hr, now_ms
from vitalcast.observability import configure_logging


async def test_ingest_logs_hold_no_values_or_tokens(client, users, caplog, capfd):
    """Everything logged around an ingest (accepted, rejected, replayed) lacks values and token."""
    configure_logging("debug")
    caplog.set_level(logging.DEBUG)
    _user_id, token = await users.create()
    headers = {"Authorization": f"Bearer {token}"}
    at = now_ms() - MINUTE_MS
    body = {
        "request_id": "req-7",
        "samples": [hr("v1", at, value=87.654321), hr("v2", at, value=299.98765, unit="nope")],
    }
    for _ in range(2):
        await client.post("/api/v1/samples", json=body, headers=headers)
    await client.post(
        "/api/v1/samples",
        content=b'{"samples": [{"value": 55.5555',
        headers=headers | {"content-type": "application/json"},
    )
    out, err = capfd.readouterr()
    text = caplog.text + out + err
    assert "ingest" in text
    for secret in ("87.654321", "299.98765", "55.5555", token, token.split(".")[2]):
        assert secret not in text


async def test_an_ingest_is_logged_at_debug_only(client, users):
    """One line per request is routine: at the default level (info) an ingest logs nothing, so
    a terminal stays readable; at debug its counts are there (never its values)."""
    _user_id, token = await users.create()
    headers = {"Authorization": f"Bearer {token}"}
    at = now_ms() - MINUTE_MS
    seen = {}
    for level in ("info", "debug"):
        configure_logging(level)
        with capture_logs() as events:
            body = {"samples": [hr(f"lvl-{level}", at, value=71.0)]}
            assert (await client.post("/api/v1/samples", json=body, headers=headers)).is_success
        seen[level] = [event for event in events if event["event"] == "ingest"]
    assert seen["info"] == []
    assert [(e["log_level"], e["inserted"]) for e in seen["debug"]] == [("debug", 1)]
