"""The dashboard in headless Chromium against a real server: charts drawn, gaps as breaks, live
redraw on ingest, reconnect after a server restart, phone-sized layout, token handling."""

from __future__ import annotations

import asyncio
import math
import os
import time
from pathlib import Path

import httpx
import pytest

from tests.dashboard.conftest import (
    CHART_STATE,
    MINUTE_MS,
    ON_MODULE_LOOP,
    REPO,
    open_tab,
    past_plan,
    post,
    replay,
    run_server,
    start_live,
    wait_ready,
)
from tests.processes import vitalcast_env
from tests.stepped_clock import set_time
from vitalcast.clock import iso_ms

pytestmark = [pytest.mark.slow, ON_MODULE_LOOP]

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
HEART_RATE_RGB = (229, 72, 77)

# Pixels of one colour inside the plot area, per time range [from_ms, to_ms).
COUNT_PIXELS = """([code, rgb, ranges]) => {
  const u = window.vitalcast.charts.get(code).u;
  const { width, height } = u.ctx.canvas;
  const data = u.ctx.getImageData(0, 0, width, height).data;
  const top = Math.ceil(u.bbox.top), bottom = Math.floor(u.bbox.top + u.bbox.height);
  const near = (i) => Math.abs(data[i] - rgb[0]) < 30 && Math.abs(data[i + 1] - rgb[1]) < 40
    && Math.abs(data[i + 2] - rgb[2]) < 40 && data[i + 3] > 200;
  return ranges.map(([from, to]) => {
    const x0 = Math.ceil(u.valToPos(from / 1000, 'x', true));
    const x1 = Math.floor(u.valToPos(to / 1000, 'x', true));
    let count = 0;
    for (let y = top; y < bottom; y++)
      for (let x = x0; x < x1; x++) if (near((y * width + x) * 4)) count++;
    return count;
  });
}"""

CANVAS_DIGEST = """(code) => {
  const u = window.vitalcast.charts.get(code).u;
  const { width, height } = u.ctx.canvas;
  const data = u.ctx.getImageData(0, 0, width, height).data;
  let h = 0;
  for (let i = 0; i < data.length; i += 4) h = (h * 31 + data[i] + data[i + 1] * 7) >>> 0;
  return h;
}"""


async def test_past_session_is_drawn_with_its_gap_as_a_break(served, browser, tmp_path):
    """A past session's seven charts are drawn (non-blank canvas pixels); its 12-minute dropout
    is a null row in the data handed to uPlot and an empty stretch of the heart-rate line; the
    list marks the live session; the token leaves the fragment and is never in a URL.
    Its screenshot becomes docs/dashboard.png, the README's, under `make screenshot`."""
    token = served.token("dash-past")
    today = int(time.time() * 1000) // DAY_MS * DAY_MS
    await replay(
        served.url,
        token,
        past_plan("older", today - 4 * DAY_MS + 19 * HOUR_MS, minutes=40, dropout_at_min=None),
    )
    plan = past_plan("viewed", today - 2 * DAY_MS + 20 * HOUR_MS, minutes=50, dropout_at_min=18)
    viewed = await replay(served.url, token, plan)
    live = await start_live(served.url, token, hold_back_ms=0)
    await wait_ready(served.url, token, viewed)

    tab = await open_tab(browser)
    page = tab.page
    await page.goto(f"{served.url}/#token={token}")
    await page.wait_for_selector(f'a[data-session-id="{live.id}"] .status.live')
    assert token not in page.url
    assert await page.evaluate("() => sessionStorage.getItem('vitalcast.token')") == token
    assert await page.locator("#session-list a").count() == 3

    await page.locator(f'a[data-session-id="{viewed}"]').click()
    await page.wait_for_function(
        "() => window.vitalcast.charts.size === 7"
        " && document.getElementById('freshness').dataset.kind === 'asof'"
    )
    assert (await page.text_content("#freshness")).startswith("as of ")
    for code in ("heart_rate", "blood_oxygen", "steps"):
        digest = await page.evaluate(CANVAS_DIGEST, code)
        assert digest != 0, code

    gap = plan.dropouts[0]
    hr_data = await page.evaluate(
        "() => { const d = window.vitalcast.charts.get('heart_rate').u.data;"
        " return d[0].map((x, i) => [x, d[3][i]]); }"
    )
    in_gap = [value for x, value in hr_data if gap.start_ms / 1000 < x < gap.end_ms / 1000]
    assert in_gap and all(value is None for value in in_gap)
    assert sum(value is not None for _x, value in hr_data) > 100

    inside_gap = (gap.start_ms + 2 * MINUTE_MS, gap.end_ms - 2 * MINUTE_MS)
    same_width_before = (plan.start_ms + MINUTE_MS, plan.start_ms + 9 * MINUTE_MS)
    whole_window = (plan.begin_ms, plan.finish_ms)
    in_gap_px, before_px, total_px = await page.evaluate(
        COUNT_PIXELS,
        ["heart_rate", HEART_RATE_RGB, [inside_gap, same_width_before, whole_window]],
    )
    assert in_gap_px == 0
    assert before_px > 20 and total_px > 300

    rows = page.locator("#phase-table tbody tr")
    assert await rows.count() == 7
    after_cell = await rows.first.locator("td").nth(2).text_content()
    assert "covered" in after_cell

    assert tab.errors == [] and tab.console_errors == []
    assert not [url for url in tab.urls if token in url]
    # Written to the tree only on request, so a test run leaves the checkout clean.
    if os.environ.get("VITALCAST_UPDATE_SCREENSHOT") == "1":
        shot = REPO / "docs" / "dashboard.png"
    else:
        shot = tmp_path / "dashboard.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 50_000


async def test_live_session_redraws_after_ingest_without_reload(served, browser):
    """With a live session open, a new sync of samples reaches the chart through session.updated
    and a delta GET: new buckets appear, the canvas changes, the page is not reloaded, and the
    payload the page rebuilt from the delta is the one the server holds."""
    token = served.token("dash-live")
    live = await start_live(served.url, token, hold_back_ms=3 * MINUTE_MS)
    await wait_ready(served.url, token, live.id)

    tab = await open_tab(browser)
    page = tab.page
    await page.goto(f"{served.url}/#token={token}&session={live.id}")
    await page.wait_for_function(
        "() => window.vitalcast.charts.has('heart_rate')"
        " && document.getElementById('freshness').dataset.kind === 'live'"
        " && window.vitalcast.state.connection === 'online'"
    )
    await page.evaluate("() => { window.__sameDocument = true; }")
    before = await page.evaluate(CHART_STATE)
    digest_before = await page.evaluate(CANVAS_DIGEST, "heart_rate")

    await post(served.url, token, f"{live.plan.key}-1", live.held)
    await page.wait_for_function(
        "(wm) => window.vitalcast.state.current.payload.source_watermark > wm",
        arg=before["watermark"],
        timeout=20_000,
    )
    after = await page.evaluate(CHART_STATE)
    assert after["same_document"]
    assert after["updates"] > before["updates"]
    assert after["points"] > before["points"]
    assert after["last_x"] >= before["last_x"] + 120
    assert await page.evaluate(CANVAS_DIGEST, "heart_rate") != digest_before
    assert (await page.text_content("#freshness")).startswith("live")
    assert await page.evaluate("() => window.vitalcast.state.deltasApplied") >= 1
    drawn = await page.evaluate("() => window.vitalcast.state.current.payload")
    async with httpx.AsyncClient(base_url=served.url, timeout=10.0) as http:
        held = await http.get(
            f"/api/v1/sessions/{live.id}/telemetry",
            params={"window_minutes": 60, "resolution": "auto", "metrics": "all"},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert held.json()["telemetry"]["source_watermark"] == drawn["source_watermark"]
    assert drawn == held.json()["telemetry"]
    assert tab.errors == [] and tab.console_errors == []


async def test_reconnects_after_a_server_restart_and_catches_up(tmp_path, browser):
    """When the server goes away the page keeps its charts and calmly says "reconnecting";
    when it is back (same port, same data) the page reconnects by itself, resubscribes with its
    watermark and shows what was ingested meanwhile, without a reload."""
    env = vitalcast_env(tmp_path / "data")
    with run_server(env, tmp_path / "logs") as first:
        url = first.url
        token = first.token("dash-reconnect")
        live = await start_live(url, token, hold_back_ms=3 * MINUTE_MS)
        await wait_ready(url, token, live.id)
        tab = await open_tab(browser)
        page = tab.page
        await page.goto(f"{url}/#token={token}&session={live.id}")
        await page.wait_for_function(
            "() => window.vitalcast.charts.size > 0"
            " && window.vitalcast.state.connection === 'online'"
        )
        await page.evaluate("() => { window.__sameDocument = true; }")
        before = await page.evaluate(CHART_STATE)
        first.stop()

    await page.wait_for_function(
        "() => document.getElementById('connection').dataset.state === 'reconnecting'",
        timeout=15_000,
    )
    assert await page.get_attribute("#freshness", "data-kind") == "reconnecting"
    assert await page.evaluate("() => window.vitalcast.charts.size") == before["charts"]

    with run_server(env, tmp_path / "logs", port=int(url.rsplit(":", 1)[1])):
        await post(url, token, f"{live.plan.key}-1", live.held)
        await page.wait_for_function(
            "(wm) => window.vitalcast.state.connection === 'online'"
            " && window.vitalcast.state.current.payload.source_watermark > wm",
            arg=before["watermark"],
            timeout=60_000,
        )
        after = await page.evaluate(CHART_STATE)
        assert after["same_document"]
        assert after["last_x"] >= before["last_x"] + 120
        assert await page.get_attribute("#freshness", "data-kind") == "live"
    assert tab.errors == []


async def test_phone_sized_screen_shows_one_column_without_sideways_scroll(served, browser):
    """At 390 px the list and the session are separate screens, charts fit the width, and the
    page never scrolls sideways."""
    token = served.token("dash-phone")
    today = int(time.time() * 1000) // DAY_MS * DAY_MS
    plan = past_plan("phone", today - DAY_MS + 9 * HOUR_MS, minutes=30, dropout_at_min=None)
    session_id = await replay(served.url, token, plan)
    await wait_ready(served.url, token, session_id)

    tab = await open_tab(browser, width=390, height=844)
    page = tab.page
    await page.goto(f"{served.url}/#token={token}")
    await page.locator(f'a[data-session-id="{session_id}"]').click()
    await page.wait_for_function("() => window.vitalcast.charts.size === 7")
    assert not await page.locator(".sidebar").is_visible()
    assert await page.locator("#back").is_visible()
    widths = await page.evaluate(
        "() => [document.documentElement.scrollWidth,"
        " ...[...document.querySelectorAll('.chart-card canvas')].map(c => c.getBoundingClientRect().right)]"
    )
    assert widths[0] <= 390 and max(widths[1:]) <= 390
    await page.locator("#back").click()
    await page.wait_for_function("() => window.vitalcast.state.current === null")
    assert await page.locator(".sidebar").is_visible()
    assert tab.errors == [] and tab.console_errors == []


async def test_without_a_valid_token_the_page_asks_for_one(served, browser):
    """No token: a sign-in panel and no API call. A refused token: the same panel with the
    reason, and the token is dropped from the tab's storage. Unless a test asks for its
    inspection hook, the page's modules put nothing on ``window``."""
    tab = await open_tab(browser, inspect=False)
    page = tab.page
    await page.goto(f"{served.url}/")
    await page.wait_for_selector("#signin:not([hidden])")
    assert not [url for url in tab.urls if "/api/" in url]
    assert await page.evaluate("() => ['vitalcast', 'state'].filter((k) => k in window)") == []

    await page.fill("#signin-token", "not-a-token")
    await page.click("#signin-form button")
    await page.wait_for_function(
        "() => document.getElementById('signin-reason').textContent.includes('refused')"
    )
    assert await page.evaluate("() => sessionStorage.getItem('vitalcast.token')") is None
    assert tab.errors == []


async def test_csv_button_downloads_the_windows_samples(served, browser):
    """The CSV button fetches the export with the bearer header (the page's CSP stays strict)
    and hands it to the browser as a download: the same bytes as the API's CSV of the window
    shown, one row per sample, and the token never in a URL."""
    token = served.token("dash-csv")
    today = int(time.time() * 1000) // DAY_MS * DAY_MS
    plan = past_plan("csv", today - DAY_MS + 9 * HOUR_MS, minutes=20, dropout_at_min=None)
    session_id = await replay(served.url, token, plan)
    await wait_ready(served.url, token, session_id)

    tab = await open_tab(browser)
    page = tab.page
    await page.goto(f"{served.url}/#token={token}&session={session_id}")
    await page.wait_for_function("() => window.vitalcast.charts.size > 0")
    await page.select_option("#window", "30")
    async with page.expect_download() as download_info:
        await page.locator("#export-csv").click()
    download = await download_info.value
    assert download.suggested_filename == f"vitalcast-session-{session_id}-samples.csv"
    downloaded = await asyncio.to_thread(Path(await download.path()).read_bytes)
    await page.wait_for_function("() => window.vitalcast.state.exports === 1")

    async with httpx.AsyncClient(base_url=served.url, timeout=30.0) as http:
        direct = await http.get(
            f"/api/v1/sessions/{session_id}/export.csv",
            params={"window_minutes": 30},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert downloaded == direct.content
    lines = downloaded.decode().splitlines()
    assert lines[0].startswith("start,end,start_ms,end_ms,metric,value,unit")
    assert len(lines) > 100
    assert tab.errors == [] and tab.console_errors == []
    assert not [url for url in tab.urls if token in url]


HR_TRAILING = """(last) => {
  const cur = window.vitalcast.state.current;
  const hr = cur.payload.metrics.heart_rate;
  const u = window.vitalcast.charts.get('heart_rate').u;
  return {
    computed_at: cur.payload.computed_at_ms,
    window_end: cur.payload.window.end_ms,
    trailing: hr.gaps.filter((g) => g.start_ms === last),
    drawn_after_last: u.data[0].filter((x, i) => x * 1000 > last && u.data[3][i] != null).length,
    axis_max_ms: u.scales.x.max * 1000,
    same_document: window.__sameDocument === true,
  };
}"""


async def test_live_session_opens_by_default_and_its_trailing_gap_grows_without_reload(
    tmp_path, browser
):
    """A newcomer lands on the live session, not on "Pick a session". The watch then stops
    sending: with the server's and the page's clocks set two buckets on, the server's live
    tick pushes session.updated and the chart shows the trailing gap up to the new edge; between
    events the time axis keeps following the clock. No reload, no ingest."""
    clock_file = tmp_path / "clock"
    edge = int(time.time() * 1000)
    set_time(clock_file, edge)
    with run_server(
        vitalcast_env(tmp_path / "data"), tmp_path / "logs", clock_file=clock_file
    ) as server:
        token = server.token("dash-ticks")
        headers = {"Authorization": f"Bearer {token}"}
        start = edge - 20 * MINUTE_MS
        last = edge - 30_000
        async with httpx.AsyncClient(base_url=server.url, timeout=30.0) as http:
            created = await http.post(
                "/api/v1/sessions", json={"started_at": iso_ms(start)}, headers=headers
            )
            session_id = created.json()["id"]
            samples = [
                {"source": "watch", "record_id": f"h{k}", "metric": "heart_rate",
                 "value": 70.0 + k % 5, "start": iso_ms(last - k * 20_000)}
                for k in range(60)
            ]  # fmt: skip
            assert (
                await http.post("/api/v1/samples", json={"samples": samples}, headers=headers)
            ).status_code == 200
        await wait_ready(server.url, token, session_id)

        tab = await open_tab(browser)
        page = tab.page
        await page.clock.install(time=edge / 1000)  # runs on from the server's (standing) time
        await page.goto(f"{server.url}/#token={token}")
        await page.wait_for_function(
            "(id) => window.vitalcast.state.current && window.vitalcast.state.current.id === id"
            " && window.vitalcast.charts.has('heart_rate')"
            " && window.vitalcast.state.connection === 'online'",
            arg=session_id,
        )
        assert f"session={session_id}" in page.url and token not in page.url
        assert await page.locator("#placeholder").is_hidden()
        await page.evaluate("() => { window.__sameDocument = true; }")
        before = await page.evaluate(HR_TRAILING, last)
        assert before["trailing"] == [] and before["drawn_after_last"] == 0

        moved = edge + 2 * MINUTE_MS + 300
        set_time(clock_file, moved)
        await page.clock.set_system_time(moved / 1000)
        await page.wait_for_function(
            "(t) => window.vitalcast.state.current.payload.computed_at_ms >= t",
            arg=edge + 2 * MINUTE_MS,
            timeout=20_000,
        )
        after = await page.evaluate(HR_TRAILING, last)
        assert after["same_document"]
        assert after["trailing"] == [{"start_ms": last, "end_ms": after["window_end"]}]
        assert after["drawn_after_last"] == 0 and after["axis_max_ms"] >= after["window_end"]

        # no event within the bucket, yet the axis follows the page's clock
        await page.clock.set_system_time((moved + 40_000) / 1000)
        await page.wait_for_function(
            "(t) => window.vitalcast.charts.get('heart_rate').u.scales.x.max * 1000 >= t",
            arg=moved + 40_000,
            timeout=15_000,
        )
        assert (await page.text_content("#freshness")).startswith("live")
        assert tab.errors == [] and tab.console_errors == []


STRIP = """(code) => [...document.querySelectorAll(
  `.chart-card[data-metric="${code}"] .insight-strip .num`)].map(
  (n) => [n.dataset.field, JSON.parse(n.dataset.value), n.textContent])"""
# Pixels of one colour in the top rows of the plot (where episodes are drawn), per time range.
TOP_PIXELS = """([code, rgb, ranges]) => {
  const u = window.vitalcast.charts.get(code).u;
  const { width } = u.ctx.canvas;
  const top = Math.ceil(u.bbox.top);
  const data = u.ctx.getImageData(0, top, width, 3).data;
  const near = (i) => Math.abs(data[i] - rgb[0]) < 12 && Math.abs(data[i + 1] - rgb[1]) < 12
    && Math.abs(data[i + 2] - rgb[2]) < 12 && data[i + 3] > 200;
  return ranges.map(([from, to]) => {
    const x0 = Math.max(0, Math.ceil(u.valToPos(from / 1000, 'x', true)));
    const x1 = Math.min(width, Math.floor(u.valToPos(to / 1000, 'x', true)));
    let count = 0;
    for (let y = 0; y < 3; y++) for (let x = x0; x < x1; x++) if (near((y * width + x) * 4)) count++;
    return count;
  });
}"""
CRITICAL_RGB = (217, 45, 32)
DECIMALS = {"heart_rate": 0, "blood_oxygen": 1, "skin_temperature": 2, "steps": 0}


def _lookup(insights: dict, field: str):
    value = insights
    for part in field.split("."):
        value = value[part]
    return value


def _shown_number(text: str) -> float:
    """The number a strip item shows: "+1,234.5", "−3", "90.3 %"."""
    cleaned = text.replace(",", "").replace("−", "-").replace("±", "").replace("%", "")
    return float(cleaned.split()[0])


def _shown_minutes(text: str) -> int:
    """Minutes shown as "12 min" or "1 h 30 min"."""
    words = text.split()
    return int(words[0]) * 60 + int(words[2]) if "h" in words else int(words[0])


async def test_insight_strips_equal_the_api(served, browser):
    """Each chart's insight strip carries exactly the payload's insights (and shows them rounded
    for reading); alert episodes are drawn along the top of the chart within their time and
    nowhere else; the small chart of the last sessions holds the figures GET /insights answers,
    with the viewed session highlighted."""
    token = served.token("dash-insights")
    today = int(time.time() * 1000) // DAY_MS * DAY_MS
    for day in (5, 4, 3):
        await replay(
            served.url,
            token,
            past_plan(
                f"before-{day}",
                today - day * DAY_MS + 18 * HOUR_MS,
                minutes=40,
                dropout_at_min=None,
            ),
        )
    plan = past_plan("insights", today - DAY_MS + 19 * HOUR_MS, minutes=45, dropout_at_min=None)
    viewed = await replay(served.url, token, plan)
    # a desaturation 20–25 minutes into the session: SpO2 below 90
    dip = [
        {"source": "manual", "record_id": f"dip-{m}", "metric": "blood_oxygen", "value": 88.0,
         "unit": "%", "start": iso_ms(plan.start_ms + m * MINUTE_MS + 15_000)}
        for m in range(20, 25)
    ]  # fmt: skip
    await post(served.url, token, "dip", dip)
    await wait_ready(served.url, token, viewed)

    async with httpx.AsyncClient(base_url=served.url, timeout=30.0) as http:
        auth = {"Authorization": f"Bearer {token}"}
        payload = (
            await http.get(
                f"/api/v1/sessions/{viewed}/telemetry",
                params={"window_minutes": 60, "resolution": "auto", "metrics": "all"},
                headers=auth,
            )
        ).json()["telemetry"]
        histories = {}
        for code in ("heart_rate", "blood_oxygen", "steps"):
            while True:
                answer = (
                    await http.get(
                        "/api/v1/insights",
                        params={"metric": code, "last": 20, "window_minutes": 60},
                        headers=auth,
                    )
                ).json()
                if answer["complete"]:
                    break
                await asyncio.sleep(answer["retry_after_seconds"])
            histories[code] = answer

    tab = await open_tab(browser)
    page = tab.page
    await page.goto(f"{served.url}/#token={token}&session={viewed}")
    await page.wait_for_function(
        "() => { const { charts, state } = window.vitalcast;"
        " return charts.size === 7 && [...charts.keys()].every((code) =>"
        "   state.current.histories.get(code) && state.current.histories.get(code).complete); }"
    )
    for code, metric in payload["metrics"].items():
        insights = metric["insights"]
        shown = await page.evaluate(STRIP, code)
        assert shown, code
        for field, value, text in shown:
            expected = (
                _lookup(insights, field) if field != "episodes" else len(insights["episodes"])
            )
            if field in ("baseline", "recovery_ms") and expected is None:
                assert value is None, (code, field)
                continue
            assert value == expected, (code, field, value, expected)
            if field.endswith("_ms"):
                assert _shown_minutes(text) == math.floor(expected / 60_000 + 0.5), (code, text)
            elif field != "episodes":
                digits = DECIMALS.get(code, 1) if field != "delta_pct" else 1
                assert abs(_shown_number(text) - expected) <= 0.5 * 10**-digits + 1e-9, (code, text)
        fields = {field for field, _value, _text in shown}
        if metric["kind"] == "scalar":
            assert {"baseline", "recovery_ms"} <= fields
            assert ("delta" in fields) is (insights["delta"] is not None)
            assert ("peak.value" in fields) is (insights["peak"] is not None)
            assert ("episodes" in fields) is bool(insights["episodes"])
        else:
            assert fields == {"during_total", "rate_per_min.before", "rate_per_min.during",
                              "rate_per_min.after"}  # fmt: skip

    episodes = payload["metrics"]["blood_oxygen"]["insights"]["episodes"]
    critical = [(e["start_ms"], e["end_ms"]) for e in episodes if e["level"] == "critical"]
    assert critical, episodes
    calm = (payload["window"]["start_ms"], min(e["start_ms"] for e in episodes))
    inside, outside = await page.evaluate(
        TOP_PIXELS, ["blood_oxygen", CRITICAL_RGB, [critical[0], calm]]
    )
    assert inside > 0 and outside == 0

    for code, answer in histories.items():
        drawn = await page.evaluate(
            "(code) => { const h = window.vitalcast.charts.get(code).history;"
            " return h && {data: h.u.data, current: h.current}; }",
            code,
        )
        oldest_first = answer["sessions"][::-1]
        if all(line["value"] is None for line in oldest_first):
            assert drawn is None, code  # nothing to compare: the caption says so
            continue
        values = [line["value"] for line in oldest_first]
        current = [line["session_id"] for line in oldest_first].index(viewed)
        assert drawn["current"] == current == len(values) - 1
        assert drawn["data"][1] == [None if i == current else v for i, v in enumerate(values)]
        assert drawn["data"][2] == [v if i == current else None for i, v in enumerate(values)]
    assert tab.errors == [] and tab.console_errors == []
