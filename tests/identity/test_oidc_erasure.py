"""An erased OpenID Connect account stays erased: after the purge removed the user, the issuer's
tokens of the subject issued before the erasure are refused (a server that had remembered the
token, and one that never saw it), and a token issued afterwards opens a new, empty account. The
tombstone that makes this so holds nothing of the person in clear (test issuer of ``issuer.py``,
real served app, both databases)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa

from tests.identity.issuer import AUDIENCE, LocalIssuer, serve_issuer
from tests.lifecycle.traces import all_rows, rows_holding, rows_without
from tests.realtime.conftest import LiveServer, serve_in_thread
from vitalcast import credentials
from vitalcast.clock import ManualClock
from vitalcast.credentials import SubjectTombstones, erased_subject_kept_ms
from vitalcast.db.engine import Database
from vitalcast.db.tables import erased_subjects
from vitalcast.db.tables import users as users_table
from vitalcast.lifecycle.erasure import ErasureService
from vitalcast.oidc import LEEWAY_S
from vitalcast.settings import Settings
from vitalcast.testing import hr_sample as hr
from vitalcast.wiring import build_erasure

MINUTE = 60_000


@pytest.fixture
def issuer() -> Iterator[LocalIssuer]:
    with serve_issuer() as running:
        yield running


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _answer(response: httpx.Response) -> tuple[int, str | None]:
    """The status and, for a refusal, its problem code."""
    return response.status_code, response.json().get("code") if response.is_error else None


async def _purged(live: LiveServer) -> None:
    """Until the server's in-process purge has finished (no erasure pending)."""
    deadline = time.monotonic() + 60
    while live.run(live.parts.erasure.pending()):
        assert time.monotonic() < deadline, "the purge did not finish"
        await asyncio.sleep(0.1)


async def _user_of(db: Database, subject: str) -> list[str]:
    async with db.read() as conn:
        found = await conn.scalars(
            sa.select(users_table.c.id).where(users_table.c.oidc_subject == subject)
        )
        return list(found)


async def test_an_erased_oidc_account_does_not_come_back(
    settings: Settings, issuer: LocalIssuer, db: Database
) -> None:
    kid = next(iter(issuer.published))
    subject = "grace-erased"
    issued = int(time.time()) - 5
    token = issuer.token(kid, sub=subject, iat=issued)
    # issued before the erasure too, but never shown to a server before it
    unseen = issuer.token(kid, sub=subject, iat=issued, jti="unseen")
    oidc = settings.model_copy(update={"oidc_issuer": issuer.url, "oidc_audience": AUDIENCE})

    with serve_in_thread(oidc) as live:
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
            created = await http.post("/api/v1/sessions", json={}, headers=_auth(token))
            assert created.status_code == 201, created.text
            now = int(time.time() * 1000)
            samples = {"samples": [hr(f"g{i}", now - (10 - i) * MINUTE, 70.0) for i in range(5)]}
            assert (
                await http.post("/api/v1/samples", json=samples, headers=_auth(token))
            ).is_success
            [old_id] = await _user_of(db, subject)
            before = await all_rows(db)
            # the session's id marks its rows too: its change log is pruned after the compute,
            # which may not have run yet when the rows are read (seen under a busy loop per core)
            markers = [old_id, subject, created.json()["id"]]
            assert {"users", "sessions", "health_samples"} <= set(rows_holding(before, markers))
            others_before = rows_without(before, markers)

            # the token is remembered by this server (warm cache) when the account is erased
            erased = await http.delete("/api/v1/me", headers=_auth(token))
            assert erased.status_code == 202, erased.text
            erased_at_ms = int(time.time() * 1000)
            await _purged(live)

            after = await all_rows(db)
            assert rows_holding(after, [*markers, issuer.url]) == {}
            # what is left of the person: one tombstone row, a digest and a moment, no more
            assert {
                name: rows for name, rows in after.items() if rows != others_before.get(name)
            } == {"erased_subjects": after["erased_subjects"]}
            [(digest, at_ms)] = after["erased_subjects"]
            assert len(digest) == 64 and int(at_ms) <= erased_at_ms

            for old in (token, unseen):
                refused = await http.get("/api/v1/sessions", headers=_auth(old))
                assert _answer(refused) == (401, "TOKEN_REVOKED")
            assert await _user_of(db, subject) == []

    # another server, which never remembered the token (cold cache), refuses it as well
    with serve_in_thread(oidc) as cold:
        async with httpx.AsyncClient(base_url=cold.url, timeout=30) as http:
            refused = await http.get("/api/v1/sessions", headers=_auth(token))
            assert _answer(refused) == (401, "TOKEN_REVOKED")
            assert await _user_of(db, subject) == []

            # the person signs up again: a token issued after the erasure is a new, empty account
            fresh = issuer.token(kid, sub=subject, iat=int(time.time()) + 1)
            mine = await http.get("/api/v1/sessions", headers=_auth(fresh))
            assert mine.status_code == 200, mine.text
            assert mine.json()["items"] == []
            [new_id] = await _user_of(db, subject)
            assert new_id != old_id
            # and the old token does not reach the new account either
            refused = await http.get("/api/v1/sessions", headers=_auth(token))
            assert _answer(refused) == (401, "TOKEN_REVOKED")

    async with db.read() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(erased_subjects)) == 1


async def test_an_erasure_from_the_cli_buries_the_subject_and_a_second_one_moves_it_on(
    settings: Settings, db: Database
) -> None:
    """``vitalcast users erase``'s service (``build_erasure``) writes the same tombstone as a
    server, under the configured issuer and secret; erasing the account the subject opened
    again later moves the tombstone's moment on, never back."""
    issuer = "https://id.example.com/realms/care"
    oidc = settings.model_copy(update={"oidc_issuer": issuer, "oidc_audience": AUDIENCE})
    digest = SubjectTombstones(oidc.resolved_secret(), issuer).digest("henry")
    moments = []
    for at_ms in (1_000_000, 2_000_000):
        async with db.write() as conn:
            user_id = await credentials.create_oidc_user(conn, "henry", now_ms=at_ms)
        assert user_id is not None
        cli_db, erasure = build_erasure(oidc)
        try:
            await erasure.request(user_id)
            assert await erasure.run_pending() == 1
        finally:
            await cli_db.dispose()
        async with db.read() as conn:
            rows = (await conn.execute(sa.select(erased_subjects))).all()
        assert [row.subject_digest for row in rows] == [digest]
        moments.append(rows[0].erased_at_ms)
        assert await _user_of(db, "henry") == []
    assert moments[0] <= moments[1]
    later = moments[1] + 5
    for at_ms in (later, moments[0]):
        async with db.write() as conn:
            await credentials.record_erased_subject(conn, digest, at_ms=at_ms)
    async with db.read() as conn:
        assert (await conn.execute(sa.select(erased_subjects))).all() == [(digest, later)]

    # a subject erased longer ago than a token may live (the settings' default lifetime) is
    # forgotten by the CLI's next run; the recent tombstone stays
    old = SubjectTombstones(oidc.resolved_secret(), issuer).digest("ida")
    async with db.write() as conn:
        await credentials.record_erased_subject(conn, old, at_ms=1_000_000)
    cli_db, erasure = build_erasure(oidc)
    try:
        assert await erasure.run_pending() == 0
    finally:
        await cli_db.dispose()
    async with db.read() as conn:
        assert (await conn.execute(sa.select(erased_subjects))).all() == [(digest, later)]


async def _no_revoke(_user_id: str) -> None:
    return None


async def _tombstoned(db: Database) -> set[str]:
    async with db.read() as conn:
        return set(await conn.scalars(sa.select(erased_subjects.c.subject_digest)))


async def test_a_tombstone_is_pruned_once_no_token_issued_before_the_erasure_is_valid(
    settings: Settings, db: Database
) -> None:
    """A tombstone refuses tokens issued before the erasure; none is valid longer than the
    issuer's token lifetime plus the leeway on ``exp`` after it (``OidcVerifier`` refuses longer
    ones), so the next ``run_pending`` after that forgets the subject, and not a millisecond
    before. A service that does not know the lifetime never prunes."""
    tombstones = SubjectTombstones(settings.resolved_secret(), "https://id.example.com/care")
    kept_ms = erased_subject_kept_ms(3600, LEEWAY_S)
    assert kept_ms == (3600 + 60) * 1000
    clock = ManualClock(1_700_000_000_000)
    erasure = ErasureService(
        db,
        clock,
        revoke=_no_revoke,
        redis=None,
        tombstones=tombstones,
        tombstone_kept_ms=kept_ms,
    )
    unaware = ErasureService(db, clock, revoke=_no_revoke, redis=None, tombstones=tombstones)
    erased_at = {}
    for subject in ("ada", "bob"):
        async with db.write() as conn:
            user_id = await credentials.create_oidc_user(conn, subject, now_ms=clock.now_ms())
        assert user_id is not None
        erased_at[subject] = clock.now_ms()
        await erasure.request(user_id)
        assert await erasure.run_pending() == 1
        clock.advance(10 * MINUTE)
    ada, bob = tombstones.digest("ada"), tombstones.digest("bob")
    assert await _tombstoned(db) == {ada, bob}

    clock.advance(erased_at["ada"] + kept_ms - clock.now_ms())
    assert await erasure.run_pending() == 0
    assert await _tombstoned(db) == {ada, bob}, "a token of ada's may still be valid"
    clock.advance(1)
    assert await erasure.prune_tombstones() == 1
    assert await _tombstoned(db) == {bob}

    clock.advance(erased_at["bob"] + kept_ms + 1 - clock.now_ms())
    assert await unaware.run_pending() == 0
    assert await _tombstoned(db) == {bob}
    assert await erasure.run_pending() == 0
    assert await _tombstoned(db) == set()
