"""The worker's ``jobs_done`` summary: one info line per interval instead of one per job."""

from __future__ import annotations

from structlog.testing import capture_logs

from vitalcast.queue.worker import JobSummary


def test_jobs_are_summed_into_one_line_per_interval() -> None:
    summary = JobSummary(every_s=3600)
    with capture_logs() as events:
        summary.add("live_update", "computed", 2.0)
        summary.add("live_update", "computed", 5.0)
        summary.add("cache_miss", "no_data", 1.0)
        assert events == []
        summary.flush()
        summary.flush()
    assert events == [
        {
            "event": "jobs_done",
            "log_level": "info",
            "jobs": 3,
            "by_reason_outcome": {"live_update/computed": 2, "cache_miss/no_data": 1},
            "total_ms": 8.0,
            "max_ms": 5.0,
            "over_s": events[0]["over_s"],
        }
    ]


def test_a_job_finished_after_the_interval_writes_the_line() -> None:
    summary = JobSummary(every_s=0.0)
    with capture_logs() as events:
        summary.add("live_update", "computed", 1.5)
        summary.add("live_tick", "computed", 0.5)
    assert [(e["jobs"], e["by_reason_outcome"]) for e in events] == [
        (1, {"live_update/computed": 1}),
        (1, {"live_tick/computed": 1}),
    ]
