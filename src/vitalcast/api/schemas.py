"""Wire format of the HTTP API (pydantic models); the domain never imports this module."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from vitalcast.sessions.models import Session


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def to_ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SessionCreate(StrictModel):
    client_session_id: str | None = Field(None, min_length=1, max_length=200)
    started_at: AwareDatetime | None = None
    notes: str | None = Field(None, max_length=10_000)


class SessionEnd(StrictModel):
    ended_at: AwareDatetime | None = None


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
        )


class SessionPage(BaseModel):
    items: list[SessionOut]
    next_cursor: str | None
