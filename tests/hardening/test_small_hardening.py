"""Smaller hardening points: the embedded database's files are private to their owner, every
URL that serves a page sends the pages' CSP, and session creation has a rate budget."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx

from tests.accounts import new_user
from tests.processes import serve_subprocess, vitalcast_env


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_the_data_dir_is_0700_and_the_database_and_its_wal_0600(tmp_path):
    """They were 0644 in a 0755 folder: any local account could read the health data. A server
    that created them, with its WAL and shared memory open after a write, has them private."""
    data = tmp_path / "data"
    env = vitalcast_env(data, log_level="warning")
    with serve_subprocess(env, tmp_path / "server.log") as server:
        database = data / "vitalcast.db"
        _, token = await new_user(f"sqlite+aiosqlite:///{database}", "owner")
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            created = await client.post(
                "/api/v1/sessions", json={}, headers={"Authorization": f"Bearer {token}"}
            )
        assert created.status_code == 201, created.text
        files = {p.name: mode(p) for p in data.iterdir()}
    assert mode(data) == 0o700
    assert {"vitalcast.db", "vitalcast.db-wal", "vitalcast.db-shm"} <= set(files)
    assert files == dict.fromkeys(files, 0o600)


async def test_a_readable_database_left_by_an_older_version_is_narrowed(tmp_path):
    from vitalcast.db.engine import create_engine

    database = tmp_path / "old" / "vitalcast.db"
    database.parent.mkdir()
    database.touch(mode=0o644)
    database.chmod(0o644)
    engine = create_engine(f"sqlite+aiosqlite:///{database}")
    await engine.dispose()
    assert mode(database) == 0o600


async def test_every_url_of_a_page_sends_its_csp_and_frame_ancestors(client):
    """/static/index.html and /static/docs.html served the pages without the headers that
    / and /docs send; now every HTML response has them, and scripts do not change."""
    pages = {}
    for url in ("/", "/docs", "/static/index.html", "/static/docs.html"):
        response = await client.get(url)
        assert response.status_code == 200, url
        pages[url] = response.headers
    csp = pages["/"]["content-security-policy"]
    assert "frame-ancestors 'none'" in csp
    for url, headers in pages.items():
        assert headers["content-security-policy"] == csp, url
        assert headers["referrer-policy"] == "no-referrer", url
    script = await client.get("/static/app.js")
    assert "content-security-policy" not in script.headers


async def test_session_creation_has_a_rate_budget(client, users):
    """400 creations with 10 KB notes went through in 2 s; the 121st creation within a minute
    is now a 429 with Retry-After, and another user's budget is untouched."""
    headers = await users.headers("hasty")
    notes = "n" * 1000
    statuses = []
    for _ in range(121):
        answer = await client.post("/api/v1/sessions", json={"notes": notes}, headers=headers)
        statuses.append(answer.status_code)
    assert statuses == [201] * 120 + [429]
    assert int(answer.headers["Retry-After"]) >= 1
    assert answer.json()["code"] == "RATE_LIMITED"
    other = await client.post("/api/v1/sessions", json={}, headers=await users.headers("calm"))
    assert other.status_code == 201
