"""Realtime push: the Socket.IO server of a server process and the broadcaster every process uses."""

from vitalcast.realtime.broadcaster import WebSocketBroadcaster
from vitalcast.realtime.server import RealtimeServer

__all__ = ["RealtimeServer", "WebSocketBroadcaster"]
