"""``vitalcast simulate``: wearable streams (``vitalcast.wearable``) posted through the public
HTTP API the way a phone syncs a watch.

:class:`SessionRunner` plays one plan through a :class:`Pace`: instantly for past sessions, in
real time or accelerated for live ones. Every sync posts what the watch recorded since the last
one; samples are never sent before the simulated clock has reached their end, so nothing lands in
the future; what was recorded during a phone outage is held and sent after it (late ingest); the
session is ended on time, or at the stop time when the run is cancelled. Only ids and counts are
reported, never sample values.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import httpx

from vitalcast import clock
from vitalcast.json_types import JsonObject
from vitalcast.samples import WriteCounts
from vitalcast.wearable import (
    MINUTE_MS,
    Interval,
    Profile,
    Sample,
    SessionPlan,
    generate,
    place_intervals,
)

MAX_BATCH = 2_000
_TRANSIENT_STATUS = frozenset({429, 502, 503, 504})

Progress = Callable[[str], None]
_T = TypeVar("_T")


class Pace:
    """Maps wall time onto simulated time. ``speed=None`` replays instantly (past sessions).

    With a speed, simulated time starts at ``sim_origin_ms`` now and runs ``speed`` times faster
    than the wall clock; callers place the plan so that it never overtakes the wall clock.
    """

    def __init__(self, speed: float | None, sim_origin_ms: int = 0) -> None:
        self.speed = speed
        self._sim_origin_ms = sim_origin_ms
        self._wall_origin_s = time.monotonic()

    def now_ms(self) -> int | None:
        if self.speed is None:
            return None
        elapsed_s = time.monotonic() - self._wall_origin_s
        return self._sim_origin_ms + int(elapsed_s * 1000 * self.speed)

    async def reach(self, sim_ms: int) -> int:
        """Wait until simulated time is ``sim_ms``; return the simulated time then (≥ sim_ms)."""
        if self.speed is None:
            return sim_ms
        now = self.now_ms() or sim_ms
        if now < sim_ms:
            await asyncio.sleep((sim_ms - now) / 1000 / self.speed)
        return max(sim_ms, self.now_ms() or sim_ms)


def live_placement(
    now_ms: int, *, pre_ms: int, elapsed_ms: int, duration_ms: int, post_ms: int, speed: float
) -> tuple[int, int]:
    """(session start, simulated origin) for a live session that already ran ``elapsed_ms``.

    The backlog (padding before plus the elapsed part) is sent at once, like a phone that syncs
    what the watch recorded; the rest plays at ``speed`` and ends exactly at the wall clock, so an
    accelerated run never sends a sample from the future.
    """
    backlog_ms = pre_ms + elapsed_ms
    rest_ms = duration_ms + post_ms - elapsed_ms
    begin_ms = now_ms - backlog_ms - int(rest_ms * (1 - 1 / speed))
    begin_ms -= begin_ms % 1000
    return begin_ms + pre_ms, begin_ms + backlog_ms


class ApiError(Exception):
    """The server answered a simulator call with a non-retryable error."""

    def __init__(self, status: int, code: str | None) -> None:
        super().__init__(f"HTTP {status} {code or ''}".strip())
        self.status = status
        self.code = code


class Api:
    """The public endpoints the simulator uses, retrying transient failures with backoff."""

    def __init__(self, http: httpx.AsyncClient, token: str, *, max_attempts: int = 8) -> None:
        self._http = http
        self._headers = {"Authorization": f"Bearer {token}"}
        self._max_attempts = max_attempts

    async def call(
        self,
        method: str,
        path: str,
        **kwargs: Any,  # Any: httpx.request's keyword arguments, passed through
    ) -> JsonObject:
        delay_s = 0.5
        for attempt in range(1, self._max_attempts + 1):
            try:
                response = await self._http.request(method, path, headers=self._headers, **kwargs)
            except httpx.TransportError:
                if attempt == self._max_attempts:
                    raise
            else:
                if response.status_code < 400:
                    answer: JsonObject = response.json()
                    return answer
                if response.status_code not in _TRANSIENT_STATUS or attempt == self._max_attempts:
                    code = None
                    if response.headers.get("content-type", "").endswith("json"):
                        code = response.json().get("code")
                    raise ApiError(response.status_code, code)
                retry_after = response.headers.get("retry-after", "")
                if retry_after.isdigit():
                    delay_s = max(delay_s, float(retry_after))
            await asyncio.sleep(min(delay_s, 30.0))
            delay_s *= 2
        raise AssertionError("unreachable")

    async def create_session(self, plan: SessionPlan) -> JsonObject:
        body = {"client_session_id": plan.key, "started_at": clock.iso_ms(plan.start_ms)}
        if plan.notes:
            body["notes"] = plan.notes
        result: JsonObject = await self.call("POST", "/api/v1/sessions", json=body)
        return result

    async def end_session(self, session_id: str, ended_ms: int) -> JsonObject:
        result: JsonObject = await self.call(
            "POST", f"/api/v1/sessions/{session_id}/end", json={"ended_at": clock.iso_ms(ended_ms)}
        )
        return result

    async def sessions(self, status: str | None = None) -> list[JsonObject]:
        params = {"limit": 200} | ({"status": status} if status else {})
        page = await self.call("GET", "/api/v1/sessions", params=params)
        items: list[JsonObject] = page["items"]
        return items

    async def post_samples(self, request_id: str, samples: list[JsonObject]) -> JsonObject:
        body = {"request_id": request_id, "samples": samples}
        result: JsonObject = await self.call("POST", "/api/v1/samples", json=body)
        return result


@dataclass
class Tally(WriteCounts):
    """Counts of what a runner sent and what the server did with it."""

    batches: int = 0
    sent: int = 0
    rejected: int = 0
    late: int = 0

    def add(self, other: Tally) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class SessionRunner:
    """Plays one plan against the server: create, sync every ``sync_ms``, end on time.

    ``end_on_exit`` ends a still-active session at the simulated time when the run is cancelled
    (Ctrl-C), so no session stays "live" forever.
    """

    api: Api
    plan: SessionPlan
    profile: Profile
    pace: Pace
    seed: int
    sync_ms: int = MINUTE_MS
    hr_interval_ms: int = 5_000
    label: str = "sim"
    progress: Progress | None = None
    end_on_exit: bool = True
    tally: Tally = field(default_factory=Tally)
    session_id: str | None = None

    async def run(self) -> Tally:
        plan = self.plan
        rng = random.Random(f"{self.seed}/{plan.key}/sync")
        pending = generate(plan, self.profile, seed=self.seed, hr_interval_ms=self.hr_interval_ms)
        held: list[Sample] = []
        run_id = uuid.uuid4().hex[:8]
        session = await self.api.create_session(plan)
        self.session_id = session["id"]
        ended = session["status"] != "active"
        reached = plan.begin_ms
        try:
            while reached < plan.finish_ms:
                jitter = rng.uniform(0.8, 1.2)
                target = min(reached + int(self.sync_ms * jitter), plan.finish_ms)
                reached = min(await self.pace.reach(target), plan.finish_ms)
                cut = _first_after(pending, reached)
                due, pending = pending[:cut], pending[cut:]
                offline = [o for o in plan.outages if o.start_ms <= reached < o.end_ms]
                if offline:
                    held += due
                    continue
                late, held = held, []
                await self._send(run_id, late + due, late=len(late))
                if not ended and reached >= plan.end_ms:
                    await self.api.end_session(self.session_id, plan.end_ms)
                    ended = True
                self._report(reached)
            if held:
                await self._send(run_id, held, late=len(held))
        finally:
            if not ended and self.end_on_exit:
                await self._end_early(reached)
        return self.tally

    async def _end_early(self, reached_ms: int) -> None:
        assert self.session_id is not None
        stop_ms = min(self.pace.now_ms() or reached_ms, clock.now_ms())
        try:
            await self.api.end_session(self.session_id, max(stop_ms, self.plan.start_ms))
        except (ApiError, httpx.HTTPError):
            if self.progress is not None:
                self.progress(f"[{self.label}] could not end session {self.session_id[:8]}")

    async def _send(self, run_id: str, samples: Sequence[Sample], *, late: int) -> None:
        for i in range(0, len(samples), MAX_BATCH):
            chunk = [s.wire(self.profile) for s in samples[i : i + MAX_BATCH]]
            request_id = f"{self.plan.key}-{run_id}-{self.tally.batches}"
            result = await self.api.post_samples(request_id, chunk)
            self.tally.batches += 1
            self.tally.sent += len(chunk)
            self.tally.count_answer(result)
            self.tally.rejected += len(result.get("rejected", ()))
        self.tally.late += late

    def _report(self, reached_ms: int) -> None:
        plan, t = self.plan, self.tally
        if self.progress is None or (self.pace.speed is None and reached_ms < plan.finish_ms):
            return
        done = (reached_ms - plan.begin_ms) / max(1, plan.finish_ms - plan.begin_ms)
        phase = "before" if reached_ms < plan.start_ms else "during"
        if reached_ms >= plan.end_ms:
            phase = "after"
        kind = "past" if self.pace.speed is None else "live"
        shown = datetime.fromtimestamp(reached_ms / 1000).strftime("%d %b %H:%M:%S")
        self.progress(
            f"[{self.label}] {kind} {(self.session_id or '')[:8]} {shown} {phase:<6} {done:4.0%}  "
            f"sent {t.sent} (new {t.inserted}, updated {t.updated}, rejected {t.rejected}, "
            f"late {t.late}) in {t.batches} batches"
        )


def _first_after(samples: Sequence[Sample], reached_ms: int) -> int:
    """Index of the first sample not yet available at ``reached_ms`` (samples are sorted)."""
    lo, hi = 0, len(samples)
    while lo < hi:
        mid = (lo + hi) // 2
        if samples[mid].end_ms <= reached_ms:
            lo = mid + 1
        else:
            hi = mid
    return lo


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    """What ``vitalcast simulate`` runs for every user."""

    seed: int = 1
    past_sessions: int = 2
    live: bool = True
    speed: float = 1.0
    duration_min: int = 45
    elapsed_min: int = 10
    padding_min: int = 60
    sync_s: float = 60.0
    history_sync_min: int = 10
    hr_interval_s: float = 5.0
    dropouts: int = 0
    dropout_min: int = 12
    outages: int = 0
    outage_min: int = 15
    end_on_exit: bool = True


def make_plan(
    key: str, start_ms: int, cfg: SimulationConfig, rng: random.Random, *, notes: str | None
) -> SessionPlan:
    """A plan of ``cfg``'s shape starting at ``start_ms``, with seeded dropouts and outages."""
    duration_ms = cfg.duration_min * MINUTE_MS
    session = Interval(start_ms, start_ms + duration_ms)
    return SessionPlan(
        key=key,
        start_ms=start_ms,
        duration_ms=duration_ms,
        pre_ms=cfg.padding_min * MINUTE_MS,
        post_ms=cfg.padding_min * MINUTE_MS,
        dropouts=place_intervals(rng, session, cfg.dropouts, cfg.dropout_min * MINUTE_MS),
        outages=place_intervals(rng, session, cfg.outages, cfg.outage_min * MINUTE_MS),
        notes=notes,
    )


async def run_user(
    http: httpx.AsyncClient,
    name: str,
    token: str,
    cfg: SimulationConfig,
    *,
    progress: Progress | None = None,
) -> Tally:
    """Past sessions first (replayed instantly, one per earlier day), then the live one."""
    api = Api(http, token)
    rng = random.Random(f"{cfg.seed}/{name}")
    profile = Profile.draw(rng)
    tally = Tally()

    async def play(start_ms: int, pace: Pace, sync_ms: int, *, end_on_exit: bool = True) -> None:
        plan = make_plan(
            f"sim-{cfg.seed}-{name}-{start_ms // 1000}", start_ms, cfg, rng, notes=None
        )
        runner = SessionRunner(
            api,
            plan,
            profile,
            pace,
            cfg.seed,
            sync_ms=sync_ms,
            hr_interval_ms=int(cfg.hr_interval_s * 1000),
            label=name,
            progress=progress,
            end_on_exit=end_on_exit,
        )
        tally.add(await runner.run())

    now_ms = clock.now_ms()
    for day in range(cfg.past_sessions, 0, -1):
        start_ms = now_ms - day * 86_400_000 - rng.randrange(60, 240) * MINUTE_MS
        start_ms -= start_ms % MINUTE_MS
        await play(start_ms, Pace(None), cfg.history_sync_min * MINUTE_MS)
    if cfg.live:
        start_ms, origin_ms = live_placement(
            clock.now_ms(),
            pre_ms=cfg.padding_min * MINUTE_MS,
            elapsed_ms=cfg.elapsed_min * MINUTE_MS,
            duration_ms=cfg.duration_min * MINUTE_MS,
            post_ms=cfg.padding_min * MINUTE_MS,
            speed=cfg.speed,
        )
        await play(
            start_ms,
            Pace(cfg.speed, origin_ms),
            int(cfg.sync_s * 1000),
            end_on_exit=cfg.end_on_exit,
        )
    return tally


async def simulate(
    base_url: str,
    users: Sequence[tuple[str, str]],
    cfg: SimulationConfig,
    *,
    progress: Progress | None = None,
) -> dict[str, Tally]:
    """Run every (name, token) user concurrently against ``base_url``; totals per user."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30.0) as http:
        tallies = await asyncio.gather(
            *(run_user(http, name, token, cfg, progress=progress) for name, token in users)
        )
    return dict(zip((name for name, _ in users), tallies, strict=True))


async def until_terminated(work: Coroutine[object, object, _T]) -> _T:
    """Await ``work``; SIGTERM cancels it the way Ctrl-C does, so live sessions end cleanly."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await work
