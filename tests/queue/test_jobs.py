"""A job's data decodes to what was queued, and malformed data is refused with the errors the
worker turns into an unrecoverable job (``job_malformed``)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from vitalcast.queue.jobs import TelemetryJob
from vitalcast.telemetry.keys import Resolution, ScheduleReason, TelemetryKey


def _job() -> TelemetryJob:
    key = TelemetryKey(
        session_id=str(uuid.uuid4()),
        window_minutes=60,
        resolution=Resolution.FIVE_MINUTES,
        user_id=str(uuid.uuid4()),
    )
    return TelemetryJob(key, 12, ScheduleReason.LIVE_UPDATE)


def test_data_round_trips() -> None:
    job = _job()
    assert TelemetryJob.from_data(job.to_data()) == job


@pytest.mark.parametrize(
    ("field", "value"),
    [("resolution", "7m"), ("resolution", ["1m"]), ("reason", "because"), ("reason", None)],
)
def test_an_unknown_or_unhashable_value_is_refused(field: str, value: Any) -> None:
    data = _job().to_data() | {field: value}
    with pytest.raises((KeyError, TypeError, ValueError)):
        TelemetryJob.from_data(data)
