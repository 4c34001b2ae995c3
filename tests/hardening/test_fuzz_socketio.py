"""Raw-frame fuzzing of the Socket.IO endpoint against a real server process: a few hundred
malformed, oversize and reserved-name frames, drawn by Hypothesis with a fixed seed, over a
WebSocket (after a valid namespace connect) and as polling POST bodies. The server answers each
(a closed WebSocket, a 4xx, or simply carries on), logs no error and no traceback, and a client
connected throughout keeps being served: its calls are answered and it gets the
``session.updated`` of an ingest made after the storm."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.accounts import new_user
from tests.conftest import in_thread
from tests.hardening.engineio_raw import Closed, RawPolling, RawSocket
from tests.ingest.helpers import MINUTE_MS, hr, iso, now_ms
from tests.processes import serve_subprocess, vitalcast_env
from vitalcast.realtime.broadcaster import MAX_MESSAGE_BYTES
from vitalcast.realtime.frames import RESERVED_EVENTS

WEBSOCKET_FRAMES = 300
POLLING_BODIES = 200
# The bystander makes a call after every this many fuzzed frames or bodies.
BYSTANDER_EVERY = 25
SEED = 15

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)
_EVENT_NAMES = st.sampled_from([*sorted(RESERVED_EVENTS), "subscribe", "unsubscribe", "other"])
_SOCKETIO_DATA = st.one_of(
    st.just(""),
    _JSON.map(json.dumps),
    st.text(max_size=30),
    st.tuples(_EVENT_NAMES | st.integers(), st.lists(_JSON, max_size=3)).map(
        lambda event: json.dumps([event[0], *event[1]])
    ),
    st.integers(1, 5000).map(lambda depth: "[" * depth + "]" * depth),
    st.integers(4300, 6000).map(lambda digits: "[" + "9" * digits + "]"),
    st.just(json.dumps(["subscribe", "x" * (MAX_MESSAGE_BYTES + 10)])),
)
# A Socket.IO packet: type, attachment count, namespace, ack id and data, each often broken.
_SOCKETIO_PACKETS = st.tuples(
    st.sampled_from("0123456789x"),
    st.sampled_from(["", "", "1-", "0-", "99999999999-"]),
    st.sampled_from(["", "", "/", "/other,", "/x?y=1,", "/,"]),
    st.sampled_from(["", "", "7", "0", "9" * 120]),
    _SOCKETIO_DATA,
).map("".join)
# An Engine.IO text packet: mostly a message carrying the above, else anything.
_PACKETS = st.one_of(
    _SOCKETIO_PACKETS.map(lambda packet: "4" + packet),
    _SOCKETIO_PACKETS.map(lambda packet: "4" + packet),
    st.tuples(st.sampled_from("0123456789b"), st.text(max_size=30)).map("".join),
    st.text(max_size=40),
)
_FRAMES = st.one_of(_PACKETS, st.binary(max_size=40))
_BODIES = st.one_of(
    st.lists(_PACKETS, min_size=1, max_size=20).map(lambda packets: "\x1e".join(packets).encode()),
    st.binary(max_size=60),
    st.integers(MAX_MESSAGE_BYTES - 10, MAX_MESSAGE_BYTES + 10).map(lambda n: b"4" * n),
)
_FUZZ = settings(
    database=None, deadline=None, derandomize=False, suppress_health_check=list(HealthCheck)
)


@pytest.mark.slow
def test_malformed_frames_leave_no_error_and_others_are_served(tmp_path: Path) -> None:
    """Each malformed or oversize frame closes its WebSocket or leaves it serving, each polling
    body is answered 200/400/413 (never a hang, never a 5xx), nothing is logged at error level
    and no traceback at all, and a bystander client is served throughout."""
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'fuzz.db'}"
    env = vitalcast_env(tmp_path / "data", log_level="info", database_url=database_url)
    with serve_subprocess(env, tmp_path / "server.log") as server:
        _user_id, token = in_thread(asyncio.run, new_user(database_url, "fuzzer"))
        headers = {"Authorization": f"Bearer {token}"}
        start = now_ms() - 10 * MINUTE_MS
        with httpx.Client(base_url=server.url, timeout=10) as client:
            created = client.post(
                "/api/v1/sessions", json={"started_at": iso(start)}, headers=headers
            )
            session_id = created.json()["id"]
        outcomes = {"closed": 0, "served": 0}
        answers: dict[int, int] = {}
        calls = 0

        with RawSocket(server.url) as bystander:
            bystander.join(token)

            def bystander_served() -> None:
                nonlocal calls
                calls += 1
                ack = bystander.call(calls, "subscribe", {"session_id": session_id})
                assert ack["ok"] is True, ack

            bystander_served()

            @seed(SEED)
            @settings(_FUZZ, max_examples=WEBSOCKET_FRAMES)
            @given(frame=_FRAMES)
            def websocket_frame(frame: str | bytes) -> None:
                with RawSocket(server.url) as raw:
                    raw.join(token)
                    # A namespace connect is answered whatever state the frame left the
                    # namespace in (joined: a refusal; left: a new sid): proof it was handled.
                    try:
                        raw.send(frame)
                        raw.send("40" + json.dumps({"token": token}))
                        raw.next_matching(lambda f: f.startswith(("40", "44")), 10)
                    except Closed:
                        outcomes["closed"] += 1
                    else:
                        outcomes["served"] += 1
                # the storm may outlast the server's ping interval on a loaded machine
                bystander.answer_pings()
                if sum(outcomes.values()) % BYSTANDER_EVERY == 0:
                    bystander_served()

            @seed(SEED)
            @settings(_FUZZ, max_examples=POLLING_BODIES)
            @given(body=_BODIES)
            def polling_body(body: bytes) -> None:
                polling = RawPolling(server.url, timeout_s=5)
                try:
                    status = polling.post(body).status_code
                finally:
                    polling.close()
                answers[status] = answers.get(status, 0) + 1
                bystander.answer_pings()
                if sum(answers.values()) % BYSTANDER_EVERY == 0:
                    bystander_served()

            websocket_frame()
            polling_body()
            assert calls > (WEBSOCKET_FRAMES + POLLING_BODIES) // BYSTANDER_EVERY

            with httpx.Client(base_url=server.url, timeout=10) as client:
                sample = {"samples": [hr("after-the-storm", start + MINUTE_MS)]}
                assert client.post("/api/v1/samples", json=sample, headers=headers).is_success
            bystander.next_matching(lambda f: f.startswith('42["session.updated"'), 15)
            log = server.log()
    assert outcomes["closed"] > 0 and outcomes["served"] > 0, outcomes
    assert set(answers) <= {200, 400, 413} and 400 in answers, answers
    assert "Traceback" not in log
    assert '"level": "error"' not in log
