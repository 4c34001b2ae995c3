"""A session as a FHIR R4 ``Bundle`` of type ``collection``, written as a stream of JSON bytes.

- The session is an ``Encounter`` (first entry): its period is the session, its status follows
  the session's (in-progress / finished / cancelled), class ``FLD`` (field: outside a care
  setting). Every ``Observation`` points to it through ``encounter``. An Encounter rather than a
  panel ``Observation`` because a panel must list all its members in ``hasMember``, which a
  stream cannot know before it has read them, and because ``Observation.encounter`` is how
  receiving systems group readings taken during one occasion.
- One ``Observation`` per raw sample of the window: category ``vital-signs`` (scalar metrics)
  or ``activity`` (steps, energy), the catalog's LOINC code (SpO₂ also carries 59408-5, "by
  pulse oximetry"), a UCUM ``valueQuantity`` in the canonical unit, ``effectiveDateTime`` for
  an instant or ``effectivePeriod`` for an interval, and the device's name when known.
- Subject: the user, as a logical reference (``urn:ietf:rfc:3986`` identifier with the user's
  id); no demographics leave the service.
- Resource ids are name-based UUIDs: the same sample is the same Observation in every export.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterable, AsyncIterator, Sequence

import orjson

from vitalcast.catalog import BY_CODE, Metric, MetricKind
from vitalcast.clock import iso_ms
from vitalcast.json_types import JsonObject
from vitalcast.samples import Sample
from vitalcast.sessions.models import Session, SessionStatus

MEDIA_TYPE = "application/fhir+json"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
URI_IDENTIFIER = "urn:ietf:rfc:3986"
_CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
# Namespace of the name-based Observation ids (uuid5 of "user/source/record_id").
_NAMESPACE = uuid.UUID("6f1c3a52-0d4e-5b8a-9e57-3c2b1d0a9f64")
#: LOINC codings beyond the catalog's one
_EXTRA_CODINGS = {"blood_oxygen": ({"system": LOINC, "code": "59408-5"},)}
_ENCOUNTER_STATUS = {
    SessionStatus.ACTIVE: "in-progress",
    SessionStatus.COMPLETED: "finished",
    SessionStatus.CANCELLED: "cancelled",
}


def _category(metric: Metric) -> list[JsonObject]:
    code, display = (
        ("vital-signs", "Vital Signs")
        if metric.kind is MetricKind.SCALAR
        else ("activity", "Activity")
    )
    return [{"coding": [{"system": _CATEGORY_SYSTEM, "code": code, "display": display}]}]


def _code(metric: Metric) -> JsonObject:
    codings = [{"system": LOINC, "code": metric.loinc}, *_EXTRA_CODINGS.get(metric.code, ())]
    return {"coding": codings, "text": metric.display_name}


# What every Observation of a metric shares, encoded once.
_SHARED = {
    code: {"category": _category(metric), "code": _code(metric)} for code, metric in BY_CODE.items()
}


def observation_id(user_id: str, source: str, record_id: str) -> str:
    """The Observation id of a sample: stable across exports and sessions."""
    return str(uuid.uuid5(_NAMESPACE, f"{user_id}/{source}/{record_id}"))


def subject(user_id: str) -> JsonObject:
    return {"identifier": {"system": URI_IDENTIFIER, "value": f"urn:uuid:{user_id}"}}


def encounter(session: Session) -> JsonObject:
    period = {"start": iso_ms(session.start_ms)}
    if session.end_ms is not None:
        period["end"] = iso_ms(session.end_ms)
    resource: JsonObject = {
        "resourceType": "Encounter",
        "id": session.id,
        "identifier": [{"system": URI_IDENTIFIER, "value": f"urn:uuid:{session.id}"}],
        "status": _ENCOUNTER_STATUS[session.status],
        "class": {"system": _ACT_CODE, "code": "FLD", "display": "field"},
        "subject": subject(session.user_id),
        "period": period,
    }
    return {"fullUrl": f"urn:uuid:{session.id}", "resource": resource}


def observation(sample: Sample, user_id: str, encounter_ref: dict[str, str]) -> JsonObject:
    metric = BY_CODE[sample.metric]
    resource_id = observation_id(user_id, sample.source, sample.record_id)
    resource: JsonObject = {
        "resourceType": "Observation",
        "id": resource_id,
        "status": "final",
        **_SHARED[sample.metric],
        "subject": subject(user_id),
        "encounter": encounter_ref,
    }
    if sample.end_ms == sample.start_ms:
        resource["effectiveDateTime"] = iso_ms(sample.start_ms)
    else:
        resource["effectivePeriod"] = {
            "start": iso_ms(sample.start_ms),
            "end": iso_ms(sample.end_ms),
        }
    resource["valueQuantity"] = {
        "value": sample.value,
        "unit": metric.unit,
        "system": UCUM,
        "code": metric.ucum,
    }
    if sample.device:
        resource["device"] = {"display": sample.device}
    return {"fullUrl": f"urn:uuid:{resource_id}", "resource": resource}


async def bundle_json(
    session: Session, partitions: AsyncIterable[Sequence[Sample]], *, now_ms: int
) -> AsyncIterator[bytes]:
    """The Bundle's JSON in chunks: the head with the Encounter, one chunk per partition of
    Observations, then the closing brackets."""
    head = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "collection",
        "timestamp": iso_ms(now_ms),
    }
    yield orjson.dumps(head)[:-1] + b',"entry":[' + orjson.dumps(encounter(session))
    ref = {"reference": f"urn:uuid:{session.id}"}
    async for partition in partitions:
        if partition:
            entries = b",".join(
                orjson.dumps(observation(s, session.user_id, ref)) for s in partition
            )
            yield b"," + entries
    yield b"]}"
