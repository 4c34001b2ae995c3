"""Render bench/results/*.json as the README's benchmark table: one row per capability, with the
baseline measured in the same run and the ratio between them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

Row = tuple[str, str, str, str]


def _ms(stats: dict[str, Any]) -> str:
    return f"p50 {stats['p50_ms']:.2f} ms · p99 {stats['p99_ms']:.2f} ms"


def _ingest(r: dict[str, Any]) -> Iterator[Row]:
    for backend, floor in (("postgres", "COPY"), ("sqlite", "executemany")):
        b = r.get(backend)
        if not b:
            continue
        for key in sorted(k for k in b if k.startswith("http_")):
            clients = key.split("_")[1]
            yield (
                f"Ingest, {backend}, {clients} client(s), batches of {r['batch_size']:,}",
                f"{b[key]['samples_per_s']:,} samples/s",
                f"raw {floor}: {b['raw']['samples_per_s']:,} samples/s",
                f"{b[f'ratio_{key}_to_raw']:.0%} of raw"
                + (" (target ≥ 25%)" if backend == "postgres" else ""),
            )


def _telemetry(r: dict[str, Any]) -> Iterator[Row]:
    for backend in ("sqlite", "postgres"):
        b = r.get(backend)
        if not b:
            continue
        s4 = b["session_4h"]
        for mode, label in (
            ("in_process", "in-process (ASGI)"),
            ("http_loopback", "HTTP loopback"),
            ("service_answer_without_http", "service, below HTTP"),
        ):
            m = s4[mode]
            yield (
                f"Cached telemetry GET, {backend}, {label}, 4 h session",
                _ms(m["cached_get"]),
                f"compute on request: {_ms(m['compute_on_request'])}",
                f"{m['ratio_p50']:.0f}× at p50",
            )
        c = s4["compute_vs_bare_group_by"]
        yield (
            f"Compute, {backend}, {s4['samples_in_window']:,} samples in window",
            f"{c['compute_ms']:.1f} ms (with lease + save {c['leased_compute_ms']:.1f} ms)",
            f"bare GROUP BY: {c['bare_group_by_ms']:.1f} ms",
            f"{c['compute_over_bare']:.2f}× the floor",
        )
        s24 = b["session_24h"]
        yield (
            f"Compute, {backend}, 24 h session, {s24['samples_in_window']:,} samples",
            f"{s24['compute_ms']:.0f} ms",
            f"fetch rows + pandas: {s24['fetch_and_pandas_ms']:.0f} ms",
            f"{s24['pandas_over_compute']:.1f}× faster",
        )


def _queue(r: dict[str, Any]) -> Iterator[Row]:
    live = r["live_freshness_commit_to_ready"]
    yield (
        f"Ingest commit → cache ready, live session ({live['batches']} batches, PostgreSQL)",
        f"queue + worker: {_ms(live['queue_and_worker'])}",
        f"in-process coordinator: {_ms(live['in_process_coordinator'])}",
        f"+{live['queue_overhead_p50_ms']:.1f} ms at p50",
    )
    fill = r["backfill"]
    base = fill["in_process_coordinator"]["sessions_per_s_median"]
    for n in (1, 2, 4):
        q = fill.get(f"queue_{n}_workers")
        if q:
            yield (
                f"Backfill, {q['sessions']} sessions, {n} worker(s)",
                f"{q['sessions_per_s_median']:.0f} sessions/s",
                f"in-process: {base:.0f} sessions/s",
                f"{q['sessions_per_s_median'] / base:.2f}×",
            )


def _realtime(r: dict[str, Any]) -> Iterator[Row]:
    for mode, label, target in (
        ("embedded", "embedded", 250),
        ("scaled_out", "two servers + worker + Redis", 500),
    ):
        m = r[mode]
        yield (
            f"Ingest → `session.updated` at the client, {label}",
            _ms(m["ingest_to_client"]),
            f"ingest HTTP round trip: {_ms(m['baseline_ingest_http_round_trip'])}",
            f"p99 target < {target} ms; missed {m['missed']}",
        )
    f = r["fan_out"]
    yield (
        f"Fan-out, {f['clients']:,} clients over {f['sessions']} sessions",
        f"spread in a room: {_ms(f['delivery_spread_within_room'])}",
        f"{f['received']:,}/{f['expected_deliveries']:,} deliveries",
        f"server RSS {f['server_rss_mb']['clients_connected']} MB "
        f"({f['server_rss_mb']['per_client_kb']} KB/client)",
    )


def _soak(r: dict[str, Any]) -> Iterator[Row]:
    yield (
        f"Soak, {r['minutes']:g} min, {r['live_sessions']} live sessions at 1 Hz, "
        f"{r['subscribed_clients']} clients ({r['deployment']})",
        f"ingest → client {_ms(r['ingest_to_client'])}; {r['error_count']} errors",
        f"first minute p99 {r['baseline_first_minute']['p99_ms']:.0f} ms",
        f"last/first p99 {r['p99_last_vs_first']:.2f}; RSS +{r['rss_mb']['growth_pct']}%",
    )
    computes = r.get("computes_by_reason", {})
    tick, ingest = computes.get("live_tick"), computes.get("live_update")
    if tick and ingest:
        total = sum(c["compute_seconds_per_minute"] for c in computes.values())
        yield (
            f"Live ticks during the soak ({r['live_sessions']} subscribed live sessions)",
            f"`live_tick` computes: {tick['per_minute']:g}/min, mean {tick['mean_ms']:.1f} ms",
            f"ingest-driven `live_update`: {ingest['per_minute']:g}/min, "
            f"mean {ingest['mean_ms']:.1f} ms",
            f"ticks = {tick['compute_seconds_per_minute'] / total:.1%} of compute time",
        )


RENDERERS: dict[str, Callable[[dict[str, Any]], Iterator[Row]]] = {
    "ingest": _ingest,
    "telemetry": _telemetry,
    "queue": _queue,
    "realtime": _realtime,
    "soak": _soak,
}


def bench_table(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| capability | measured | baseline (same run) | ratio / target |",
        "|---|---|---|---|",
    ]
    for name, render in RENDERERS.items():
        if name in results:
            lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in render(results[name])]
    return "\n".join(lines)
