"""Engine.IO's keepalive on the loop's shared ticks.

python-engineio keeps two timers per client. Its client monitor visits one socket every
``ping_timeout / N`` seconds, each visit through ``asyncio.wait_for`` (a task and a timer): ten
wake-ups a second with 200 clients, 250 with 5,000. And every socket's ping is a task of its own
sleeping ``ping_interval`` after the client's last pong: 200 watchers woke the server eight
times a second more. On this kind of VM each wake-up from idle costs about 0.1 ms of CPU: 200
idle watchers cost an embedded server 6 ms of CPU a second, about 0.7 ms per live update at 40
live sessions.

``TickedEngineServer`` keeps both on the loop clock's ticks (``clock.next_tick``), where the
server's other periodic tasks wake: one pass over every socket each ``MONITOR_S`` (the same
checks as python-engineio's monitor: a socket whose client missed its ping is closed, a closed
one forgotten and its WebSocket's writer ended), and a socket's ping goes on the first tick of the loop-lag probe (0.2 s) after
``ping_interval`` from its pong (clients wait ``ping_interval + ping_timeout``), with every ping
due on that tick sent in the same pass, at most ``MAX_PINGS_PER_TICK`` of them (more go on the
next ticks: sockets that connected together are not pinged, and do not answer, in one burst).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

import engineio
import socketio
from engineio import packet as eio_packet
from engineio.async_socket import AsyncSocket

from vitalcast.clock import sleep_to_tick
from vitalcast.observability import get_logger

log = get_logger(__name__)

#: seconds between two passes of the client monitor over every socket (python-engineio's
#: visits each socket once every ``ping_timeout``, 20 s by default)
MONITOR_S = 5.0
#: pings are sent on whole multiples of this on the loop's clock (of a quarter of a shorter
#: ping interval): the loop-lag probe's ticks, which wake the loop anyway
PING_TICK_S = 0.2
#: at most this many pings on one tick, the rest on the next ones: sockets that connected
#: together (a benchmark's 1,000 watchers within a second or two) would otherwise be pinged,
#: and answer, in one burst that delays the updates due meanwhile
MAX_PINGS_PER_TICK = 50
#: the monitor yields to the loop after this many sockets of its pass
MONITOR_CHUNK = 200


class TickedEngineServer(engineio.AsyncServer):  # type: ignore[misc]  # untyped library
    """python-engineio's ``AsyncServer`` with its client monitor and its pings on shared
    ticks (the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:  # Any: python-engineio's options
        kwargs["monitor_clients"] = False
        super().__init__(**kwargs)
        #: tick (loop time) → the sockets to ping on it
        self._pings: dict[float, list[AsyncSocket]] = {}
        self._monitor: asyncio.Task[None] | None = None

    def start_background_task(
        self, target: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:  # Any: python-engineio's signature
        sock = getattr(target, "__self__", None)
        if (
            getattr(target, "__func__", None) is AsyncSocket._send_ping
            and isinstance(sock, AsyncSocket)
            and not args
            and not kwargs
        ):
            # AsyncSocket.schedule_ping: the socket's next ping (its caller ignores the task)
            self._ping_later(sock)
            return None
        return super().start_background_task(target, *args, **kwargs)

    async def shutdown(self) -> None:
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor
        self._pings.clear()
        await super().shutdown()

    def _ping_later(self, sock: AsyncSocket) -> None:
        loop = asyncio.get_running_loop()
        if self._monitor is None:
            self._monitor = loop.create_task(self._monitor_clients(), name="engineio-monitor")
        due = loop.time() + self.ping_interval
        # a tick late at most (a quarter of a shorter interval), more only when many sockets
        # fall due together: clients wait ping_interval + ping_timeout for it
        quantum = min(PING_TICK_S, self.ping_interval / 4)
        step = math.ceil(due / quantum)
        while len(self._pings.get(step * quantum, ())) >= MAX_PINGS_PER_TICK:
            step += 1
        tick = step * quantum
        waiting = self._pings.get(tick)
        if waiting is None:
            self._pings[tick] = waiting = []
            loop.call_at(tick, self._ping_due, tick)
        waiting.append(sock)

    def _ping_due(self, tick: float) -> None:
        sockets = self._pings.pop(tick, [])
        if sockets:
            asyncio.get_running_loop().create_task(self._send_pings(sockets))

    async def _send_pings(self, sockets: list[AsyncSocket]) -> None:
        """What ``AsyncSocket._send_ping`` does after its sleep, for each socket."""
        for sock in sockets:
            if sock.closing or sock.closed:
                continue
            try:
                sock.last_ping = time.time()
                await sock.send(eio_packet.Packet(eio_packet.PING))
            except Exception as exc:
                log.warning("engineio_ping_failed", error_type=type(exc).__name__)

    async def _monitor_clients(self) -> None:
        """python-engineio's ``_service_task``, one pass over every socket per tick."""
        while True:
            await sleep_to_tick(MONITOR_S)
            for n, (sid, sock) in enumerate(list(self.sockets.items()), 1):
                if n % MONITOR_CHUNK == 0:
                    await asyncio.sleep(0)
                if sock.closed:
                    self.sockets.pop(sid, None)
                    if sock.upgraded:
                        # its writer ends and closes the WebSocket, which ends its reader (a
                        # WebSocket's read waits without a timeout: realtime/socket_reader)
                        sock.queue.put_nowait(None)
                elif not sock.closing:
                    try:
                        await sock.check_ping_timeout()
                    except Exception as exc:
                        log.warning("engineio_monitor_failed", error_type=type(exc).__name__)


class TickedSocketIOServer(socketio.AsyncServer):  # type: ignore[misc]  # untyped library
    """python-socketio's ``AsyncServer`` over ``TickedEngineServer``."""

    def _engineio_server_class(self) -> type[engineio.AsyncServer]:
        return TickedEngineServer
