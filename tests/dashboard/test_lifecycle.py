"""The dashboard's data-lifecycle controls in Chromium: "Delete session" asks first, says what
stays, and deletes only on confirmation; "Download all my data" hands over the account's zip."""

from __future__ import annotations

import asyncio
import io
import time
import zipfile
from pathlib import Path

import httpx
import orjson

from tests.dashboard.conftest import ON_MODULE_LOOP, open_tab, past_plan, replay, wait_ready

pytestmark = ON_MODULE_LOOP

DAY_MS = 86_400_000
HOUR_MS = 3_600_000


async def test_delete_session_confirms_says_what_stays_and_deletes(served, browser):
    token = served.token("dash-delete")
    auth = {"Authorization": f"Bearer {token}"}
    today = int(time.time() * 1000) // DAY_MS * DAY_MS
    plan = past_plan("delete", today - DAY_MS + 8 * HOUR_MS, minutes=15, dropout_at_min=None)
    session_id = await replay(served.url, token, plan)
    await wait_ready(served.url, token, session_id)
    async with httpx.AsyncClient(base_url=served.url, headers=auth, timeout=30.0) as http:
        samples_before = (await http.get(f"/api/v1/sessions/{session_id}/export.csv")).text

    tab = await open_tab(browser)
    page = tab.page
    await page.goto(f"{served.url}/#token={token}&session={session_id}")
    await page.wait_for_function("() => window.vitalcast.charts.size > 0")
    await page.wait_for_selector(f"a[data-session-id='{session_id}']")

    await page.locator("#delete-session").click()
    await page.wait_for_selector("#delete-dialog[open]")
    assert "raw samples stay" in await page.locator("#delete-stays").inner_text()
    await page.locator("#delete-keep").click()
    await page.wait_for_selector("#delete-dialog:not([open])", state="attached")
    async with httpx.AsyncClient(base_url=served.url, headers=auth) as http:
        assert (await http.get(f"/api/v1/sessions/{session_id}")).status_code == 200

    await page.locator("#delete-session").click()
    await page.locator("#delete-confirm").click()
    await page.wait_for_function("() => window.vitalcast.state.sessionsDeleted === 1")
    await page.wait_for_function("() => window.vitalcast.state.current === null")
    await page.wait_for_selector(f"a[data-session-id='{session_id}']", state="detached")
    assert "session=" not in page.url
    async with httpx.AsyncClient(base_url=served.url, headers=auth, timeout=30.0) as http:
        assert (await http.get(f"/api/v1/sessions/{session_id}")).status_code == 404
        export = await http.get("/api/v1/me/export")
    csv_rows = zipfile.ZipFile(io.BytesIO(export.content)).read("samples.csv").decode()
    # The samples of the deleted session are still the user's.
    assert set(samples_before.splitlines()[1:]) <= set(csv_rows.splitlines())
    assert tab.errors == [] and tab.console_errors == []


async def test_download_all_my_data_gives_the_account_zip(served, browser):
    token = served.token("dash-export-all")
    today = int(time.time() * 1000) // DAY_MS * DAY_MS
    plan = past_plan("all", today - DAY_MS + 10 * HOUR_MS, minutes=10, dropout_at_min=None)
    session_id = await replay(served.url, token, plan)

    tab = await open_tab(browser)
    page = tab.page
    await page.goto(f"{served.url}/#token={token}")
    await page.wait_for_selector(f"a[data-session-id='{session_id}']")
    async with page.expect_download() as download_info:
        await page.locator("#export-all").click()
    download = await download_info.value
    assert download.suggested_filename == "vitalcast-export.zip"
    data = await asyncio.to_thread(Path(await download.path()).read_bytes)
    await page.wait_for_function("() => window.vitalcast.state.accountExports === 1")
    archive = zipfile.ZipFile(io.BytesIO(data))
    account = orjson.loads(archive.read("account.json"))
    assert account["user"]["name"] == "dash-export-all"
    assert [s["id"] for s in account["sessions"]] == [session_id]
    assert f"sessions/{session_id}.json" in archive.namelist()
    assert tab.errors == [] and tab.console_errors == []
    assert not [url for url in tab.urls if token in url]
