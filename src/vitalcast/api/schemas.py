"""Wire format of the HTTP API (pydantic models); the domain never imports this module."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field

from vitalcast.clock import epoch_ms
from vitalcast.ingest.validation import MAX_SAMPLES
from vitalcast.json_types import JsonObject
from vitalcast.sessions.models import Session


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def to_ms(value: datetime) -> int:
    return epoch_ms(value)


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Text that both databases store: PostgreSQL refuses NUL characters in text with an error.
NO_NUL = r"^[^\x00]*$"


def _iso_only(value: object) -> object:
    if isinstance(value, int | float):
        raise ValueError("must be an ISO 8601 string with an offset, not a number")
    return value


# An ISO string, as documented: not a number of seconds. The range (1970 … now + 5 min) is
# checked by the session service against vitalcast.timerange, the rule samples follow too; the
# pattern only documents its lower end.
Moment = Annotated[
    AwareDatetime,
    BeforeValidator(_iso_only),
    Field(json_schema_extra={"pattern": r"^(19[7-9][0-9]|[2-9][0-9]{3})-"}),
]


class SessionCreate(StrictModel):
    client_session_id: str | None = Field(None, min_length=1, max_length=200, pattern=NO_NUL)
    started_at: Moment | None = None
    notes: str | None = Field(None, max_length=10_000, pattern=NO_NUL)


class SessionEnd(StrictModel):
    ended_at: Moment | None = None


class SampleIn(StrictModel):
    """One sample of ``POST /samples``. Documentation only: the ingest validator is the authority
    (it reads the raw body so that content errors reject single samples, not the request)."""

    source: str = Field(min_length=1, max_length=64, pattern=NO_NUL, examples=["healthkit"])
    record_id: str = Field(min_length=1, max_length=200, pattern=NO_NUL)
    metric: str = Field(min_length=1, max_length=64, pattern=NO_NUL, examples=["heart_rate"])
    value: float = Field(description="Finite, within the metric's plausible range.")
    unit: str | None = Field(None, min_length=1, max_length=32, pattern=NO_NUL)
    start: datetime = Field(description="ISO 8601 with a UTC offset.")
    end: datetime | None = None
    device: str | None = Field(None, min_length=1, max_length=200, pattern=NO_NUL)


class DeletionIn(StrictModel):
    source: str = Field(min_length=1, max_length=64, pattern=NO_NUL)
    record_id: str = Field(min_length=1, max_length=200, pattern=NO_NUL)


class IngestRequest(StrictModel):
    """Body of ``POST /samples`` (documentation only: ``ingest.validation`` enforces the limits,
    ``MAX_SAMPLES`` samples and as many deletions in at most ``MAX_BODY_BYTES``)."""

    request_id: str | None = Field(None, min_length=1, max_length=200, pattern=NO_NUL)
    samples: list[SampleIn] = Field(default_factory=list, max_length=MAX_SAMPLES)
    deleted: list[DeletionIn] = Field(default_factory=list, max_length=MAX_SAMPLES)


def inline_json_schema(model: type[BaseModel]) -> JsonObject:
    """The model's JSON schema with its ``$defs`` inlined, for ``openapi_extra`` (where a local
    ``#/$defs`` reference would point at the root of the OpenAPI document)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:  # Any: a node of the JSON schema pydantic built
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)  # type: ignore[no-any-return]


class SessionOut(BaseModel):
    id: str
    client_session_id: str | None
    status: str
    live: bool
    started_at: str
    ended_at: str | None
    start_ms: int
    end_ms: int | None
    notes: str | None
    source_watermark: int
    #: retention archived it: views served as kept, raw exports 410 RAW_EXPIRED
    archived: bool = False

    @classmethod
    def of(cls, session: Session) -> SessionOut:
        return cls(
            id=session.id,
            client_session_id=session.client_session_id,
            status=session.status.value,
            live=session.live,
            started_at=iso(session.start_ms) or "",
            ended_at=iso(session.end_ms),
            start_ms=session.start_ms,
            end_ms=session.end_ms,
            notes=session.notes,
            source_watermark=session.source_watermark,
            archived=session.archived_at_ms is not None,
        )


class SessionPage(BaseModel):
    items: list[SessionOut]
    next_cursor: str | None


class SessionInsightsOut(BaseModel):
    """One session of ``GET /insights``."""

    session_id: str
    start_ms: int
    end_ms: int | None
    state: Literal["ready", "stale", "computing", "no_data", "failed"] = Field(
        description="As a telemetry GET of the session's view would answer."
    )
    value: float | None = Field(description="The figure compared (see `compared`).")
    insights: JsonObject | None = Field(
        description="The metric's insights in the cached payload (docs/design.md, Insights)."
    )


class PlaceOut(BaseModel):
    """Where the newest session falls among the others."""

    session_id: str
    value: float
    median: float | None = Field(description="Median of the other sessions' values.")
    percentile: float | None = Field(
        description="Share of the others below the newest, ties counted half, × 100."
    )
    compared_with: int


class InsightsPage(BaseModel):
    """``GET /insights``: a metric across the caller's last completed sessions."""

    metric: str
    kind: Literal["scalar", "cumulative"]
    unit: str
    window_minutes: int
    compared: Literal["delta", "during_total"]
    complete: bool = Field(description="Every session's payload is current.")
    retry_after_seconds: int | None
    sessions: list[SessionInsightsOut] = Field(description="Newest first.")
    place: PlaceOut | None


class SampleRangeDelete(StrictModel):
    """Body of ``POST /samples/delete``: the caller's samples starting in ``[from, to)``."""

    from_: Moment = Field(alias="from", description="Inclusive start (ISO 8601 with offset).")
    to: Moment = Field(description="Exclusive end (ISO 8601 with offset), after ``from``.")
    metrics: list[Annotated[str, Field(min_length=1, max_length=64, pattern=NO_NUL)]] | None = (
        Field(None, min_length=1, max_length=64, description="Metric codes; omitted: all.")
    )


class SampleRangeDeleted(BaseModel):
    """Rows removed and the caller's change_seq after the deletion."""

    deleted: int
    change_seq: int
