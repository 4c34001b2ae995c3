"""GET /sessions/{id}/export.csv and /fhir through the real app, on both databases: rows and
Observations equal the stored samples, buckets equal the payload, FHIR validates as R4(B),
owner only, rate limited, problem+json errors."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Any

import httpx
import orjson
import pytest
from fhir.resources.R4B.bundle import Bundle

from tests.conftest import TEST_SECRET
from vitalcast.app import create_app
from vitalcast.catalog import BY_CODE
from vitalcast.clock import epoch_ms, iso_ms, now_ms
from vitalcast.settings import Settings

MINUTE = 60_000


def sample(
    metric: str, record_id: str, start_ms: int, value: float, **extra: Any
) -> dict[str, Any]:
    return {
        "source": "healthkit",
        "record_id": record_id,
        "metric": metric,
        "value": value,
        "start": iso_ms(start_ms),
        **extra,
    }


class Scenario:
    """One ended session of 30 minutes an hour ago with samples of every metric around it."""

    def __init__(self, client: httpx.AsyncClient, headers: dict[str, str]) -> None:
        self.client = client
        self.headers = headers
        self.start_ms = (now_ms() // MINUTE - 120) * MINUTE
        self.end_ms = self.start_ms + 30 * MINUTE
        self.session_id = ""
        self.inside: list[dict[str, Any]] = []

    async def build(self) -> Scenario:
        response = await self.client.post(
            "/api/v1/sessions", json={"started_at": iso_ms(self.start_ms)}, headers=self.headers
        )
        self.session_id = response.json()["id"]
        samples = []
        for i in range(0, 40 * 60, 20):  # every 20 s from 5 min before to 5 min after
            t = self.start_ms - 5 * MINUTE + i * 1000
            samples.append(sample("heart_rate", f"hr-{i}", t, 60 + i % 37, device="Watch (6,2)"))
        for i in range(8):
            t = self.start_ms + i * 4 * MINUTE
            samples.append(sample("blood_oxygen", f"o2-{i}", t, 0.95 + i / 200, unit="fraction"))
            samples.append(sample("heart_rate_variability", f"hrv-{i}", t, 40.0 + i))
            steps = sample("steps", f"st-{i}", t, 100.0 + i)
            steps["end"] = iso_ms(t + MINUTE)
            samples.append(steps)
        outside = sample("heart_rate", "far-away", self.start_ms - 5 * 60 * MINUTE, 80)
        gone = sample("heart_rate", "deleted", self.start_ms + MINUTE + 500, 90)
        response = await self.client.post(
            "/api/v1/samples", json={"samples": [*samples, outside, gone]}, headers=self.headers
        )
        assert response.status_code == 200, response.text
        response = await self.client.post(
            "/api/v1/samples",
            json={"deleted": [{"source": "healthkit", "record_id": "deleted"}]},
            headers=self.headers,
        )
        assert response.json()["deleted"] == 1
        await self.client.post(
            f"/api/v1/sessions/{self.session_id}/end",
            json={"ended_at": iso_ms(self.end_ms)},
            headers=self.headers,
        )
        self.inside = samples
        return self

    def url(self, what: str) -> str:
        return f"/api/v1/sessions/{self.session_id}/{what}"


@pytest.fixture
async def scenario(client, users) -> Scenario:
    return await Scenario(client, await users.headers("alice")).build()


def canonical(s: dict[str, Any]) -> float:
    return float(BY_CODE[s["metric"]].to_canonical(s["value"], s.get("unit")))  # type: ignore[arg-type]


def ms_of(text: str) -> int:
    return epoch_ms(datetime.fromisoformat(text))


def start_of(s: dict[str, Any]) -> str:
    return iso_ms(ms_of(s["start"]))


async def test_samples_csv_has_one_row_per_sample_of_the_window(scenario):
    """Every sample of the window (none outside it, no deleted one), with ISO times, canonical
    values and units, ordered by metric then time."""
    response = await scenario.client.get(scenario.url("export.csv"), headers=scenario.headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == len(scenario.inside)
    by_id = {s["record_id"]: s for s in scenario.inside}
    for row in rows:
        s = by_id[row["record_id"]]
        assert float(row["value"]) == pytest.approx(canonical(s), rel=1e-12)
        assert row["metric"] == s["metric"]
        assert row["unit"] == BY_CODE[s["metric"]].unit
        assert row["start"] == start_of(s)
        assert int(row["start_ms"]) == ms_of(row["start"])
    assert [r["metric"] for r in rows] == sorted(r["metric"] for r in rows)
    steps = [r for r in rows if r["metric"] == "steps"]
    assert all(int(r["end_ms"]) - int(r["start_ms"]) == MINUTE for r in steps)
    assert {r["device"] for r in rows if r["metric"] == "heart_rate"} == {"Watch (6,2)"}


async def test_a_narrow_window_exports_fewer_samples(scenario):
    wide = await scenario.client.get(
        scenario.url("export.csv"), params={"window_minutes": 180}, headers=scenario.headers
    )
    narrow = await scenario.client.get(
        scenario.url("export.csv"), params={"window_minutes": 15}, headers=scenario.headers
    )
    assert len(wide.text.splitlines()) == len(scenario.inside) + 1
    assert len(narrow.text.splitlines()) == len(scenario.inside) + 1  # all within ±5 min
    far = await scenario.client.get(
        scenario.url("export.csv"),
        params={"window_minutes": 15, "kind": "samples"},
        headers=scenario.headers,
    )
    assert "far-away" not in far.text


async def test_buckets_csv_follows_the_telemetry_states(scenario, app):
    """Nothing cached: 202 with Retry-After, as the telemetry GET answers. Once computed: one
    row per bucket of the payload, with the payload's numbers."""
    url = scenario.url("export.csv")
    # 30 minutes: a view the session's end did not precompute
    params = {"kind": "buckets", "window_minutes": 30}
    first = await scenario.client.get(url, params=params, headers=scenario.headers)
    assert first.status_code == 202
    assert first.json() == {"state": "computing", "retry_after_seconds": 1, "telemetry": None}
    assert first.headers["Retry-After"] == "1"
    await app.state.parts.coordinator.wait_idle()
    telemetry = await scenario.client.get(
        scenario.url("telemetry"),
        params={"window_minutes": 30, "metrics": "all"},
        headers=scenario.headers,
    )
    payload = telemetry.json()["telemetry"]
    response = await scenario.client.get(url, params=params, headers=scenario.headers)
    assert response.status_code == 200
    assert response.headers["x-telemetry-state"] == "ready"
    rows = list(csv.DictReader(io.StringIO(response.text)))
    expected = sum(len(m["t"]) for m in payload["metrics"].values())
    assert len(rows) == expected
    for row in rows:
        series = payload["metrics"][row["metric"]]
        i = series["t"].index(int(row["bucket_start_ms"]))
        assert int(row["count"]) == series["count"][i]
        assert row["bucket_start"] == iso_ms(int(row["bucket_start_ms"]))
        if row["kind"] == "scalar":
            assert float(row["mean"]) == series["mean"][i]
            assert float(row["min"]) == series["min"][i]
            assert float(row["max"]) == series["max"][i]
        else:
            assert float(row["sum"]) == series["sum"][i]
    assert sum(int(r["count"]) for r in rows) == len(scenario.inside)


async def test_fhir_bundle_validates_and_equals_the_samples(scenario):
    """A collection Bundle that fhir.resources' R4B models accept (the package ships no R4
    models; R4B is R4 for these resources): the session as an Encounter, then one Observation
    per sample with LOINC, UCUM, value and time equal to the sample."""
    response = await scenario.client.get(scenario.url("fhir"), headers=scenario.headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/fhir+json"
    document = orjson.loads(response.content)
    bundle = Bundle.model_validate(document)
    assert bundle.type == "collection"
    entries = document["entry"]
    encounter = entries[0]["resource"]
    assert encounter["resourceType"] == "Encounter"
    assert encounter["status"] == "finished"
    assert encounter["period"] == {
        "start": iso_ms(scenario.start_ms),
        "end": iso_ms(scenario.end_ms),
    }
    observations = [e["resource"] for e in entries[1:]]
    assert len(observations) == len(scenario.inside)
    assert all(o["resourceType"] == "Observation" for o in observations)
    assert all(o["encounter"] == {"reference": entries[0]["fullUrl"]} for o in observations)
    assert len({e["fullUrl"] for e in entries}) == len(entries)
    expected = sorted((s["metric"], start_of(s), canonical(s)) for s in scenario.inside)
    code_to_metric = {m.loinc: m for m in BY_CODE.values()}
    got = []
    for o in observations:
        metric = code_to_metric[o["code"]["coding"][0]["code"]]
        assert o["code"]["coding"][0]["system"] == "http://loinc.org"
        quantity = o["valueQuantity"]
        assert quantity["system"] == "http://unitsofmeasure.org"
        assert quantity["code"] == metric.ucum
        category = o["category"][0]["coding"][0]["code"]
        assert category == ("activity" if metric.code == "steps" else "vital-signs")
        start = o.get("effectiveDateTime") or o["effectivePeriod"]["start"]
        if metric.code == "steps":
            assert o["effectivePeriod"]["end"] == iso_ms(ms_of(start) + MINUTE)
        got.append((metric.code, start, quantity["value"]))
    got.sort()
    assert [g[:2] for g in got] == [e[:2] for e in expected]
    for g, e in zip(got, expected, strict=True):
        assert g[2] == pytest.approx(e[2], rel=1e-12)
    ucum = {m.code: m.ucum for m in BY_CODE.values()}
    assert ucum["heart_rate"] == "/min" and ucum["steps"] == "{steps}"
    spo2 = next(o for o in observations if o["code"]["coding"][0]["code"] == "2708-6")
    assert [c["code"] for c in spo2["code"]["coding"]] == ["2708-6", "59408-5"]


async def test_a_live_session_exports_as_an_in_progress_encounter(client, users):
    headers = await users.headers("bob")
    start = now_ms() - 10 * MINUTE
    session = (
        await client.post("/api/v1/sessions", json={"started_at": iso_ms(start)}, headers=headers)
    ).json()
    await client.post(
        "/api/v1/samples",
        json={"samples": [sample("heart_rate", "a", start + MINUTE, 70)]},
        headers=headers,
    )
    response = await client.get(f"/api/v1/sessions/{session['id']}/fhir", headers=headers)
    bundle = Bundle.model_validate_json(response.content)
    encounter = bundle.entry[0].resource
    assert encounter.status == "in-progress"
    assert encounter.period.end is None
    assert len(bundle.entry) == 2


@pytest.mark.parametrize("what", ["export.csv", "export.csv?kind=buckets", "fhir"])
async def test_someone_elses_session_is_404(scenario, users, what):
    mallory = await users.headers("mallory")
    response = await scenario.client.get(scenario.url(what), headers=mallory)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "SESSION_NOT_FOUND"
    unknown = f"/api/v1/sessions/00000000-0000-4000-8000-000000000000/{what}"
    assert (await scenario.client.get(unknown, headers=scenario.headers)).status_code == 404
    assert (await scenario.client.get(scenario.url(what))).status_code == 401


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("export.csv?window_minutes=5", "WINDOW_OUT_OF_RANGE"),
        ("fhir?window_minutes=500", "WINDOW_OUT_OF_RANGE"),
        ("export.csv?kind=everything", "VALIDATION_ERROR"),
        ("export.csv?kind=buckets&resolution=2m", "VALIDATION_ERROR"),
    ],
)
async def test_bad_queries_are_problem_422(scenario, query, code):
    response = await scenario.client.get(scenario.url(query), headers=scenario.headers)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code


async def test_exports_spend_the_telemetry_read_budget(database_url, tmp_path, users):
    """Two reads a minute: the third export is 429 with Retry-After, like a telemetry GET."""
    settings = Settings(
        data_dir=tmp_path / "limited",
        database_url=database_url,
        secret=TEST_SECRET,
        rate_limit_telemetry="2/minute",
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            scenario = await Scenario(client, await users.headers("carol")).build()
            assert (
                await client.get(scenario.url("export.csv"), headers=scenario.headers)
            ).status_code == 200
            assert (
                await client.get(scenario.url("fhir"), headers=scenario.headers)
            ).status_code == 200
            refused = await client.get(scenario.url("export.csv"), headers=scenario.headers)
            assert refused.status_code == 429
            assert refused.json()["code"] == "RATE_LIMITED"
            assert int(refused.headers["Retry-After"]) >= 1
