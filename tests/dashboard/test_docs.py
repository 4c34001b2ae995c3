"""/docs in headless Chromium against a real server: Swagger UI renders every operation of the
live schema from assets this server serves, under the dashboard's strict CSP, with no request to
any other origin and no CSP violation."""

from __future__ import annotations

import httpx
import pytest

from tests.dashboard.conftest import ON_MODULE_LOOP, open_tab

pytestmark = [pytest.mark.slow, ON_MODULE_LOOP]


async def test_docs_render_every_operation_from_our_own_assets(served, browser):
    """Every operation of /openapi.json appears on /docs; every request the page makes goes to
    this server; the page is answered with a CSP without 'unsafe-inline' and with nosniff."""
    async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
        page_answer = await client.get("/docs")
        schema = (await client.get("/openapi.json")).json()
    csp = page_answer.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "style-src 'self';" in csp and "unsafe" not in csp
    assert page_answer.headers["x-content-type-options"] == "nosniff"
    operations = sum(len(methods) for methods in schema["paths"].values())

    tab = await open_tab(browser)
    await tab.page.goto(f"{served.url}/docs")
    blocks = tab.page.locator(".opblock")
    await blocks.nth(operations - 1).wait_for(timeout=30_000)
    assert await blocks.count() == operations
    assert "/api/v1/sessions/{session_id}/telemetry" in await tab.page.content()
    assert tab.urls and all(url.startswith(served.url) for url in tab.urls), tab.urls
    assert tab.errors == [] and tab.console_errors == []
