"""Identity fixtures: the realtime suite's live server and Socket.IO clients."""

from __future__ import annotations

from tests.realtime.conftest import live, socket_client

__all__ = ["live", "socket_client"]
