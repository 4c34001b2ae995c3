"""Dashboard fixtures: a real ``vitalcast serve`` subprocess on a free loopback port with a temp
SQLite data dir, users made by the real CLI, data loaded through the HTTP API, and Debian's
headless Chromium driven by Playwright (never ``playwright install``)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright

from tests.processes import (
    ADDRESS_IN_USE,
    BIND_ATTEMPTS,
    ForkedProcess,
    entry_point,
    fork_child,
    free_port,
    run_cli,
    stop_process,
    vitalcast_env,
)
from tests.services import service_missing
from vitalcast.simulator import Api, Pace, SessionRunner
from vitalcast.wearable import MINUTE_MS, Interval, Profile, SessionPlan, generate

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
REPO = Path(__file__).resolve().parents[2]
VENDOR_STAMP = REPO / "src" / "vitalcast" / "static" / "vendor" / ".stamp"
SEED = 11


START_TIMEOUT_S = 120.0
_LISTENING = re.compile(rb"Uvicorn running on (http://127\.0\.0\.1:\d+)")


def token_for(env: dict[str, str], name: str) -> str:
    """A bearer token from the real ``vitalcast token create`` (which also creates the user)."""
    done = run_cli(["token", "create", name], env, timeout_s=60)
    done.check_returncode()
    return done.stdout.strip()


@dataclass
class Server:
    """One ``vitalcast serve`` subprocess with its stdout and stderr (logs) in files."""

    url: str
    env: dict[str, str]
    process: ForkedProcess
    stdout_path: Path
    stderr_path: Path

    def token(self, name: str) -> str:
        return token_for(self.env, name)

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def logs(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM (a graceful shutdown), then SIGKILL if it hangs for 20 s."""
        stop_process(self.process, 20)
        self.process.close()


@contextlib.contextmanager
def run_server(
    env: dict[str, str],
    logs: Path,
    *,
    port: int = 0,
    demo: bool = False,
    clock_file: Path | None = None,
) -> Iterator[Server]:
    """``vitalcast serve`` on 127.0.0.1 (port 0 = the OS picks one, read back from the log),
    on the test-moved clock of ``clock_file`` when given, healthy before the block starts (both
    within START_TIMEOUT_S) and stopped after it. A given port (the demo prints its link before
    it listens, so it must know it) that another process took before the server bound it is
    replaced by another free one (``BIND_ATTEMPTS`` in all)."""
    logs.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, BIND_ATTEMPTS + 1):
        server = _start_server(env, logs, port, demo, clock_file)
        try:
            server.url = _listening_url(server)
            break
        except RuntimeError:
            server.stop()
            if port == 0 or attempt == BIND_ATTEMPTS or ADDRESS_IN_USE not in server.logs().lower():
                raise
            port = free_port()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _healthy(server.url):
            if server.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"vitalcast serve is not healthy:\n{server.logs()[-3000:]}")
            time.sleep(0.05)
        yield server
    finally:
        server.stop()


def _start_server(
    env: dict[str, str], logs: Path, port: int, demo: bool, clock_file: Path | None
) -> Server:
    stem = f"serve-{time.monotonic_ns()}"
    out, err = logs / f"{stem}.out", logs / f"{stem}.err"
    args = ["serve", "--host", "127.0.0.1", "--port", str(port), *(["--demo"] if demo else [])]
    command, module = entry_point(args, clock_file)
    return Server("", env, fork_child(module, command, env, out, err), out, err)


def _listening_url(server: Server) -> str:
    """The URL the server's log says it listens on (RuntimeError if it exits first)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not (found := _LISTENING.search(server.stderr_path.read_bytes())):
        if server.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"vitalcast serve did not start:\n{server.logs()[-3000:]}")
        time.sleep(0.05)
    return found.group(1).decode()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=5.0).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One embedded server per test module; tests isolate themselves with their own users."""
    tmp = tmp_path_factory.mktemp("dashboard")
    with run_server(vitalcast_env(tmp / "data"), tmp / "logs") as server:
        yield server


# What a live-redraw test compares: heart-rate buckets drawn, the payload watermark, events
# received, and whether the document is still the one the test marked.
CHART_STATE = """() => {
  const u = window.vitalcast.charts.get('heart_rate').u;
  const xs = u.data[0].filter((x, i) => u.data[3][i] != null);
  return {
    points: xs.length,
    last_x: xs[xs.length - 1],
    watermark: window.vitalcast.state.current.payload.source_watermark,
    updates: window.vitalcast.state.updatesReceived,
    same_document: window.__sameDocument === true,
    charts: window.vitalcast.charts.size,
  };
}"""


@dataclass
class Tab:
    """A page in a fresh browser context, with the uncaught errors, console errors and request
    URLs (HTTP and WebSocket) it produced."""

    page: Page
    errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's chromium (``.ci/run`` installs it); Playwright's own download is never used."""
    if not CHROMIUM.exists():
        service_missing(f"chromium ({CHROMIUM})")
    if not VENDOR_STAMP.exists():
        # without uPlot and socket.io-client every page waits out its 30 s timeout instead
        pytest.fail("The dashboard's npm assets are missing: run `make install` first.")
    return CHROMIUM


#: what a dashboard test module marks its tests with: they run on the module's event loop, the
#: one that drives the module's Chromium (``module_browser``)
ON_MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_browser(chromium: Path) -> AsyncIterator[Browser]:
    """One Chromium (and Playwright driver) per test module: starting and stopping them cost
    about 0.8 s of CPU per test. Each test still gets fresh browser contexts (``open_tab``),
    closed after it (``browser``), so no cookie, storage or open page outlives its test."""
    async with async_playwright() as playwright:
        instance = await playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS
        )
        try:
            yield instance
        finally:
            await instance.close()


@pytest_asyncio.fixture(loop_scope="module")
async def browser(module_browser: Browser) -> AsyncIterator[Browser]:
    """The module's Chromium; every context the test opened is closed after it (a page left
    open would keep reconnecting to a server that is gone, and hold its memory)."""
    yield module_browser
    for context in list(module_browser.contexts):
        await context.close()


async def open_tab(
    browser: Browser, *, width: int = 1440, height: int = 900, inspect: bool = True
) -> Tab:
    """A page in a fresh context; ``inspect`` asks the page for its read-only test hook
    (``static/inspect.js``: ``window.vitalcast.charts`` and ``.state``), which it never
    installs on its own."""
    context = await browser.new_context(
        viewport={"width": width, "height": height}, locale="en-US", timezone_id="UTC"
    )
    if inspect:
        await context.add_init_script("window.__vitalcastInspect = true;")
    page = await context.new_page()
    tab = Tab(page)
    page.on("pageerror", lambda error: tab.errors.append(str(error)))
    page.on(
        "console",
        lambda message: (
            tab.console_errors.append(message.text) if message.type == "error" else None
        ),
    )
    page.on("request", lambda request: tab.urls.append(request.url))
    page.on("websocket", lambda socket: tab.urls.append(socket.url))
    return tab


def profile() -> Profile:
    return Profile.draw(random.Random(f"{SEED}/profile"))


def past_plan(key: str, start_ms: int, *, minutes: int, dropout_at_min: int | None) -> SessionPlan:
    dropouts = ()
    if dropout_at_min is not None:
        begin = start_ms + dropout_at_min * MINUTE_MS
        dropouts = (Interval(begin, begin + 12 * MINUTE_MS),)
    return SessionPlan(
        key=key,
        start_ms=start_ms,
        duration_ms=minutes * MINUTE_MS,
        pre_ms=60 * MINUTE_MS,
        post_ms=60 * MINUTE_MS,
        dropouts=dropouts,
        notes="Watch off the wrist for 12 minutes" if dropouts else None,
    )


async def replay(base_url: str, token: str, plan: SessionPlan) -> str:
    """Post a whole past session through the HTTP API, synced every 10 minutes; its id."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30.0) as http:
        runner = SessionRunner(
            Api(http, token), plan, profile(), Pace(None), SEED, sync_ms=10 * MINUTE_MS
        )
        tally = await runner.run()
    assert tally.rejected == 0 and tally.inserted == tally.sent > 0
    assert runner.session_id is not None
    return runner.session_id


@dataclass
class LiveSession:
    """A live session whose samples up to ``sent_until_ms`` are in; ``held`` are the rest."""

    id: str
    plan: SessionPlan
    held: list[dict[str, Any]]


async def start_live(base_url: str, token: str, *, hold_back_ms: int) -> LiveSession:
    """A session started 10 minutes ago, with 30 minutes before it; everything recorded until
    now except the last ``hold_back_ms`` is posted, the rest is returned for a later sync."""
    now_ms = int(time.time() * 1000)
    start_ms = now_ms - now_ms % 1000 - 10 * MINUTE_MS
    plan = SessionPlan(
        key=f"live-{start_ms}",
        start_ms=start_ms,
        duration_ms=60 * MINUTE_MS,
        pre_ms=30 * MINUTE_MS,
        post_ms=0,
    )
    p = profile()
    recorded = [s for s in generate(plan, p, seed=SEED) if s.end_ms <= now_ms]
    cut = now_ms - hold_back_ms
    async with httpx.AsyncClient(base_url=base_url, timeout=30.0) as http:
        api = Api(http, token)
        session = await api.create_session(plan)
        sent = await api.post_samples(
            f"{plan.key}-0", [s.wire(p) for s in recorded if s.end_ms < cut]
        )
    assert not sent["rejected"]
    held = [s.wire(p) for s in recorded if s.end_ms >= cut]
    return LiveSession(session["id"], plan, held)


async def post(base_url: str, token: str, request_id: str, samples: list[dict[str, Any]]) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=30.0) as http:
        result = await Api(http, token).post_samples(request_id, samples)
    assert not result["rejected"] and result["inserted"] == len(samples)


async def wait_ready(base_url: str, token: str, session_id: str, timeout_s: float = 30.0) -> None:
    """Until the default telemetry (what the page asks for) is computed and fresh."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as http:
        while time.monotonic() < deadline:
            response = await http.get(
                f"/api/v1/sessions/{session_id}/telemetry",
                params={"metrics": "all"},
                headers={"Authorization": f"Bearer {token}"},
            )
            if response.status_code == 200 and response.json()["state"] == "ready":
                return
            await asyncio.sleep(0.2)
    raise AssertionError("telemetry did not become ready")
