"""After every save the listener hears about it (and cannot break the compute); /metrics shows
computes, responses by state and the coordinator."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.doubles import BrokenListener, RecordingListener
from tests.telemetry.conftest import MINUTE, hr, telemetry_client
from vitalcast.observability import (
    LAG_PROBE_S,
    PACED_FULL_EVERY,
    PACED_MIDDLE_EVERY,
    GcPacer,
)
from vitalcast.wiring import Seams


async def test_listener_hears_ready_and_no_data_saves_without_values(settings, clock, users):
    """Each save (ready or no_data) reaches the listener with ids, watermark, state and window
    bounds, and no health values."""
    recorder = RecordingListener()
    seams = Seams(clock=clock, telemetry_listener=recorder)
    async with telemetry_client(settings, clock, seams) as tc:
        await _live_and_empty_sessions(tc, users, recorder)


async def _live_and_empty_sessions(tc, users, recorder: RecordingListener) -> None:
    headers = await users.headers()
    now = tc.clock.now_ms()
    live_id = await tc.start_session(headers, now - 20 * MINUTE)
    await tc.post_samples(
        headers, [hr(f"a{i}", now - 20 * MINUTE + i * MINUTE, 81.0) for i in range(20)]
    )
    await tc.settle()
    empty_id = await tc.start_session(headers, now - 600 * MINUTE)
    await tc.end_session(headers, empty_id, now - 590 * MINUTE)
    await tc.settle()

    live = [e for e in recorder.events if e["session_id"] == live_id]
    assert live and live[0]["state"] == "ready" and live[0]["live"] is True
    assert live[0]["window_minutes"] == 60 and live[0]["resolution"] == "1m"
    assert live[0]["changed_from_ms"] == now - 80 * MINUTE and live[0]["changed_to_ms"] == now
    empty = [e for e in recorder.events if e["session_id"] == empty_id]
    assert {e["resolution"] for e in empty} == {"1m", "5m"}
    assert {e["state"] for e in empty} == {"no_data"} and not empty[0]["live"]
    for event in recorder.events:
        assert set(event) == {
            "session_id",
            "source_watermark",
            "state",
            "window_minutes",
            "resolution",
            "computed_at_ms",
            "live",
            "changed_from_ms",
            "changed_to_ms",
            "base_watermark",
        }


async def test_a_failing_listener_never_breaks_the_compute(settings, clock, users):
    """A listener that raises is logged; the payload is saved and served as ready."""
    seams = Seams(clock=clock, telemetry_listener=BrokenListener())
    async with telemetry_client(settings, clock, seams) as tc:
        headers = await users.headers()
        start = tc.clock.now_ms() - 10 * MINUTE
        session_id = await tc.start_session(headers, start)
        await tc.post_samples(headers, [hr("x", start + MINUTE, 70.0)])
        await tc.settle()
        assert tc.coordinator.stats.completed >= 1 and tc.coordinator.stats.failed == 0
        assert (await tc.get(headers, session_id)).json()["state"] == "ready"


async def test_metrics_expose_computes_responses_and_the_coordinator(tc, users):
    """/metrics carries computes by outcome, the compute histogram, responses by state and the
    coordinator gauges and shed counter."""
    headers = await users.headers()
    start = tc.clock.now_ms() - 10 * MINUTE
    session_id = await tc.start_session(headers, start)
    await tc.post_samples(headers, [hr("x", start + MINUTE, 70.0)])
    await tc.get(headers, session_id, window_minutes=20)
    await tc.settle()
    await tc.get(headers, session_id, window_minutes=20)
    text = (await tc.http.get("/metrics")).text
    for line in (
        'vitalcast_computes_total{outcome="ready",reason="cache_miss"} 1.0',
        "vitalcast_compute_seconds_count",
        'vitalcast_telemetry_responses_total{state="computing"} 1.0',
        'vitalcast_telemetry_responses_total{state="ready"} 1.0',
        "vitalcast_coordinator_inflight 0.0",
        "vitalcast_coordinator_pending 0.0",
        "vitalcast_coordinator_shed_total 0.0",
        "vitalcast_freshness_lag_seconds_bucket",
    ):
        assert line in text, line


def _histogram(text: str, name: str, **labels: str) -> dict[str, float]:
    """The ``_count`` and the ``le`` buckets of one histogram series in /metrics text."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith(name):
                continue
            rest = {k: v for k, v in sample.labels.items() if k != "le"}
            if rest != labels:
                continue
            if sample.name == f"{name}_count":
                out["count"] = sample.value
            elif sample.name == f"{name}_bucket":
                out[sample.labels["le"]] = sample.value
    return out


async def test_metrics_show_gc_pauses_and_an_event_loop_held(tc):
    """A full collection shows under generation 2, and a loop held half a second shows as a
    timer run late by more than 0.25 s (the lag watch's timer is due within 0.2 s of the hold's
    start, so it runs at least 0.3 s late)."""
    before = (await tc.http.get("/metrics")).text
    gc.collect()
    # the event loop held, as a long synchronous section holds it (what the test is about)
    time.sleep(0.5)  # noqa: ASYNC251
    await asyncio.sleep(LAG_PROBE_S)  # the overdue watch runs (and observes its lag) first
    after = (await tc.http.get("/metrics")).text
    full_before = _histogram(before, "vitalcast_gc_pause_seconds", generation="2")
    full_after = _histogram(after, "vitalcast_gc_pause_seconds", generation="2")
    assert full_after["count"] >= full_before.get("count", 0.0) + 1
    lag_before = _histogram(before, "vitalcast_event_loop_lag_seconds")
    lag_after = _histogram(after, "vitalcast_event_loop_lag_seconds")
    late = lambda h: h.get("count", 0.0) - h.get("0.25", 0.0)  # noqa: E731
    assert late(lag_after) >= late(lag_before) + 1


def test_a_paced_collector_takes_the_middle_and_the_whole_heap_in_turn():
    """``gc_young_interval_ms``: every tick collects the young generation, every
    ``PACED_MIDDLE_EVERY``-th the middle one and every ``PACED_FULL_EVERY``-th of those the
    whole heap, since paced collections reset the counts CPython would trigger them by."""
    collected: list[int] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collected.append(info["generation"])

    pacer = GcPacer(interval_ms=100)
    gc.callbacks.append(seen)
    try:
        ticks = [pacer.tick() for _ in range(PACED_MIDDLE_EVERY * PACED_FULL_EVERY)]
    finally:
        gc.callbacks.remove(seen)
    assert ticks.count(2) == 1 and ticks[-1] == 2
    assert ticks.count(1) == PACED_FULL_EVERY - 1
    assert ticks.count(0) == len(ticks) - PACED_FULL_EVERY
    assert ticks[:PACED_MIDDLE_EVERY] == [0] * (PACED_MIDDLE_EVERY - 1) + [1]
    # each tick was one collection of the generation it named (CPython's own trigger may add
    # collections of its own in between: the paced ones are there in order)
    it = iter(collected)
    assert all(any(g == generation for g in it) for generation in ticks)


async def test_a_server_with_a_paced_collector_shows_its_young_collections(settings, clock):
    """With ``gc_young_interval_ms`` set, the server's young collections keep coming on the
    loop's timer while it idles, and /metrics counts them under generation 0."""
    paced = settings.model_copy(update={"gc_young_interval_ms": 1})
    async with telemetry_client(paced, clock, Seams(clock=clock)) as tc:
        before = _histogram(
            (await tc.http.get("/metrics")).text, "vitalcast_gc_pause_seconds", generation="0"
        ).get("count", 0.0)
        for _ in range(200):
            await asyncio.sleep(0.005)
            after = _histogram(
                (await tc.http.get("/metrics")).text, "vitalcast_gc_pause_seconds", generation="0"
            ).get("count", 0.0)
            if after >= before + 3:
                break
        assert after >= before + 3


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_metrics_show_each_sqlite_unit_waiting_and_running(tc, users):
    """On SQLite every unit of work (an ingest, a compute's claim, read and save) is observed
    twice: how long it waited for a database thread and the write lock, and how long it ran."""
    headers = await users.headers()
    now = tc.clock.now_ms()
    session_id = await tc.start_session(headers, now - 20 * MINUTE)
    before = (await tc.http.get("/metrics")).text
    await tc.post_samples(headers, [hr("u1", now - MINUTE, 70.0)])
    await tc.settle()
    assert (await tc.get(headers, session_id)).status_code == 200
    after = (await tc.http.get("/metrics")).text
    for kind in ("write", "read"):
        for phase in ("wait", "run"):
            name = "vitalcast_sqlite_unit_seconds"
            was = _histogram(before, name, kind=kind, phase=phase).get("count", 0.0)
            now_count = _histogram(after, name, kind=kind, phase=phase).get("count", 0.0)
            assert now_count > was, (kind, phase)
