"""Webhook fixtures: an app whose webhooks may go to loopback (``webhook_allow_private``) with
fast retries, and receivers on free ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TEST_SECRET
from tests.webhooks.receiver import Receiver
from vitalcast.app import create_app
from vitalcast.settings import Settings


def webhook_settings(database_url: str, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": database_url,
        "secret": TEST_SECRET,
        "webhook_allow_private": True,
        "webhook_timeout_s": 2.0,
        "webhook_retry_base_ms": 100,
    }
    return Settings(**(values | overrides))


@pytest.fixture
def make_settings(database_url: str, tmp_path: Path) -> Callable[..., Settings]:
    return lambda **overrides: webhook_settings(database_url, tmp_path / "data", **overrides)


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[..., Receiver]]:
    """Makes receivers (not started: ``await receiver.start()``); all stop at teardown."""
    made: list[Receiver] = []

    def make(**kwargs: Any) -> Receiver:
        receiver = Receiver(**kwargs)
        made.append(receiver)
        return receiver

    yield make
    for receiver in made:
        await receiver.stop()


class Running:
    """An app with its lifespan running and an HTTP client in front of it."""

    def __init__(self, app: Any, client: httpx.AsyncClient) -> None:
        self.app = app
        self.client = client

    @property
    def parts(self) -> Any:
        return self.app.state.parts


@pytest.fixture
async def run_app() -> AsyncIterator[Callable[..., Any]]:
    """``async with run_app(settings, seams) as running``: the app, started and stopped."""
    import contextlib

    from vitalcast.wiring import NO_SEAMS

    @contextlib.asynccontextmanager
    async def run(settings: Settings, seams: Any = NO_SEAMS) -> AsyncIterator[Running]:
        app = create_app(settings, seams)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                yield Running(app, client)

    yield run
