"""``HotRoutes``: the two routes every live session calls every few seconds (its wearable's
``POST /api/v1/samples``, its dashboards' telemetry GET), answered below FastAPI.

FastAPI's route matching, exception middleware and endpoint machinery cost about as much as the
rest of a cached telemetry answer and a tenth of a live update (profiles in docs/design.md), so
these routes are answered here, between the request guard (which has authenticated the caller,
spent its budget and bounds the body as it streams in) and FastAPI. Each still has its FastAPI
route, which documents it and answers it in an app built without this middleware, the same
answer. Errors are answered as the app's handlers would (``api.errors``): a domain error and a
422 as problem+json, a database outage as 503; a body over its limit and a client that left go
back to the guard, anything else on to the outermost middleware, as they would from the route.
Other methods and paths pass through.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from vitalcast.api.errors import (
    ANSWERED_ERRORS,
    domain_problem,
    unexpected_problem,
    validation_problem,
)
from vitalcast.auth import Principal
from vitalcast.errors import VitalcastError
from vitalcast.wiring import ServerParts

#: what a hot route answers: status, raw headers and body
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]
#: a hot route's handler: (parts, principal, scope with its path_params, receive) -> answer
Handler = Callable[[ServerParts, Principal, Scope, Receive], Awaitable[Answer]]


@dataclass(frozen=True, slots=True)
class HotRoute:
    """A FastAPI route (whose method, path pattern and name this matches and reports) and the
    handler that answers it here."""

    route: APIRoute
    method: str
    handler: Handler


def hot_route(routes: Sequence[object], path: str, method: str, handler: Handler) -> HotRoute:
    """The hot route for the ``APIRoute`` of ``routes`` with ``path`` and ``method``."""
    route = next(
        r
        for r in routes
        if isinstance(r, APIRoute) and r.path == path and method in (r.methods or ())
    )
    return HotRoute(route, method, handler)


class HotRoutes:
    """ASGI: answers the ``routes`` itself (see the module's docstring)."""

    def __init__(self, app: ASGIApp, parts: ServerParts, routes: Sequence[HotRoute]) -> None:
        self.app = app
        self._parts = parts
        self._routes = tuple(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal: Principal | None = (
            scope.get("state", {}).get("principal") if scope["type"] == "http" else None
        )
        if principal is not None:
            for hot in self._routes:
                if scope["method"] != hot.method:
                    continue
                found = hot.route.path_regex.match(scope["path"])
                if found is not None:
                    await self._answer(hot, found.groupdict(), principal, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _answer(
        self,
        hot: HotRoute,
        path_params: dict[str, str],
        principal: Principal,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        scope["path_params"] = path_params
        scope["route"] = hot.route  # named in the scope as the router would (the access log)
        try:
            status, headers, body = await hot.handler(self._parts, principal, scope, receive)
        except VitalcastError as exc:
            await domain_problem(exc)(scope, receive, send)
            return
        except RequestValidationError as exc:
            await validation_problem(exc)(scope, receive, send)
            return
        except ANSWERED_ERRORS as exc:
            await unexpected_problem(exc)(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
