"""``vitalcast serve --demo``, what ``make run`` starts: a link to live charts within a minute."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import pytest

from tests.dashboard.conftest import CHART_STATE, ON_MODULE_LOOP, open_tab, run_server
from tests.processes import free_port, vitalcast_env

pytestmark = [pytest.mark.slow, ON_MODULE_LOOP]

LINK = re.compile(r"(http://127\.0\.0\.1:\d+/#token=([\w.-]+))")


async def test_demo_prints_a_link_to_live_charts_that_move(tmp_path, browser):
    """The demo prints a dashboard link with the token in the fragment (and never in its logs,
    whose routine per-sync lines are at debug);
    the page lists three past sessions and a live one whose charts are drawn and then move by
    themselves as the simulated phone syncs; stopping the server ends the live session, which
    (ended through the session service, not a route) precomputes its views at 1m and 5m."""
    # the simulated phone syncs every second (10 s by default): the charts move sooner
    env = vitalcast_env(tmp_path / "data", demo_sync_ms="1000")
    with run_server(env, tmp_path / "logs", port=free_port(), demo=True) as server:
        deadline = time.monotonic() + 60
        while not (found := LINK.search(server.stdout())):
            assert time.monotonic() < deadline, server.logs()[-3000:]
            await asyncio.sleep(0.2)
        link, token = found.groups()
        assert link.startswith(server.url + "/#token=")

        tab = await open_tab(browser)
        page = tab.page
        await page.goto(link)
        await page.wait_for_selector("#session-list .status.live")
        assert await page.locator("#session-list a").count() == 4
        assert await page.locator("#session-list .status.completed").count() == 3

        await page.locator("#session-list a:has(.status.live)").click()
        await page.wait_for_function(
            "() => window.vitalcast.charts.size === 7"
            " && document.getElementById('freshness').dataset.kind === 'live'"
        )
        await page.evaluate("() => { window.__sameDocument = true; }")
        before = await page.evaluate(CHART_STATE)
        await page.wait_for_function(
            "(wm) => window.vitalcast.state.current.payload.source_watermark > wm",
            arg=before["watermark"],
            timeout=45_000,
        )
        after = await page.evaluate(CHART_STATE)
        assert after["same_document"] and after["updates"] > before["updates"]
        live_id = await page.evaluate("() => window.vitalcast.state.current.id")
        assert tab.errors == [] and tab.console_errors == []

    assert token not in server.logs()
    # Not a terminal: every line is JSON, uvicorn's too; the ingests and computes of the live
    # session's syncs are routine (debug), so nothing followed the link at the default level.
    events = [json.loads(line) for line in server.logs().splitlines()]
    assert {"server_starting", "demo_seeded"} <= {event["event"] for event in events}
    assert not [e for e in events if e["event"] in ("ingest", "telemetry_compute_finished")]
    headers = {"Authorization": f"Bearer {token}"}
    with run_server(env, tmp_path / "logs") as again:
        async with httpx.AsyncClient(base_url=again.url) as http:
            response = await http.get(f"/api/v1/sessions/{live_id}", headers=headers)
            views = [
                await http.get(
                    f"/api/v1/sessions/{live_id}/telemetry",
                    params={"resolution": resolution},
                    headers=headers,
                )
                for resolution in ("1m", "5m")
            ]
    assert response.json()["status"] == "completed"
    watermark = response.json()["source_watermark"]
    for view in views:
        body = view.json()
        assert (view.status_code, body["state"]) == (200, "ready"), body["state"]
        assert body["telemetry"]["source_watermark"] == watermark
