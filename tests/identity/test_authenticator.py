"""The authentication seam on both databases: a verified token is remembered (a repeated one
costs no statement), revocations drop what was remembered at once, local tokens issued before
``tokens_valid_after_ms`` are refused, share tokens carry their session and their own state."""

from __future__ import annotations

import hashlib
import itertools

import pytest

from tests.conftest import TEST_SECRET, Users
from tests.identity.issuer import AUDIENCE, serve_issuer
from tests.sql_statements import count_statements
from vitalcast import credentials
from vitalcast import shares as share_repository
from vitalcast.auth import Authenticator, PrincipalScope, issue_token, remembered_for_ms
from vitalcast.clock import ManualClock, now_ms
from vitalcast.db.engine import Database, create_engine
from vitalcast.errors import Unauthenticated
from vitalcast.oidc import OidcVerifier
from vitalcast.revocations import RevocationBus, RevocationPoll
from vitalcast.sessions import repository as session_repository


def _authenticator(db: Database, clock: ManualClock | None = None) -> Authenticator:
    return Authenticator(TEST_SECRET, db, clock=clock or ManualClock(now_ms()), cache_s=30)


async def _session(db: Database, user_id: str) -> str:
    async with db.write() as conn:
        session = await session_repository.insert(
            conn,
            user_id=user_id,
            client_session_id=None,
            start_ms=now_ms() - 60_000,
            notes=None,
            now_ms=now_ms(),
        )
    return session.id


async def test_a_remembered_token_costs_no_statement(db: Database, users: Users) -> None:
    """The first use of a token reads the user once; the next hundred read nothing."""
    auth = _authenticator(db)
    user_id, token = await users.create()
    with count_statements(db.engine) as first:
        assert (await auth.authenticate(token)).user_id == user_id
    assert len(first) == 1
    with count_statements(db.engine) as repeated:
        for _ in range(100):
            assert (await auth.authenticate(token)).user_id == user_id
    assert repeated == []


async def test_a_remembered_oidc_token_costs_no_statement(db: Database) -> None:
    """The same for the issuer's tokens: a token of a known subject reads its user and its
    tombstone in one statement; the next hundred uses read nothing and fetch no key."""
    with serve_issuer() as issuer:
        verifier = OidcVerifier(issuer.url, AUDIENCE)
        auth = Authenticator(
            TEST_SECRET, db, clock=ManualClock(now_ms()), oidc=verifier, cache_s=30
        )
        try:
            kid = next(iter(issuer.published))
            user_id = (await auth.authenticate(issuer.token(kid, sub="ivy", jti="1"))).user_id
            token = issuer.token(kid, sub="ivy", jti="2")
            fetches = issuer.jwks_fetches
            with count_statements(db.engine) as first:
                assert (await auth.authenticate(token)).user_id == user_id
            assert len(first) == 1, first
            with count_statements(db.engine) as repeated:
                for _ in range(100):
                    assert (await auth.authenticate(token)).user_id == user_id
            assert repeated == []
            assert issuer.jwks_fetches == fetches
        finally:
            await verifier.close()


async def test_remembering_ends_after_the_cache_lifetime(db: Database, users: Users) -> None:
    """After ``cache_s`` the database decides again (one statement)."""
    clock = ManualClock(now_ms())
    auth = _authenticator(db, clock)
    _user_id, token = await users.create()
    await auth.authenticate(token)
    clock.advance(30_001)
    with count_statements(db.engine) as seen:
        await auth.authenticate(token)
    assert len(seen) == 1


def test_token_lifetimes_in_the_cache_spread_over_half_of_it() -> None:
    """Each token is remembered between half and all of ``cache_s``, the same each time, and
    tokens spread over that span: of 1,000 no fifth of the span holds more than a quarter."""
    keys = [hashlib.sha256(f"token-{i}".encode()).digest() for i in range(1_000)]
    lifetimes = [remembered_for_ms(key, 30_000) for key in keys]
    assert all(15_000 < ms <= 30_000 for ms in lifetimes)
    assert lifetimes == [remembered_for_ms(key, 30_000) for key in keys]
    by_fifth = [0] * 5
    for ms in lifetimes:
        by_fifth[min(4, (ms - 15_000) // 3_000)] += 1
    assert max(by_fifth) < 250, by_fifth
    assert remembered_for_ms(keys[0], 0) == 0


async def test_tokens_verified_together_are_not_verified_again_together(
    db: Database, users: Users
) -> None:
    """Thirty tokens verified at one instant (sessions started together) come due at
    different times: none within half the cache's lifetime, each exactly once by its end, and
    no 5 s of it reads more than two thirds of them (one lifetime for all read all thirty at
    once)."""
    clock = ManualClock(now_ms())
    auth = _authenticator(db, clock)
    tokens = [(await users.create())[1] for _ in range(30)]
    for token in tokens:
        await auth.authenticate(token)
    reads_per_step = []
    for step in range(7):
        clock.advance(15_000 if step == 0 else 2_500)
        with count_statements(db.engine) as seen:
            for token in tokens:
                await auth.authenticate(token)
        reads_per_step.append(len(seen))
    assert reads_per_step[0] == 0
    assert sum(reads_per_step) == 30  # each token read again once by the end of the lifetime
    assert all(a + b <= 20 for a, b in itertools.pairwise(reads_per_step)), reads_per_step


async def test_token_revocation_refuses_older_local_tokens_at_once(
    db: Database, users: Users
) -> None:
    """``tokens_valid_after_ms`` plus ``revoke_user``: a remembered token is refused on its next
    use (TOKEN_REVOKED), a token issued afterwards works, another user's is untouched."""
    auth = _authenticator(db)
    name = "revoked-user"
    user_id, old = await users.create(name)
    _other_id, other = await users.create()
    await auth.authenticate(old)
    await auth.authenticate(other)
    revoked_at = now_ms()
    async with db.write() as conn:
        assert await credentials.revoke_local_tokens(conn, name, now_ms=revoked_at) == user_id
    await auth.revoke_user(user_id)
    with pytest.raises(Unauthenticated) as refused:
        await auth.authenticate(old)
    assert refused.value.code == "TOKEN_REVOKED"
    fresh = issue_token(
        TEST_SECRET, user_id, now_s=revoked_at // 1000, ttl_s=3600, now_ms=revoked_at + 1
    )
    assert (await auth.authenticate(fresh)).user_id == user_id
    with count_statements(db.engine) as seen:
        await auth.authenticate(other)
    assert seen == [], "a revocation drops only the revoked user's principals"


async def test_a_token_without_iat_ms_is_refused_within_its_revocation_second(
    db: Database, users: Users
) -> None:
    """Tokens of older releases carry ``iat`` in seconds only: in doubt they count as issued at
    the end of that second, so a revocation later in the same second refuses them."""
    import jwt

    auth = _authenticator(db)
    name = "old-token-user"
    user_id, _ = await users.create(name)
    second = now_ms() // 1000
    legacy = jwt.encode({"sub": user_id, "iat": second, "exp": second + 3600}, TEST_SECRET)
    async with db.write() as conn:
        await credentials.revoke_local_tokens(conn, name, now_ms=second * 1000 + 500)
    with pytest.raises(Unauthenticated) as refused:
        await auth.authenticate(legacy)
    assert refused.value.code == "TOKEN_REVOKED"


async def test_local_tokens_can_be_switched_off(db: Database, users: Users) -> None:
    auth = Authenticator(TEST_SECRET, db, local_tokens=False)
    _user_id, token = await users.create()
    with pytest.raises(Unauthenticated) as refused:
        await auth.authenticate(token)
    assert refused.value.code == "TOKEN_INVALID"


async def test_share_tokens_read_one_session_until_revoked_or_expired(
    db: Database, users: Users
) -> None:
    """A share token is a SHARE principal of its owner and session, remembered like any token;
    ``revoke_share`` refuses it at once (SHARE_REVOKED); past its end it is SHARE_EXPIRED."""
    clock = ManualClock(now_ms())
    auth = _authenticator(db, clock)
    owner_id, _ = await users.create()
    session_id = await _session(db, owner_id)
    async with db.write() as conn:
        share, token = await share_repository.create(
            conn,
            user_id=owner_id,
            session_id=session_id,
            label=None,
            now_ms=clock.now_ms(),
            expires_in_minutes=10,
        )
        lasting, lasting_token = await share_repository.create(
            conn,
            user_id=owner_id,
            session_id=session_id,
            label="lasting",
            now_ms=clock.now_ms(),
            expires_in_minutes=60,
        )
    principal = await auth.authenticate(token)
    assert principal.scope is PrincipalScope.SHARE
    assert (principal.user_id, principal.session_id, principal.share_id) == (
        owner_id,
        session_id,
        share.id,
    )
    assert principal.rate_key == f"share:{share.id}"
    with count_statements(db.engine) as seen:
        await auth.authenticate(token)
    assert seen == []

    clock.advance(10 * 60_000)
    with pytest.raises(Unauthenticated) as expired:
        await auth.authenticate(token)
    assert expired.value.code == "SHARE_EXPIRED"

    await auth.authenticate(lasting_token)
    async with db.write() as conn:
        assert await share_repository.revoke(conn, owner_id, lasting.id, now_ms=clock.now_ms())
    await auth.revoke_share(lasting.id)
    with pytest.raises(Unauthenticated) as revoked:
        await auth.authenticate(lasting_token)
    assert revoked.value.code == "SHARE_REVOKED"


async def test_the_poll_delivers_revocations_written_elsewhere(db: Database, users: Users) -> None:
    """A revocation written by another process (the CLI) reaches this one's handlers through
    the poll, once."""
    bus = RevocationBus()
    heard: list[str] = []

    async def hear(revocation: object) -> None:
        heard.append(revocation.id)

    bus.subscribe(hear)
    poll = RevocationPoll(db, bus, interval_ms=1000)
    assert await poll.poll() == []
    user_id, _ = await users.create("polled")
    async with db.write() as conn:
        await credentials.revoke_local_tokens(conn, "polled", now_ms=now_ms())
    assert [r.id for r in await poll.poll()] == [user_id]
    assert await poll.poll() == []
    assert heard == [user_id]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_on_sqlite_a_look_while_nothing_was_committed_runs_no_query(
    database_url: str, db: Database, users: Users
) -> None:
    """On a SQLite file the poll queries only after a commit (``PRAGMA data_version``): an idle
    server's looks cost no statement and no hop to a database thread, and a revocation that
    another connection to the file commits (as the CLI's process does) is found by the next
    look, once."""
    bus = RevocationBus()
    poll = RevocationPoll(db, bus, interval_ms=1000)
    user_id, _ = await users.create("quiet")
    assert await poll.poll() == []
    queries = poll.queries
    for _ in range(5):
        assert await poll.poll() == []
    assert poll.queries == queries
    elsewhere = Database(create_engine(database_url))
    try:
        async with elsewhere.write() as conn:
            await credentials.revoke_local_tokens(conn, "quiet", now_ms=now_ms())
    finally:
        await elsewhere.dispose()
    assert [r.id for r in await poll.poll()] == [user_id]
    assert await poll.poll() == []
    assert poll.queries == queries + 1
    await poll.close()
