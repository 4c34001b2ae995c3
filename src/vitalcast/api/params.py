"""Request parameters as one pydantic model, validated in one call, for the hottest routes.

FastAPI resolves each declared parameter on every request through generic machinery (aliases,
sequence checks, a validation per field): for the cached telemetry GET's six parameters that
cost more than the cache hit it serves. A ``RouteParams`` model takes the path, query and header
values in one ``model_validate``, answers a bad value with FastAPI's own 422
(``RequestValidationError``: same locations, pydantic's messages), and documents the parameters
in the OpenAPI of the route (``openapi_parameters``), so the description and the check come from
the same fields.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import ClassVar, Literal, Self
from urllib.parse import parse_qsl

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.types import Scope

from vitalcast.json_types import JsonObject

Location = Literal["path", "query", "header"]


class RouteParams(BaseModel):
    """A route's parameters: each field is a query parameter unless ``LOCATIONS`` names it a
    path parameter or a header; a header's name is the field's with dashes (FastAPI's rule)."""

    model_config = ConfigDict(frozen=True)

    #: field name → where it is read, for the fields that are not query parameters
    LOCATIONS: ClassVar[dict[str, Location]] = {}

    @classmethod
    def wire_name(cls, field: str) -> str:
        return field.replace("_", "-") if cls.LOCATIONS.get(field) == "header" else field

    @classmethod
    def read(cls, request: Request) -> Self:
        """The parameters of ``request`` (the last value of a repeated query key, the first of a
        repeated header, as FastAPI takes them); ``RequestValidationError`` when one is bad."""
        return cls.of(request.path_params, request.query_params, request.headers)

    @classmethod
    def of(
        cls, path: Mapping[str, str], query: Mapping[str, str], headers: Mapping[str, str]
    ) -> Self:
        """The parameters from a request's path parameters, query (one value per key) and
        headers (lower-case names, one value each), for a route answered below FastAPI."""
        values: dict[str, object] = dict(query)
        for field, location in cls.LOCATIONS.items():
            source = path if location == "path" else headers
            found = source.get(cls.wire_name(field))
            if found is None:
                values.pop(field, None)
            else:
                values[field] = found
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise RequestValidationError(
                [{**error, "loc": cls._loc(error["loc"])} for error in exc.errors()]
            ) from None

    @classmethod
    def of_scope(cls, scope: Scope, path: Mapping[str, str]) -> Self:
        """``of`` straight from an ASGI scope (query string and raw headers), read as Starlette
        reads them, for a route answered without building a ``Request``."""
        query = _query(scope["query_string"].decode("latin-1"))
        wanted = cls._header_names()
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            if name in wanted:
                headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
        return cls.of(path, query, headers)

    @classmethod
    @functools.cache
    def _header_names(cls) -> frozenset[bytes]:
        return frozenset(
            cls.wire_name(field).encode("latin-1")
            for field, location in cls.LOCATIONS.items()
            if location == "header"
        )

    @classmethod
    def _loc(cls, loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
        field = str(loc[0]) if loc else ""
        return (cls.LOCATIONS.get(field, "query"), cls.wire_name(field), *loc[1:])

    @classmethod
    def openapi_parameters(cls) -> list[JsonObject]:
        """The OpenAPI ``parameters`` of the fields, as FastAPI would document them."""
        properties = cls.model_json_schema()["properties"]
        documented: list[JsonObject] = []
        for field, info in cls.model_fields.items():
            location = cls.LOCATIONS.get(field, "query")
            schema = dict(properties[field])
            if "default" in schema and schema["default"] is None:
                del schema["default"]
            entry: JsonObject = {
                "name": cls.wire_name(field),
                "in": location,
                "required": location == "path" or info.is_required(),
                "schema": schema,
            }
            if info.description:
                entry["description"] = info.description
            documented.append(entry)
        return documented


def _query(query_string: str) -> dict[str, str]:
    """The query's values by key (the last of a repeated key), as Starlette's ``parse_qsl``
    reads it. A query with nothing to unquote (no ``%``, no ``+``: a dashboard's telemetry GET)
    is only split, which is what ``parse_qsl`` then does too, at a third of its cost."""
    if "%" in query_string or "+" in query_string:
        return dict(parse_qsl(query_string, keep_blank_values=True))
    return {
        name: value
        for name, _, value in (pair.partition("=") for pair in query_string.split("&") if pair)
    }
