"""The live session's alert banner in headless Chromium: a crossing ingested while the session
is open shows as a banner (and, with the person's permission, a browser notification), and
clicking the episode bar on the chart highlights the alert it was announced as."""

from __future__ import annotations

import httpx

from tests.dashboard.conftest import ON_MODULE_LOOP, open_tab, wait_ready
from vitalcast.clock import iso_ms, now_ms
from vitalcast.testing import hr_sample

pytestmark = ON_MODULE_LOOP

MINUTE_MS = 60_000

# Records notifications instead of showing them: the page's own code decides when and what.
NOTIFICATIONS = """
window.__notifications = [];
window.Notification = class {
  static permission = 'granted';
  static requestPermission() { return Promise.resolve('granted'); }
  constructor(title, options) { window.__notifications.push({ title, ...options }); }
};
"""


async def test_a_crossing_shows_the_banner_and_its_episode_bar_links_to_it(served, browser):
    """Ingesting 135 bpm into the open live session announces an elevated and a critical alert:
    both appear in the banner without a reload, each raises one notification, and a click on
    the chart's episode bar highlights the alert of that episode."""
    token = served.token("dash-alerts")
    headers = {"Authorization": f"Bearer {token}"}
    start = now_ms() - 10 * MINUTE_MS
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:
        created = await http.post(
            "/api/v1/sessions", json={"started_at": iso_ms(start)}, headers=headers
        )
        session_id = created.json()["id"]
        samples = [hr_sample(f"n{i}", start + i * MINUTE_MS, 72.0) for i in range(1, 6)]
        answer = await http.post("/api/v1/samples", json={"samples": samples}, headers=headers)
        assert answer.status_code == 200
    await wait_ready(served.url, token, session_id)

    tab = await open_tab(browser)
    page = tab.page
    await page.context.add_init_script(NOTIFICATIONS)
    await page.goto(f"{served.url}/#token={token}&session={session_id}")
    await page.wait_for_function(
        "() => window.vitalcast.charts.has('heart_rate')"
        " && window.vitalcast.state.connection === 'online'"
    )
    assert await page.is_hidden("#alert-banner")

    crossing_ms = now_ms() - 2 * MINUTE_MS
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:
        answer = await http.post(
            "/api/v1/samples",
            json={"samples": [hr_sample("x", crossing_ms, 135.0)]},
            headers=headers,
        )
        assert answer.status_code == 200
    await page.wait_for_function("() => window.vitalcast.state.alertsShown >= 2", timeout=20_000)
    assert await page.is_visible("#alert-banner")
    titles = await page.locator(".alert-item .alert-title").all_text_contents()
    assert sorted(titles) == ["Alert: Heart rate ≥ 111 bpm", "Critical: Heart rate ≥ 131 bpm"]
    notified = await page.evaluate("() => window.__notifications.map((n) => n.title)")
    assert sorted(notified) == sorted(titles)

    # the payload with the episode is drawn once its session.updated has been fetched
    await page.wait_for_function(
        "() => (window.vitalcast.state.current.payload.metrics.heart_rate.insights.episodes || [])"
        ".length >= 2"
    )
    box = await page.evaluate(
        """() => {
          const chart = window.vitalcast.charts.get('heart_rate');
          const episode = chart.payload.metrics.heart_rate.insights.episodes
            .find((e) => e.level === 'critical');
          const rect = chart.u.over.getBoundingClientRect();
          const x = chart.u.valToPos((episode.start_ms + episode.end_ms) / 2000, 'x');
          return { x: rect.left + x, y: rect.top + 3 };
        }"""
    )
    await page.mouse.click(box["x"], box["y"])
    highlighted = await page.locator(".alert-item.highlight").get_attribute("data-rule")
    assert highlighted == ">=131"
    assert tab.errors == [] and tab.console_errors == []
