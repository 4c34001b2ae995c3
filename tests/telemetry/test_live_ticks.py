"""LiveTicker on the real app and database, on a manual clock: which views it recomputes, when,
and that two tickers (two servers) of one view cost one compute per bucket."""

from __future__ import annotations

from collections.abc import Collection

from tests.telemetry.conftest import MINUTE, hr
from tests.telemetry.test_live_windows import ready_payload, to_next_bucket
from vitalcast.observability import Metrics
from vitalcast.telemetry.grid import next_boundary_ms
from vitalcast.telemetry.run.live_ticks import LOOK_GRID_MS, TICK_GRACE_MS, LiveTicker


class Subscribed:
    """The sessions a realtime server would report as subscribed (a plain set)."""

    def __init__(self, *session_ids: str) -> None:
        self.ids = set(session_ids)

    def subscribed_sessions(self) -> Collection[str]:
        return self.ids


def ticker(tc, subscribed: Subscribed) -> LiveTicker:
    """A ticker of its own (another server's, so to say) on the app's database and scheduler."""
    return LiveTicker(tc.db, tc.clock, subscribed, tc.coordinator, Metrics())


async def live_session(tc, headers) -> tuple[str, int]:
    start = tc.clock.now_ms() - 30 * MINUTE
    session_id = await tc.start_session(headers, start)
    await tc.post_samples(headers, [hr(f"h{i}", start + i * 30_000, 70.0) for i in range(60)])
    return session_id, start


async def test_ticks_recompute_each_cached_view_once_per_boundary(tc, users):
    """Nothing while the edge has not moved; at a boundary one live_tick compute per cached
    view (1m and 5m at a 5-minute boundary, the 1m view only at the others); a second ticker
    (another server) at the same boundary costs no compute."""
    headers = await users.headers()
    session_id, start = await live_session(tc, headers)
    await ready_payload(tc, headers, session_id, resolution="1m")
    await ready_payload(tc, headers, session_id, resolution="5m")
    one, two = ticker(tc, Subscribed(session_id)), ticker(tc, Subscribed(session_id))
    assert await one.tick() == 0

    to_next_bucket(tc, start, bucket_ms=5 * MINUTE)
    assert await one.tick() == 2
    await tc.settle()
    assert await two.tick() == 0  # the views are on the new edge already
    assert await one.tick() == 0  # and this ticker waits for the next boundary anyway
    assert (await tc.computes("live_tick"))["ready"] == 2

    to_next_bucket(tc, start, past_ms=TICK_GRACE_MS + 250)
    assert await one.tick() == 1
    # the second ticker asks too unless the first one's compute already saved the new edge
    # (it runs in the background: on a loaded machine either comes first); either way the
    # view is computed once
    assert await two.tick() in (0, 1)
    await tc.settle()
    assert (await tc.computes("live_tick"))["ready"] == 3
    assert tc.coordinator.stats.outcomes["skipped_fresh"] >= 1
    for resolution in ("1m", "5m"):
        assert (await tc.get(headers, session_id, resolution=resolution)).json()["state"] == "ready"


async def test_an_ingest_within_the_grace_after_a_boundary_makes_the_tick_needless(tc, users):
    """The ticker looks TICK_GRACE_MS after a boundary: a sample that arrived in between moved
    the view to the new edge, so nothing is ticked; at the next boundary, with no sample, the
    view is ticked once."""
    headers = await users.headers()
    session_id, start = await live_session(tc, headers)
    await ready_payload(tc, headers, session_id, resolution="1m")
    watching = ticker(tc, Subscribed(session_id))
    assert await watching.tick() == 0
    to_next_bucket(tc, start)
    assert await watching.tick() == 0  # not yet looked at: the grace runs
    await tc.post_samples(headers, [hr("in-grace", tc.clock.now_ms() - 1_000, 71.0)])
    await tc.settle()
    tc.clock.advance(TICK_GRACE_MS)
    assert await watching.tick() == 0
    await tc.settle()
    assert "ready" not in await tc.computes("live_tick")

    to_next_bucket(tc, start, past_ms=TICK_GRACE_MS + 250)
    assert await watching.tick() == 1
    await tc.settle()
    assert (await tc.computes("live_tick"))["ready"] == 1


async def test_no_ticks_without_subscribers_or_for_ended_sessions(tc, users):
    """Only subscribed sessions tick, and only while they are live."""
    headers = await users.headers()
    quiet_id, start = await live_session(tc, headers)
    await ready_payload(tc, headers, quiet_id)
    ended_id, _ = await live_session(tc, headers)
    await ready_payload(tc, headers, ended_id)
    await tc.end_session(headers, ended_id, tc.clock.now_ms())
    await tc.settle()
    watching = ticker(tc, Subscribed(ended_id))
    computes = await tc.computes()
    for _ in range(3):
        to_next_bucket(tc, start, past_ms=TICK_GRACE_MS + 250)
        assert await watching.tick() == 0
    await tc.settle()
    assert await tc.computes() == computes
    assert "ready" not in await tc.computes("live_tick")


async def test_sessions_due_within_one_grid_step_are_looked_at_together(tc, users):
    """Sessions started within one LOOK_GRID_MS step of the clock cross their boundaries in
    that step: one look (one read) takes them all, at the grid point before their graces end,
    still past their boundaries; a session started one step later waits for the next look."""
    headers = await users.headers()
    # boundaries 58 s, 58.999 s and 59 s after a whole second of now
    base = tc.clock.now_ms() // LOOK_GRID_MS * LOOK_GRID_MS - 30 * MINUTE - 2 * LOOK_GRID_MS
    starts = {"first": base, "same_step": base + LOOK_GRID_MS - 1, "next_step": base + LOOK_GRID_MS}
    ids = []
    for name, start in starts.items():
        session_id = await tc.start_session(headers, start)
        samples = [hr(f"{name}-{i}", start + i * 30_000, 70.0) for i in range(60)]
        await tc.post_samples(headers, samples)
        await ready_payload(tc, headers, session_id, resolution="1m")
        ids.append(session_id)
    watching = ticker(tc, Subscribed(*ids))
    assert await watching.tick() == 0

    boundary = next_boundary_ms(base, MINUTE, tc.clock.now_ms())
    tc.clock.advance(boundary + TICK_GRACE_MS - tc.clock.now_ms())
    assert await watching.tick() == 2  # "same_step" 999 ms before its grace ends, past its boundary
    assert await watching.tick() == 0
    tc.clock.advance(LOOK_GRID_MS - 1)
    assert await watching.tick() == 0  # "next_step" is due on the next grid point
    tc.clock.advance(1)
    assert await watching.tick() == 1
    await tc.settle()
    assert (await tc.computes("live_tick"))["ready"] == 3
