"""Tokens of an OpenID Connect issuer (the test issuer of ``issuer.py``, a real HTTP server)
against the real app on each database: every algorithm accepted, every forgery and misfit
refused with 401 (never a 5xx), unknown ``kid``s costing at most one JWKS fetch per interval,
key rotation, an issuer that is down, and a new subject created once under concurrency."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization

from tests.conftest import Users
from tests.identity.issuer import ALGORITHMS, AUDIENCE, LocalIssuer, serve_issuer
from tests.processes import serve_subprocesses, vitalcast_env
from tests.services import service_missing
from vitalcast.app import create_app
from vitalcast.db.engine import Database, create_engine
from vitalcast.db.tables import users as users_table
from vitalcast.oidc import OidcVerifier, check_url
from vitalcast.settings import Settings


@pytest.fixture
def issuer() -> Iterator[LocalIssuer]:
    with serve_issuer() as running:
        yield running


async def _client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def _oidc(settings: Settings, issuer: LocalIssuer, **extra: Any) -> Settings:
    return settings.model_copy(
        update={"oidc_issuer": issuer.url, "oidc_audience": AUDIENCE} | extra
    )


@pytest.fixture
async def oidc_client(settings: Settings, issuer: LocalIssuer) -> AsyncIterator[httpx.AsyncClient]:
    async for client in _client(_oidc(settings, issuer)):
        yield client


async def _get(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get("/api/v1/sessions", headers={"Authorization": f"Bearer {token}"})


def _code(response: httpx.Response) -> str | None:
    return response.json().get("code") if response.status_code >= 400 else None


def _hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    def part(value: dict[str, Any]) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=")

    signed = part(header) + b"." + part(claims)
    mac = hmac.new(secret, signed, hashlib.sha256).digest()
    return (signed + b"." + base64.urlsafe_b64encode(mac).rstrip(b"=")).decode()


def _kid(issuer: LocalIssuer, alg: str) -> str:
    return next(kid for kid, (a, _) in issuer.keys.items() if a == alg)


async def test_each_algorithm_is_accepted_for_one_user(
    oidc_client: httpx.AsyncClient, issuer: LocalIssuer
) -> None:
    """RS256, ES256 and EdDSA tokens of one ``sub`` are one user: a session created with one is
    listed with the others."""
    tokens = {alg: issuer.token(_kid(issuer, alg), sub="carol") for alg in ALGORITHMS}
    headers = {"Authorization": f"Bearer {tokens['RS256']}"}
    created = await oidc_client.post("/api/v1/sessions", json={}, headers=headers)
    assert created.status_code == 201
    for alg, token in tokens.items():
        listed = await _get(oidc_client, token)
        assert listed.status_code == 200, (alg, listed.text)
        assert [s["id"] for s in listed.json()["items"]] == [created.json()["id"]]


async def test_misfit_and_forged_tokens_are_refused(
    oidc_client: httpx.AsyncClient, issuer: LocalIssuer, users: Users
) -> None:
    """Each case answers 401 with its code; leeway is 60 s either side."""
    kid = _kid(issuer, "RS256")
    now = int(time.time())
    _alg, rsa_key = issuer.keys[kid]
    public_pem = (
        rsa_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    unsigned = jwt.encode(
        {"iss": issuer.url, "aud": AUDIENCE, "sub": "alice", "exp": now + 3600},
        None,
        algorithm="none",
        headers={"kid": kid},
    )
    # Algorithm confusion: HS256 "signed" with the issuer's public key as the secret (made by
    # hand: PyJWT itself refuses to sign with a PEM key as an HMAC secret).
    confused = _hs256(
        {"alg": "HS256", "typ": "JWT", "kid": kid},
        {"iss": issuer.url, "aud": AUDIENCE, "sub": "alice", "exp": now + 3600},
        public_pem.encode(),
    )
    cases = {
        "wrong iss": (issuer.token(kid, iss="https://elsewhere.example"), "TOKEN_INVALID"),
        "wrong aud": (issuer.token(kid, aud="another-api"), "TOKEN_INVALID"),
        "expired": (issuer.token(kid, exp=now - 120), "TOKEN_EXPIRED"),
        "not yet valid": (issuer.token(kid, nbf=now + 120), "TOKEN_INVALID"),
        "alg none": (unsigned, "TOKEN_INVALID"),
        "HS256 with the public key": (confused, "TOKEN_INVALID"),
        "unknown kid": (issuer.token(kid, headers={"kid": "made-up"}), "TOKEN_INVALID"),
        "no sub": (issuer.token(kid, sub=None), "TOKEN_INVALID"),
        "no exp": (issuer.token(kid, exp=None), "TOKEN_INVALID"),
        # longer than VITALCAST_OIDC_TOKEN_MAX_LIFETIME_S (a day): an erased subject's tombstone
        # would have to be kept longer than it is
        "valid a day and a second": (issuer.token(kid, exp=now + 86_401), "TOKEN_INVALID"),
        "no iat, valid two days": (
            issuer.token(kid, iat=None, exp=now + 2 * 86_400),
            "TOKEN_INVALID",
        ),
    }
    answers = {name: await _get(oidc_client, token) for name, (token, _code_) in cases.items()}
    assert {n: (a.status_code, _code(a)) for n, a in answers.items()} == {
        name: (401, code) for name, (_token, code) in cases.items()
    }
    within_leeway = {
        "expired 30 s ago": issuer.token(kid, exp=now - 30),
        "valid in 30 s": issuer.token(kid, nbf=now + 30),
        "valid a day": issuer.token(kid, exp=now + 86_400),
        "no iat, valid an hour": issuer.token(kid, iat=None),
    }
    for name, token in within_leeway.items():
        assert (await _get(oidc_client, token)).status_code == 200, name
    _user_id, local = await users.create()
    assert (await _get(oidc_client, local)).status_code == 200, "local tokens still work"


async def test_unknown_kids_cost_one_jwks_fetch_per_interval(
    oidc_client: httpx.AsyncClient, issuer: LocalIssuer
) -> None:
    """A flood of made-up ``kid``s (200, concurrently) is refused with 401 and fetches the JWKS
    no more than once per 30 s: here not at all after the start-up fetch."""
    kid = _kid(issuer, "ES256")
    assert (await _get(oidc_client, issuer.token(kid))).status_code == 200
    assert issuer.jwks_fetches == 1
    flood = [issuer.token(kid, headers={"kid": f"made-up-{uuid.uuid4().hex}"}) for _ in range(200)]
    answers = await asyncio.gather(*(_get(oidc_client, token) for token in flood))
    assert {(a.status_code, _code(a)) for a in answers} == {(401, "TOKEN_INVALID")}
    assert issuer.jwks_fetches == 1
    assert (await _get(oidc_client, issuer.token(kid, sub="bob"))).status_code == 200


async def test_key_rotation_mid_test(settings: Settings, issuer: LocalIssuer) -> None:
    """After a rotation the new key is fetched on its first token (once, however many arrive
    together) and the removed key stops working; refreshes stay one per interval (1 s here)."""
    async for client in _client(_oidc(settings, issuer, oidc_jwks_refresh_s=1.0)):
        old = _kid(issuer, "RS256")
        assert (await _get(client, issuer.token(old))).status_code == 200
        fetched = issuer.jwks_fetches
        new = issuer.rotate("EdDSA")
        # The last fetch is at least one interval old before the new key's first token.
        await asyncio.sleep(1.1)
        answers = await asyncio.gather(
            *(_get(client, issuer.token(new, sub=f"s{i}")) for i in range(20))
        )
        assert {a.status_code for a in answers} == {200}
        assert issuer.jwks_fetches == fetched + 1
        # The old key is gone from the JWKS: a token it signs (not one remembered) is refused.
        refused = await _get(client, issuer.token(old, sub="someone-new"))
        assert (refused.status_code, _code(refused)) == (401, "TOKEN_INVALID")


async def test_an_issuer_that_is_down_costs_no_5xx(
    oidc_client: httpx.AsyncClient, issuer: LocalIssuer
) -> None:
    """While discovery and JWKS answer 503, tokens of known keys keep working and tokens of
    unknown keys are 401, never a 5xx."""
    kid = _kid(issuer, "EdDSA")
    assert (await _get(oidc_client, issuer.token(kid))).status_code == 200
    issuer.down = True
    fresh = await _get(oidc_client, issuer.token(kid, sub="dana"))
    assert fresh.status_code == 200
    unknown = await asyncio.gather(
        *(
            _get(oidc_client, issuer.token(kid, headers={"kid": f"x{i}"}, sub="dana"))
            for i in range(10)
        )
    )
    assert {(a.status_code, _code(a)) for a in unknown} == {(401, "TOKEN_INVALID")}


async def test_an_issuer_down_from_the_start_is_401_not_5xx(
    settings: Settings, issuer: LocalIssuer
) -> None:
    issuer.down = True
    async for client in _client(_oidc(settings, issuer)):
        answer = await _get(client, issuer.token(_kid(issuer, "RS256")))
        assert (answer.status_code, _code(answer)) == (401, "TOKEN_INVALID")


async def test_a_new_subject_is_created_once_under_concurrency(
    oidc_client: httpx.AsyncClient, issuer: LocalIssuer, db: Database
) -> None:
    """Thirty concurrent first requests of one new ``sub`` (distinct tokens, so no cache helps)
    all succeed and make one user."""
    kid = _kid(issuer, "RS256")
    tokens = [issuer.token(kid, sub="erin", jti=str(i)) for i in range(30)]
    answers = await asyncio.gather(*(_get(oidc_client, token) for token in tokens))
    assert {a.status_code for a in answers} == {200}
    async with db.read() as conn:
        rows = (
            await conn.execute(
                sa.select(users_table.c.id, users_table.c.name).where(
                    users_table.c.oidc_subject == "erin"
                )
            )
        ).all()
    assert len(rows) == 1
    assert rows[0].name == "oidc:erin"


async def test_local_tokens_can_be_switched_off(
    settings: Settings, issuer: LocalIssuer, users: Users
) -> None:
    """``VITALCAST_LOCAL_TOKENS=false``: a local token is 401, the issuer's still work."""
    _user_id, local = await users.create()
    async for client in _client(_oidc(settings, issuer, local_tokens=False)):
        refused = await _get(client, local)
        assert (refused.status_code, _code(refused)) == (401, "TOKEN_INVALID")
        assert (await _get(client, issuer.token(_kid(issuer, "ES256")))).status_code == 200


def test_an_http_issuer_is_accepted_only_on_loopback() -> None:
    assert check_url("https://id.example.com/realms/x")
    for loopback in ("http://127.0.0.1:8080", "http://[::1]:9000/x", "http://localhost:1"):
        assert check_url(loopback) == loopback
    for refused in ("http://id.example.com", "http://10.0.0.1", "ftp://127.0.0.1", "nonsense"):
        with pytest.raises(ValueError):
            check_url(refused)
    with pytest.raises(ValueError):
        OidcVerifier("http://192.168.1.2/issuer", AUDIENCE)


@pytest.mark.slow
async def test_a_new_subject_is_created_once_across_two_servers(
    pg_database_url: str | None, issuer: LocalIssuer, tmp_path: Path
) -> None:
    """Two ``vitalcast serve`` processes on one PostgreSQL take forty first requests of a new
    ``sub`` at once (twenty each, distinct tokens): every one succeeds and one user exists."""
    if pg_database_url is None:
        service_missing("PostgreSQL")
    assert pg_database_url is not None
    env = vitalcast_env(
        tmp_path / "data",
        database_url=pg_database_url,
        oidc_issuer=issuer.url,
        oidc_audience=AUDIENCE,
    )
    subject = f"frank-{uuid.uuid4().hex[:8]}"
    kid = _kid(issuer, "ES256")
    with serve_subprocesses(env, [tmp_path / "a.log", tmp_path / "b.log"]) as servers:
        async with httpx.AsyncClient(timeout=30) as http:
            answers = await asyncio.gather(
                *(
                    http.get(
                        f"{server.url}/api/v1/sessions",
                        headers={
                            "Authorization": "Bearer "
                            + issuer.token(kid, sub=subject, jti=f"{n}-{i}")
                        },
                    )
                    for n, server in enumerate(servers)
                    for i in range(20)
                )
            )
    assert {a.status_code for a in answers} == {200}
    db = Database(create_engine(pg_database_url))
    try:
        async with db.read() as conn:
            found = await conn.scalar(
                sa.select(sa.func.count()).where(users_table.c.oidc_subject == subject)
            )
    finally:
        await db.dispose()
    assert found == 1
