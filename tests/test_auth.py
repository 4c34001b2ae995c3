"""Bearer tokens: missing, expired, forged or wrongly signed tokens are a 401 on every route."""

from __future__ import annotations

import os
import stat
import time

import jwt
import pytest

from tests.conftest import TEST_SECRET
from tests.processes import run_cli, vitalcast_env
from vitalcast.auth import issue_token


async def test_expired_and_forged_tokens_are_rejected(client, users):
    """Expired → TOKEN_EXPIRED; another key or alg=none → TOKEN_INVALID; none → UNAUTHENTICATED."""
    user_id, _token = await users.create()
    now = int(time.time())
    cases = {
        "TOKEN_EXPIRED": issue_token(TEST_SECRET, user_id, now_s=now - 7200, ttl_s=3600),
        "TOKEN_INVALID": issue_token(
            "another-secret-of-enough-length-0123456789", user_id, now_s=now, ttl_s=3600
        ),
    }
    cases["TOKEN_INVALID_NONE"] = jwt.encode(
        {"sub": user_id, "exp": now + 60}, None, algorithm="none"
    )
    for expected, token in cases.items():
        response = await client.get(
            "/api/v1/sessions", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 401
        assert response.json()["code"] == expected.removesuffix("_NONE")
        assert response.headers["www-authenticate"] == "Bearer"
    response = await client.get("/api/v1/sessions")
    assert response.status_code == 401 and response.json()["code"] == "UNAUTHENTICATED"


@pytest.mark.parametrize("path", ["/api/v1/sessions", "/api/v1/catalog"])
async def test_routes_need_a_token_but_health_does_not(client, path):
    """/api/v1 routes require a token; /healthz and /readyz do not."""
    assert (await client.get(path)).status_code == 401
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).json()["checks"]["database"] == "ok"


async def test_catalog_lists_every_metric(client, users):
    """The catalog serves all seven metrics with units, ranges and LOINC codes."""
    body = (await client.get("/api/v1/catalog", headers=await users.headers())).json()
    codes = {m["code"]: m for m in body["metrics"]}
    assert set(codes) == {
        "heart_rate",
        "heart_rate_variability",
        "blood_oxygen",
        "respiratory_rate",
        "skin_temperature",
        "steps",
        "active_energy_burned",
    }
    assert codes["heart_rate"]["loinc"] == "8867-4" and codes["steps"]["kind"] == "cumulative"
    assert body["default_metrics"] == [
        "heart_rate",
        "heart_rate_variability",
        "blood_oxygen",
        "respiratory_rate",
    ]


def test_generated_secret_is_owner_only_and_reused(tmp_path):
    """Without VITALCAST_SECRET the first command writes a fresh signing key into the data dir,
    readable and writable by its owner only (0600, even under a permissive umask); the tokens it
    prints verify with that key, and a later command reuses it rather than making another."""
    env = vitalcast_env(tmp_path / "data")
    del env["VITALCAST_SECRET"]
    previous = os.umask(0o022)
    try:
        first = run_cli(["token", "create", "alice"], env)
        second = run_cli(["token", "create", "bob"], env)
    finally:
        os.umask(previous)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    secret = tmp_path / "data" / "secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    key = secret.read_text().strip()
    assert len(key) >= 32
    for done in (first, second):
        claims = jwt.decode(done.stdout.strip(), key, algorithms=["HS256"])
        assert claims["sub"] and claims["exp"] > time.time()


async def test_catalog_shows_recovery_tolerances_and_alert_rules(client, users):
    """Each scalar metric's recovery tolerance and its NEWS2-based alert rules (docs/design.md,
    "Metric catalog")."""
    body = (await client.get("/api/v1/catalog", headers=await users.headers())).json()
    codes = {m["code"]: m for m in body["metrics"]}
    assert {code: m["recovery_tolerance"] for code, m in codes.items()} == {
        "heart_rate": 5.0,
        "heart_rate_variability": 5.0,
        "blood_oxygen": 1.0,
        "respiratory_rate": 1.0,
        "skin_temperature": 0.2,
        "steps": None,
        "active_energy_burned": None,
    }
    rules = {
        code: [(r["rule"], r["direction"], r["threshold"], r["level"]) for r in m["alert_rules"]]
        for code, m in codes.items()
        if m["alert_rules"]
    }
    assert rules == {
        "heart_rate": [
            (">=111", "high", 111, "elevated"),
            (">=131", "high", 131, "critical"),
            ("<=40", "low", 40, "critical"),
        ],
        "blood_oxygen": [("<95", "low", 95, "low"), ("<90", "low", 90, "critical")],
        "respiratory_rate": [
            (">=21", "high", 21, "elevated"),
            (">=25", "high", 25, "critical"),
            ("<=8", "low", 8, "critical"),
        ],
    }
