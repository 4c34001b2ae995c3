"""Structured logging and the Prometheus metrics, each defined once.

Logs never carry sample values, tokens or request bodies: callers log ids and counts only, and a
processor drops any event key named like a secret or a body as a second line of defence.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

from vitalcast.clock import next_tick

_FORBIDDEN_KEYS = frozenset(
    {"token", "authorization", "auth", "secret", "body", "value", "values", "samples", "payload"}
)


def _drop_sensitive(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    for key in _FORBIDDEN_KEYS & event.keys():
        event[key] = "[redacted]"
    return event


class _RoutineConnections(logging.Filter):
    """Uvicorn logs every WebSocket handshake and its opening and closing at INFO on
    ``uvicorn.error``, the logger of its start-up and its errors: these lines are routine, one
    per connection, so they count as DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        routine = (
            record.name == "uvicorn.error"
            and isinstance(record.msg, str)
            and (record.msg.startswith('%s - "WebSocket ') or record.msg.startswith("connection "))
        )
        if not routine or record.levelno >= logging.WARNING:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]  # TextIO stream
    """Writes each record to ``sys.stderr`` as it is then, not as it was when logging was
    configured: a process that swaps it (pytest captures it per test) would otherwise leave the
    handler writing to a closed stream, an error on every later line of a thread that outlives
    the swap."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        """``sys.stderr`` is read at each record; what the base class sets is not kept."""


def configure_logging(level: str = "info", log_format: str = "auto") -> None:
    """Every log line (ours, uvicorn's, Alembic's) on stderr through one renderer: for a person
    at a terminal (structlog's console renderer: time, level, event, fields) when stderr is a
    terminal, JSON lines otherwise or when ``log_format`` is ``json`` (for log shippers);
    ``console`` forces the former. Idempotent, so tests and the CLI may both call it."""
    stream = sys.stderr
    console = log_format == "console" or (log_format == "auto" and stream.isatty())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="%H:%M:%S" if console else "iso", utc=not console),
        _drop_sensitive,
    ]
    # The console renderer draws exceptions itself; JSON needs them as a string field.
    rendering: list[Processor] = (
        [structlog.dev.ConsoleRenderer()]
        if console
        else [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    )
    handler = _StderrHandler()
    handler.addFilter(_RoutineConnections())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            # records of other libraries' loggers get the same fields and redaction
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendering],
        )
    )
    logging.basicConfig(handlers=[handler], level=level.upper(), force=True)
    # These print SQL parameters, payloads or handshakes (with tokens) at DEBUG/INFO: keep them
    # at WARNING whatever our own level is, because their lines would carry health values.
    for leaky in (
        "aiosqlite",
        "sqlalchemy.engine",
        "asyncpg",
        "uvicorn.access",
        "engineio.server",
        "engineio.client",
        "socketio.server",
        "socketio.client",
        "httpx",
        "httpcore",
        "bullmq",
    ):
        logging.getLogger(leaky).setLevel(logging.WARNING)
    # Alembic names each of its plugins at INFO on every migration: noise, not news.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )


def debug_enabled() -> bool:
    """Whether debug lines are written. ``configure_logging`` sets the root logger's level and
    structlog's filter to one level; asking the former is a cached lookup, where calling a
    module's structlog logger builds a bound logger first (they are not cached, so that a new
    configuration reaches them): a line written on every request asks here first."""
    return logging.getLogger().isEnabledFor(logging.DEBUG)


def get_logger(name: str) -> FilteringBoundLogger:
    """The logger of module ``name``: ``configure_logging`` makes every logger a filtering bound
    logger, so this is its type (structlog types ``get_logger`` loosely)."""
    logger: FilteringBoundLogger = structlog.get_logger(name)
    return logger


#: buckets of the pause histograms: a live update's budget is 250 ms from ingest to watcher
PAUSE_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: how often the loop-lag watch asks for a timer (a stall longer than this is always seen)
LAG_PROBE_S = 0.2


class Metrics:
    """Every Prometheus series vitalcast exports, on a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.computes = Counter(
            "vitalcast_computes",
            "Computes that ran, by outcome and by the reason they were scheduled for.",
            ["outcome", "reason"],
            registry=r,
        )
        self.compute_paths = Counter(
            "vitalcast_compute_paths",
            "Saved computes by how they got their rows: incremental, or full and why.",
            ["path"],
            registry=r,
        )
        self.compute_seconds = Histogram(
            "vitalcast_compute_seconds",
            "Duration of one telemetry compute, by the reason it was scheduled for.",
            ["reason"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.compute_stage_seconds = Histogram(
            "vitalcast_compute_stage_seconds",
            "Where a batch of computes' time went: the claim (lease and read of the views in "
            "one statement; on PostgreSQL with their change logs and their live tails' GROUP "
            "BY) and the change-log read (read), the GROUP BY of the ranges the claim did not "
            "read and the merges (aggregate), assembling and packing the payloads (assemble), "
            "the one save, and the push to the sessions' rooms.",
            ["stage"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
            registry=r,
        )
        self.compute_batch_views = Histogram(
            "vitalcast_compute_batch_views",
            "Views computed together in one batch (one claim, one GROUP BY, one save).",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.live_ticks = Counter(
            "vitalcast_live_ticks",
            "Looks at a subscribed live view at a bucket boundary: scheduled (a live_tick "
            "recompute asked for) or current (already on the current live edge).",
            ["outcome"],
            registry=r,
        )
        self.freshness_lag_seconds = Histogram(
            "vitalcast_freshness_lag_seconds",
            "First change after the cached watermark until the new payload was saved.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.coordinator_inflight = Gauge(
            "vitalcast_coordinator_inflight", "Computes running in this process.", registry=r
        )
        self.coordinator_pending = Gauge(
            "vitalcast_coordinator_pending", "Computes waiting in this process.", registry=r
        )
        self.coordinator_shed = Counter(
            "vitalcast_coordinator_shed", "Computes refused because the bound was full.", registry=r
        )
        self.coordinator_retries = Counter(
            "vitalcast_coordinator_retries",
            "Failed or lease-blocked computes submitted again once their backoff or the "
            "blocking lease ran out.",
            registry=r,
        )
        self.live_update_routes = Counter(
            "vitalcast_live_update_routes",
            "Live updates of cached views after this server's own ingests, by where their "
            "compute went: inline (this process), queued (to the workers: the local bound was "
            "full or the server drains), handed_off (taken here, then queued: it failed, found "
            "the view's lease held elsewhere, or the server stopped before it ran).",
            ["route"],
            registry=r,
        )
        self.telemetry_responses = Counter(
            "vitalcast_telemetry_responses", "Telemetry answers by state.", ["state"], registry=r
        )
        self.ingest_samples = Counter(
            "vitalcast_ingest_samples", "Samples by ingest outcome.", ["outcome"], registry=r
        )
        self.queue_jobs = Gauge(
            "vitalcast_queue_jobs", "BullMQ jobs by state.", ["state"], registry=r
        )
        self.degraded = Gauge(
            "vitalcast_degraded",
            "1 while Redis is configured but unreachable (computes run in-process).",
            registry=r,
        )
        self.socket_clients = Gauge(
            "vitalcast_socketio_clients", "Connected Socket.IO clients on this node.", registry=r
        )
        self.rate_limited = Counter(
            "vitalcast_rate_limited", "Requests refused with 429, by scope.", ["scope"], registry=r
        )
        self.events_emitted = Counter(
            "vitalcast_events_emitted", "Realtime events emitted, by type.", ["type"], registry=r
        )
        self.alerts_emitted = Counter(
            "vitalcast_alerts_emitted",
            "Alert episodes announced (once per episode and rule across the cluster), by level.",
            ["level"],
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "vitalcast_webhook_deliveries",
            "Webhook delivery attempts, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.webhook_attempt_seconds = Histogram(
            "vitalcast_webhook_attempt_seconds",
            "Duration of one webhook attempt (resolve, connect, send, status line).",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20),
            registry=r,
        )
        self.webhook_delivery_latency_seconds = Histogram(
            "vitalcast_webhook_delivery_latency_seconds",
            "From a webhook message's creation to its delivery (retries included).",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 60, 300, 1800, 3600, 21600, 86400),
            registry=r,
        )
        self.gc_pause_seconds = Histogram(
            "vitalcast_gc_pause_seconds",
            "Pauses of this process's garbage collector, by generation (the event loop waits).",
            ["generation"],
            buckets=PAUSE_BUCKETS_S,
            registry=r,
        )
        self.sqlite_unit_seconds = Histogram(
            "vitalcast_sqlite_unit_seconds",
            "SQLite units of work (embedded): how long each waited for a database thread and "
            "the write lock (phase=wait) and ran (phase=run), writes and reads apart.",
            ["kind", "phase"],
            buckets=PAUSE_BUCKETS_S,
            registry=r,
        )
        self.sqlite_units_on_loop = Counter(
            "vitalcast_sqlite_units_on_loop",
            "SQLite units of work (embedded) run on the event loop's thread: short writes, "
            "unless another process held the file's write lock, and short reads (a token's "
            "user), unless SQLite answered busy; the others ran on a database thread.",
            ["kind"],
            registry=r,
        )
        self.event_loop_lag_seconds = Histogram(
            "vitalcast_event_loop_lag_seconds",
            "How late the event loop ran a timer due now (a long synchronous section, a GC pause "
            "or a starved CPU).",
            buckets=PAUSE_BUCKETS_S,
            registry=r,
        )


def sqlite_unit_observer(metrics: Metrics) -> Callable[[bool, float, float, bool], None]:
    """What ``Database.unit_observer`` calls: each unit's wait and run into
    ``vitalcast_sqlite_unit_seconds``, and the units run on the loop's thread counted."""
    series = {
        (write, phase): metrics.sqlite_unit_seconds.labels("write" if write else "read", phase)
        for write in (True, False)
        for phase in ("wait", "run")
    }
    on_loop = {
        write: metrics.sqlite_units_on_loop.labels("write" if write else "read")
        for write in (True, False)
    }

    def observe(write: bool, waited_s: float, ran_s: float, looped: bool) -> None:
        series[(write, "wait")].observe(max(0.0, waited_s))
        series[(write, "run")].observe(max(0.0, ran_s))
        if looped:
            on_loop[write].inc()

    return observe


class PauseWatch:
    """Measures what stops a process's event loop: every pause of the garbage collector (by
    generation) and how late the loop runs a timer.

    Under many live sessions the latency of an update is set less by its CPU than by what
    holds the loop: with 5,000 sockets a young collection was seen taking 80-160 ms (the
    sockets' waiting state is renewed at every event and collected young), and an operator
    (or ``bench/capacity``) needs to tell such pauses from an overloaded CPU or a slow
    statement. A GC callback costs two clock reads per collection; the lag watch one timer
    every ``LAG_PROBE_S``.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._gc_started = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        """Hook the collector and start the lag watch on the running loop (idempotent)."""
        if self._timer is not None:
            return
        gc.callbacks.append(self._on_gc)
        self._arm(asyncio.get_running_loop())

    async def stop(self) -> None:
        """Unhook the collector and stop the lag watch."""
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        pause = time.perf_counter() - self._gc_started
        self._metrics.gc_pause_seconds.labels(str(info["generation"])).observe(pause)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        # a bare timer callback, not a task sleeping: an idle server pays a timer per probe;
        # on the loop clock's grid (clock.next_tick), where the server's other periodic tasks
        # wake too, so that their wake-ups are one
        self._due = next_tick(loop, LAG_PROBE_S)
        self._timer = loop.call_at(self._due, self._probe, loop)

    def _probe(self, loop: asyncio.AbstractEventLoop) -> None:
        self._metrics.event_loop_lag_seconds.observe(max(0.0, loop.time() - self._due))
        self._arm(loop)


#: a paced collector's middle generation is collected at every this many young collections
PACED_MIDDLE_EVERY = 3
#: and the whole heap at every this many middle ones (every minute at 100 ms)
PACED_FULL_EVERY = 200


class GcPacer:
    """Collects the young generation on a timer, every ``interval_ms``, rather than when
    CPython's allocation count asks (opt-in: ``Settings.gc_young_interval_ms``; 0 = off).

    CPython counts a young collection due after ``threshold`` more allocations than
    deallocations, and every deallocation counts, old objects' too. A server holding 5,000
    sockets renews each socket's waiting state (tasks, futures, timer handles, coroutines) at
    every event it sends and frees the previous one, so the count hardly rises while the young
    generation fills: at 1,000 live sessions it held 220,000-255,000 objects when a collection
    came, one every few seconds, each 60-220 ms of CPU with the event loop stopped (the serve
    command's threshold is 20,000). On a timer the young generation holds one interval's
    survivors: at 100 ms the longest pause measured 30 ms of CPU, none over 100 ms. The price:
    the sockets' state is traversed as it ages instead of mostly dying between two rare
    collections, about four to five times the collector's CPU (1.6 s against 0.3 s in a 20 s
    step at 1,000 sessions), so it can only pay where CPU is spare and pauses cost the tail. On
    a machine short of CPU it lost: at a load of 4 on 2 cores, p99 7.9 and 7.1 s paced against
    5.8 s and 0.7 s unpaced (``bench/capacity --server-env``), hence off by default.

    The middle generation goes every ``PACED_MIDDLE_EVERY`` young collections and the whole
    heap every ``PACED_FULL_EVERY`` middle ones, since a collection asked for here resets the
    counts CPython would otherwise trigger them by. CPython's own trigger stays on for a burst
    that allocates a threshold's worth within one interval.
    """

    def __init__(self, interval_ms: int) -> None:
        self.interval_s = interval_ms / 1000
        self._timer: asyncio.TimerHandle | None = None
        self._ticks = 0

    def start(self) -> None:
        """Start collecting on the running loop's timer (idempotent; nothing when off)."""
        if self.interval_s <= 0 or self._timer is not None:
            return
        self._arm(asyncio.get_running_loop())

    async def stop(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def tick(self) -> int:
        """One paced collection; the generation it collected."""
        self._ticks += 1
        generation = 0
        if self._ticks % PACED_MIDDLE_EVERY == 0:
            generation = 2 if self._ticks % (PACED_MIDDLE_EVERY * PACED_FULL_EVERY) == 0 else 1
        gc.collect(generation)
        return generation

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = loop.call_later(self.interval_s, self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self.tick()
        self._arm(loop)
