"""A health sample as vitalcast keeps it, and the counts of what a batch of them did.

``Sample`` is what ingest stores once a sample is valid and what the exports read back: canonical
units, epoch milliseconds. ``WriteCounts`` is what a batch did to the stored samples, counted by
the ingest itself and, from its answers, by the simulator and the importer.
"""

from __future__ import annotations

from dataclasses import dataclass

from vitalcast.json_types import JsonMapping


@dataclass(frozen=True, slots=True)
class Sample:
    """One sample in canonical units and epoch milliseconds."""

    source: str
    record_id: str
    metric: str
    value: float
    unit: str
    start_ms: int
    end_ms: int
    device: str | None


@dataclass
class WriteCounts:
    """Samples a batch inserted, updated, or found stored as they were."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0

    def count_answer(self, answer: JsonMapping) -> None:
        """Add the counts of an ingest answer (``POST /api/v1/samples``)."""
        self.inserted += answer.get("inserted", 0)
        self.updated += answer.get("updated", 0)
        self.unchanged += answer.get("unchanged", 0)
