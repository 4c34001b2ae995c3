"""Telemetry fixtures: the real app on a ManualClock (so live windows and leases are exact) and a
small client that drives it through the public HTTP API (sessions, POST /samples, GET telemetry).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.telemetry.deltas import ApplyDelta, NodeDeltas
from vitalcast.app import create_app
from vitalcast.clock import ManualClock
from vitalcast.clock import iso_ms as iso
from vitalcast.db.engine import Database
from vitalcast.settings import Settings
from vitalcast.telemetry.compute.memo import RememberedView, ViewMemo
from vitalcast.telemetry.compute.results import StoredView
from vitalcast.telemetry.keys import TelemetryKey
from vitalcast.telemetry.run.coordinator import BoundedComputeCoordinator
from vitalcast.wiring import Seams, ServerParts

# 2026-03-02T08:00:00Z: a fixed "now" that every telemetry test starts from
T0_MS = 1_772_438_400_000
MINUTE = 60_000


class CountingMemo(ViewMemo):
    """The app's memo, counting the lookups it served (what the tests check it is used for)."""

    def __init__(self) -> None:
        super().__init__()
        self.hits = 0

    def get(self, key: TelemetryKey, stored: StoredView) -> RememberedView | None:
        entry = super().get(key, stored)
        if entry is not None:
            self.hits += 1
        return entry

    def copy(self) -> CountingMemo:
        """Another memo holding the same entries (a compute from it leaves this one as it is)."""
        other = CountingMemo()
        other._entries = self._entries.copy()
        return other


@pytest.fixture(scope="module")
def apply_delta() -> Iterator[ApplyDelta]:
    """The dashboard's ``deltas.js`` applying a delta to a payload (node; one process per test
    module, however many examples call it)."""
    deltas = NodeDeltas()
    try:
        yield deltas.apply
    finally:
        deltas.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0_MS)


@asynccontextmanager
async def serving(settings: Settings, seams: Seams) -> AsyncIterator[Any]:
    """The real app with ``seams``, lifespan running."""
    application = create_app(settings, seams)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
def view_memo() -> CountingMemo:
    """The memo of the app's computes, counting what it served."""
    return CountingMemo()


@pytest.fixture
async def tapp(
    settings: Settings, clock: ManualClock, view_memo: CountingMemo
) -> AsyncIterator[Any]:
    """The real app on the manual clock, lifespan running."""
    async with serving(settings, Seams(clock=clock, view_memo=view_memo)) as application:
        yield application


class TelemetryClient:
    """Drives one app through its HTTP API the way a wearable app and a dashboard would."""

    def __init__(self, app: Any, http: httpx.AsyncClient, clock: ManualClock) -> None:
        self.app = app
        self.http = http
        self.clock = clock
        self.parts: ServerParts = app.state.parts
        self.db: Database = self.parts.db

    @property
    def coordinator(self) -> BoundedComputeCoordinator:
        return self.parts.coordinator

    async def settle(self) -> None:
        """Wait until every scheduled compute has run."""
        await self.coordinator.wait_idle()

    async def start_session(self, headers: dict[str, str], start_ms: int) -> str:
        response = await self.http.post(
            "/api/v1/sessions", json={"started_at": iso(start_ms)}, headers=headers
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    async def end_session(self, headers: dict[str, str], session_id: str, end_ms: int) -> None:
        response = await self.http.post(
            f"/api/v1/sessions/{session_id}/end", json={"ended_at": iso(end_ms)}, headers=headers
        )
        assert response.status_code == 200, response.text

    async def post_samples(
        self,
        headers: dict[str, str],
        samples: Iterable[dict[str, Any]] = (),
        deleted: Sequence[tuple[str, str]] = (),
    ) -> dict[str, Any]:
        body = {
            "samples": [
                {**s, "start": iso(s["start"])} if isinstance(s["start"], int) else s
                for s in samples
            ],
            "deleted": [{"source": src, "record_id": rid} for src, rid in deleted],
        }
        response = await self.http.post("/api/v1/samples", json=body, headers=headers)
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def get(self, headers: dict[str, str], session_id: str, **params: Any) -> httpx.Response:
        return await self.http.get(
            f"/api/v1/sessions/{session_id}/telemetry", params=params, headers=headers
        )

    async def computes(self, reason: str | None = None) -> dict[str, float]:
        """vitalcast_computes_total by outcome (summed over reasons, or of ``reason`` only),
        read from /metrics."""
        text = (await self.http.get("/metrics")).text
        counts: dict[str, float] = {}
        for line in text.splitlines():
            if not line.startswith("vitalcast_computes_total{"):
                continue
            if reason is not None and f'reason="{reason}"' not in line:
                continue
            label = line.split('outcome="', 1)[1].split('"', 1)[0]
            counts[label] = counts.get(label, 0.0) + float(line.rsplit(" ", 1)[1])
        return counts

    async def exec(self, sql: str, **params: Any) -> None:
        async with self.db.write() as conn:
            await conn.execute(sa.text(sql), params)


@asynccontextmanager
async def client_of(app: Any, clock: ManualClock) -> AsyncIterator[TelemetryClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield TelemetryClient(app, http, clock)


@pytest.fixture
async def tc(tapp: Any, clock: ManualClock) -> AsyncIterator[TelemetryClient]:
    async with client_of(tapp, clock) as client:
        yield client


@asynccontextmanager
async def telemetry_client(
    settings: Settings, clock: ManualClock, seams: Seams
) -> AsyncIterator[TelemetryClient]:
    """A ``TelemetryClient`` on an app with other seams than the ``tc`` fixture's."""
    async with serving(settings, seams) as app, client_of(app, clock) as client:
        yield client


def hr(record_id: str, start_ms: int, value: float, *, source: str = "polar") -> dict[str, Any]:
    """A heart-rate sample for POST /samples."""
    return {
        "source": source,
        "record_id": record_id,
        "metric": "heart_rate",
        "value": value,
        "start": start_ms,
    }
