"""The socket client fixture of tests/realtime, shared."""

from tests.realtime.conftest import socket_client  # noqa: F401
