"""The wire format of a telemetry job, shared by the producer (server, backfill) and the worker.

A job is portable BullMQ: ids use ``_`` only (Node's BullMQ rejects ``:``) and the data is plain
JSON, so a worker in another language could consume the same queue.
"""

from __future__ import annotations

from dataclasses import dataclass

from vitalcast.json_types import JsonObject
from vitalcast.telemetry.keys import Resolution, ScheduleReason, TelemetryKey

JOB_NAME = "compute"
#: total tries of one job (first run + 2 retries)
JOB_ATTEMPTS = 3
# Finished jobs stay visible (queue metrics, inspection) for a while, bounded in count.
KEEP_COMPLETED = {"age": 3_600, "count": 1_000}
KEEP_FAILED = {"age": 7 * 86_400, "count": 1_000}
# a job's enums by value, looked up as a dict (an Enum's call costs several times more, per job)
_RESOLUTIONS = {r.value: r for r in Resolution}
_REASONS = {r.value: r for r in ScheduleReason}


def job_id(key: TelemetryKey, watermark: int) -> str:
    """``<session>_<window>_<resolution>_v<version>_w<watermark>``: one job per key and watermark."""
    return f"{key.dedupe_id}_w{watermark}"


@dataclass(frozen=True, slots=True)
class TelemetryJob:
    """What one job asks for. ``watermark`` is the session watermark known when it was queued;
    the compute always reads the current one, so a job serves every later change that arrived
    before it started."""

    key: TelemetryKey
    watermark: int
    reason: ScheduleReason

    @property
    def id(self) -> str:
        return job_id(self.key, self.watermark)

    def to_data(self) -> JsonObject:
        return {
            "session_id": self.key.session_id,
            "user_id": self.key.user_id,
            "window_minutes": self.key.window_minutes,
            "resolution": self.key.resolution.value,
            "compute_version": self.key.compute_version,
            "watermark": self.watermark,
            "reason": self.reason.value,
        }

    @classmethod
    def from_data(cls, data: JsonObject) -> TelemetryJob:
        """Decode job data; raises ``KeyError``/``TypeError``/``ValueError`` on a malformed job."""
        key = TelemetryKey(
            session_id=str(data["session_id"]),
            window_minutes=int(data["window_minutes"]),
            resolution=_RESOLUTIONS[data["resolution"]],
            compute_version=int(data["compute_version"]),
            user_id=str(data["user_id"]),
        )
        reason = _REASONS[data["reason"]]
        return cls(key=key, watermark=int(data["watermark"]), reason=reason)


def job_options(job: TelemetryJob, *, backoff_ms: int) -> JsonObject:
    """BullMQ options: our id, per-key deduplication that keeps the newest add while one runs,
    three attempts with exponential backoff (``backoff_ms``, then twice that), bounded retention
    of finished jobs.

    ``keepLastIfActive``: while a job of the key waits, further adds are absorbed by it (it will
    read the newest watermark when it starts); while one is active, the newest add is parked
    (``dn:<key>``) and becomes the one waiting job when the active one finishes. So per key at
    most one job runs and one waits.
    """
    return {
        "jobId": job.id,
        "deduplication": {"id": job.key.dedupe_id, "keepLastIfActive": True},
        "attempts": JOB_ATTEMPTS,
        "backoff": {"type": "exponential", "delay": backoff_ms},
        "removeOnComplete": KEEP_COMPLETED,
        "removeOnFail": KEEP_FAILED,
    }
