"""``vitalcast serve --demo``: a demo user, a few past sessions and one live session, simulated
through the public HTTP API of the running server, and the dashboard link to open.

The link carries the token in its ``#fragment``, which browsers never send to a server; it is
printed to the terminal, never logged. Demo data is idempotent across restarts on one data dir:
past sessions are seeded once, and a live session left over from an earlier run is ended.
"""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress

import httpx

from vitalcast import clock
from vitalcast.local_tokens import issue_token
from vitalcast.observability import get_logger
from vitalcast.sessions import repository as session_repository
from vitalcast.simulator import Api, Pace, SessionRunner, live_placement
from vitalcast.wearable import MINUTE_MS, Interval, Profile, SessionPlan
from vitalcast.wiring import ServerParts

log = get_logger(__name__)

DEMO_USER = "demo"
DEMO_SEED = 7
TOKEN_TTL_S = 7 * 86_400
LIVE_MINUTES = 45

# (days ago, start hour UTC, minutes, dropout minute, outage minute, notes)
_PAST = (
    (4, 19, 40, None, None, "Clean recording"),
    (2, 20, 55, 18, None, "Watch off the wrist for 12 minutes: the charts show the gap"),
    (1, 18, 45, None, 10, "Phone out of reach for 15 minutes: those samples arrived late"),
)


def demo_companion(
    *, host: str, port: int, sync_ms: int
) -> Callable[[ServerParts], AbstractAsyncContextManager[None]]:
    """The demo, to run beside a server that serves on ``host:port`` (``create_app``'s
    companions), its live session synced every ``sync_ms``: started once the server's parts
    are, stopped before they close."""

    @asynccontextmanager
    async def run(parts: ServerParts) -> AsyncIterator[None]:
        demo = _Demo(parts, _base_url(host, port), sync_ms)
        task = asyncio.create_task(demo.run())
        try:
            yield
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
            await demo.end_live_session()

    return run


def _base_url(host: str, port: int) -> str:
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


class _Demo:
    """The demo's background work inside one server process."""

    def __init__(self, parts: ServerParts, base_url: str, sync_ms: int) -> None:
        self._parts = parts
        self._base_url = base_url
        self._sync_ms = sync_ms
        self._live: SessionRunner | None = None
        self._user_id = ""

    async def run(self) -> None:
        token = await self._token()
        delay_s = 1.0
        while True:
            try:
                async with httpx.AsyncClient(base_url=self._base_url, timeout=30.0) as http:
                    await _wait_until_serving(http)
                    api = Api(http, token)
                    await _seed(api)
                    _announce(self._base_url, token)
                    await self._live_forever(api)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("demo_retrying", error=type(exc).__name__, retry_in_s=delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 60.0)

    async def _token(self) -> str:
        now_ms = self._parts.clock.now_ms()
        async with self._parts.db.write() as conn:
            self._user_id = await session_repository.get_or_create_user(
                conn, DEMO_USER, now_ms=now_ms
            )
        return issue_token(
            self._parts.secret, self._user_id, now_s=now_ms // 1000, ttl_s=TOKEN_TTL_S
        )

    async def _live_forever(self, api: Api) -> None:
        """One live session after another: the first already 12 minutes in, an hour before it."""
        pre_ms, elapsed_ms = 60 * MINUTE_MS, 12 * MINUTE_MS
        while True:
            start_ms, origin_ms = live_placement(
                clock.now_ms(),
                pre_ms=pre_ms,
                elapsed_ms=elapsed_ms,
                duration_ms=LIVE_MINUTES * MINUTE_MS,
                post_ms=20 * MINUTE_MS,
                speed=1.0,
            )
            plan = SessionPlan(
                key=f"demo-live-{start_ms // 1000}",
                start_ms=start_ms,
                duration_ms=LIVE_MINUTES * MINUTE_MS,
                pre_ms=pre_ms,
                post_ms=20 * MINUTE_MS,
                notes=f"Live demo session, synced every {self._sync_ms / 1000:g} seconds",
            )
            # The server is stopping when this task is cancelled, so the session is ended
            # through the service (end_live_session), not over HTTP; the service precomputes
            # its views and tells its subscribers all the same.
            self._live = SessionRunner(
                api,
                plan,
                _profile(),
                Pace(1.0, origin_ms),
                DEMO_SEED,
                sync_ms=self._sync_ms,
                end_on_exit=False,
            )
            await self._live.run()
            self._live = None
            pre_ms, elapsed_ms = 0, 0

    async def end_live_session(self) -> None:
        """End the live session still running when the server stops."""
        live = self._live
        if live is None or live.session_id is None:
            return
        end_ms = max(live.plan.start_ms, min(self._parts.clock.now_ms(), live.plan.end_ms))
        try:
            await self._parts.sessions.end(self._user_id, live.session_id, end_ms=end_ms)
        except Exception as exc:
            log.warning("demo_end_failed", session_id=live.session_id, error=type(exc).__name__)


async def _wait_until_serving(http: httpx.AsyncClient) -> None:
    for _ in range(600):
        with suppress(httpx.TransportError):
            if (await http.get("/healthz")).status_code == 200:
                return
        await asyncio.sleep(0.1)
    raise TimeoutError("the server did not start serving")


def _profile() -> Profile:
    return Profile.draw(random.Random(f"{DEMO_SEED}/profile"))


async def _seed(api: Api) -> None:
    """End live sessions of an earlier run; seed the past sessions once per data dir."""
    now_ms = clock.now_ms()
    for stale in await api.sessions("active"):
        # Left by a run that was killed: end it where its plan ended, or now.
        end_ms = min(now_ms, stale["start_ms"] + LIVE_MINUTES * MINUTE_MS)
        await api.end_session(stale["id"], end_ms)
    if await api.sessions("completed"):
        return
    today_ms = now_ms // 86_400_000 * 86_400_000
    for days_ago, hour, minutes, dropout_min, outage_min, notes in _PAST:
        start_ms = today_ms - days_ago * 86_400_000 + hour * 3_600_000 + 7 * MINUTE_MS
        plan = SessionPlan(
            key=f"demo-{start_ms // 1000}",
            start_ms=start_ms,
            duration_ms=minutes * MINUTE_MS,
            pre_ms=60 * MINUTE_MS,
            post_ms=60 * MINUTE_MS,
            dropouts=_at(start_ms, dropout_min, 12),
            outages=_at(start_ms, outage_min, 15),
            notes=notes,
        )
        runner = SessionRunner(api, plan, _profile(), Pace(None), DEMO_SEED, sync_ms=10 * MINUTE_MS)
        await runner.run()
    log.info("demo_seeded", sessions=len(_PAST))


def _at(start_ms: int, minute: int | None, length_min: int) -> tuple[Interval, ...]:
    if minute is None:
        return ()
    begin = start_ms + minute * MINUTE_MS
    return (Interval(begin, begin + length_min * MINUTE_MS),)


def _announce(base_url: str, token: str) -> None:
    # Printed for the person at the terminal, deliberately not through the logger.
    sys.stdout.write(
        "\n  vitalcast demo is running. Open the dashboard (the token rides in the #fragment,\n"
        "  which the browser never sends to the server; keep the link private):\n\n"
        f"    {base_url}/#token={token}\n\n"
    )
    sys.stdout.flush()
