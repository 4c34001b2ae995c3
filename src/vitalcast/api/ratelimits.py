"""Which requests spend which budget, decided from the method and path by ``api.guard`` once the
caller is known, before any route runs (as the share scope is).

One table instead of a dependency per route: FastAPI resolves a dependency (and the two it needs
for the caller and the parts) on every request, which cost about a tenth of a cached telemetry
GET; here a budget costs one regex match. A route added later spends nothing until it is listed.
"""

from __future__ import annotations

import re

from vitalcast.auth import Principal
from vitalcast.errors import RateLimited
from vitalcast.observability import Metrics
from vitalcast.ratelimit import RateLimiter, Scope

_SESSION = r"^/api/v1/sessions/[^/]+"
#: (method, path pattern, budget), in no particular order: the patterns do not overlap
_BUDGETS: tuple[tuple[str, re.Pattern[str], Scope], ...] = (
    ("POST", re.compile(r"^/api/v1/samples(/delete)?$"), Scope.INGEST),
    ("GET", re.compile(_SESSION + r"/telemetry$"), Scope.TELEMETRY),
    ("GET", re.compile(_SESSION + r"/(export\.csv|fhir)$"), Scope.TELEMETRY),
    ("GET", re.compile(r"^/api/v1/(insights|me/export)$"), Scope.TELEMETRY),
    ("POST", re.compile(r"^/api/v1/sessions$"), Scope.SESSIONS),
)


def budget_of(method: str, path: str) -> Scope | None:
    """The budget a request spends (None: none)."""
    for wanted, pattern, scope in _BUDGETS:
        if method == wanted and pattern.match(path) is not None:
            return scope
    return None


class Budgets:
    """Spends one request of the caller's budget or raises ``RateLimited`` (a 429)."""

    def __init__(self, limiter: RateLimiter, metrics: Metrics) -> None:
        self._limiter = limiter
        self._refused = {scope: metrics.rate_limited.labels(scope=scope.value) for scope in Scope}

    async def spend(self, principal: Principal, scope: Scope) -> None:
        # A share token reads on its own budget, apart from its owner's.
        spent = Scope.SHARE if principal.is_share else scope
        decision = await self._limiter.hit(spent, principal.rate_key)
        if not decision.allowed:
            self._refused[spent].inc()
            raise RateLimited(
                f"Too many {spent.value} requests; retry in {decision.retry_after_s} s.",
                retry_after_s=decision.retry_after_s,
            )
