"""The frame gate's rules, packet by packet (``realtime.frames.check_packet``): what reaches
python-engineio, what is left out, what refuses the whole frame."""

from __future__ import annotations

import json

import pytest

from vitalcast.realtime.broadcaster import MAX_MESSAGE_BYTES
from vitalcast.realtime.frames import POLLING_TYPES, WEBSOCKET_TYPES, Verdict, check_packet

ACCEPT, DROP, REFUSE = Verdict.ACCEPT, Verdict.DROP, Verdict.REFUSE
SUBSCRIBE = json.dumps(["subscribe", {"session_id": "x"}])


@pytest.mark.parametrize(
    ("packet", "verdict"),
    [
        ("40", ACCEPT),  # namespace connect without auth
        ('40{"token":"t"}', ACCEPT),
        ("41", ACCEPT),  # namespace disconnect
        (f"42{SUBSCRIBE}", ACCEPT),
        (f"427{SUBSCRIBE}", ACCEPT),  # with an ack id
        ('42["other"]', ACCEPT),  # unknown names are answered UNKNOWN_EVENT by the server
        ("3", ACCEPT),  # pong
        ("1", ACCEPT),  # close
        ('42["disconnect"]', DROP),
        ('42["connect",{},{"token":"t"}]', DROP),
        ('42["connect_error"]', DROP),
        ('42["newListener"]', DROP),
        ("431[]", DROP),  # an acknowledgement nobody asked for
        ("", REFUSE),
        ("9", REFUSE),  # no such Engine.IO type
        ("0", REFUSE),  # open: the server's
        ("6", REFUSE),  # noop: the server's
        ("bAAAA", REFUSE),  # binary
        ("4", REFUSE),  # an empty message
        ("4x", REFUSE),
        ('4{"a":1}', REFUSE),  # a JSON object is not a Socket.IO packet
        ("44", REFUSE),  # connect_error: the server's
        ('451-["subscribe",{"_placeholder":true,"num":0}]', REFUSE),  # binary attachments
        ('40"token"', REFUSE),  # connect data must be an object
        ("42{}", REFUSE),
        ("42[]", REFUSE),
        ("42[1]", REFUSE),
        ('42["subscribe"', REFUSE),
        ("42" + "[" * 5000 + "]" * 5000, REFUSE),  # deeper than the parser recurses
        ("42[" + "9" * 5000 + "]", REFUSE),  # beyond int parsing
        ("42" + json.dumps(["subscribe", "x" * MAX_MESSAGE_BYTES]), REFUSE),
    ],
)
def test_polling_verdicts(packet: str, verdict: Verdict) -> None:
    """Each packet a polling client may send gets its verdict."""
    assert check_packet(packet, POLLING_TYPES) is verdict


def test_ping_and_upgrade_only_over_a_websocket() -> None:
    """The upgrade handshake's probe ping and upgrade travel over the WebSocket, never in a
    polling body (where python-engineio would hang on them)."""
    for packet in ("2probe", "5"):
        assert check_packet(packet, WEBSOCKET_TYPES) is ACCEPT
        assert check_packet(packet, POLLING_TYPES) is REFUSE
