"""``python -m tests.hardening.frame_flood URL SECONDS CLIENTS``: CLIENTS threads each send
frames the server's gate drops (``42["disconnect"]`` and acks) as fast as they can over a raw
WebSocket, reconnecting whenever the server closes it, for SECONDS; prints a JSON list of the
frames each closed connection had sent. A process of its own, so that the flood's threads do
not hold the GIL of the test that measures the server meanwhile."""

from __future__ import annotations

import json
import sys
import threading
import time

from tests.hardening.engineio_raw import Closed, RawSocket


def flood(url: str, seconds: float, clients: int) -> list[int]:
    deadline = time.monotonic() + seconds
    closed: list[int] = []
    lock = threading.Lock()

    def one() -> None:
        while time.monotonic() < deadline:
            with RawSocket(url) as raw:
                sent = 0
                try:
                    while time.monotonic() < deadline:
                        raw.send('42["disconnect"]' if sent % 2 else "43[]")
                        sent += 1
                except Closed:
                    with lock:
                        closed.append(sent)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)
    return closed


if __name__ == "__main__":
    print(json.dumps(flood(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]))))
