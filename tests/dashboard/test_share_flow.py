"""The share flow in Chromium against a real ``vitalcast serve``: the owner creates a link from
the session view, a second browser context opens it and sees that one session live and
read-only (labelled as shared, no session list, no write control), sees the chart move on an
ingest, and loses it within a second of the owner's revocation, with the reason on the page."""

from __future__ import annotations

import time

import httpx

from tests.dashboard.conftest import (
    CHART_STATE,
    MINUTE_MS,
    ON_MODULE_LOOP,
    open_tab,
    post,
    start_live,
    wait_ready,
)

pytestmark = ON_MODULE_LOOP

VIEWER_READY = (
    "() => window.vitalcast.charts.has('heart_rate')"
    " && window.vitalcast.state.connection === 'online'"
    " && document.body.classList.contains('shared')"
)


async def test_owner_shares_viewer_follows_live_then_loses_it_on_revoke(served, browser):
    token = served.token("share-owner")
    live = await start_live(served.url, token, hold_back_ms=3 * MINUTE_MS)
    await wait_ready(served.url, token, live.id)

    owner = await open_tab(browser)
    await owner.page.goto(f"{served.url}/#token={token}&session={live.id}")
    await owner.page.wait_for_selector("#shares #share-create")
    await owner.page.fill("#share-label", "Sam")
    await owner.page.click("#share-create")
    await owner.page.wait_for_function("() => document.getElementById('share-url').value !== ''")
    url = await owner.page.input_value("#share-url")
    assert url.startswith(f"{served.url}/#share=vcs_")

    viewer = await open_tab(browser)
    page = viewer.page
    await page.goto(url)
    await page.wait_for_function(VIEWER_READY, timeout=30_000)
    assert "#share=" not in page.url, "the token leaves the address bar"
    assert await page.evaluate("() => window.vitalcast.state.current.id") == live.id
    assert "Shared with you" in await page.text_content("#shared-badge")
    assert "Sam" in await page.text_content("#shared-badge")
    assert not await page.is_visible(".sidebar")
    assert not await page.is_visible("#back")
    assert await page.query_selector("#shares") is None, "no share panel: it writes"
    assert await page.query_selector("#share-create") is None

    before = await page.evaluate(CHART_STATE)
    await post(served.url, token, f"{live.plan.key}-shared", live.held)
    await page.wait_for_function(
        "(wm) => window.vitalcast.state.current.payload.source_watermark > wm",
        arg=before["watermark"],
        timeout=20_000,
    )
    assert (await page.evaluate(CHART_STATE))["updates"] > before["updates"]

    revoked_at = time.monotonic()
    await owner.page.click("#share-list button[data-share]")
    await page.wait_for_function(
        "() => window.vitalcast.state.current === null"
        " && !document.getElementById('signin').hidden",
        timeout=10_000,
    )
    lost_after_s = time.monotonic() - revoked_at
    assert await page.text_content("#signin-title") == "This shared view has ended"
    assert await page.text_content("#signin-reason") == "The owner revoked this shared link."
    await owner.page.wait_for_selector("#share-list li[data-state='revoked']")
    async with httpx.AsyncClient(base_url=served.url) as http:
        listed = await http.get(
            f"/api/v1/sessions/{live.id}/shares", headers={"Authorization": f"Bearer {token}"}
        )
    assert [s["state"] for s in listed.json()["items"]] == ["revoked"]
    # A shared page asks for nothing outside its scope (no comparison with the owner's other
    # sessions: GET /insights would be 403); the 401s after the revoke are expected.
    assert viewer.errors == [] and owner.errors == [] and owner.console_errors == []
    assert not [e for e in viewer.console_errors if "403" in e], viewer.console_errors
    print(f"viewer lost the session {lost_after_s:.3f} s after the revoke click")
    assert lost_after_s <= 1.0
