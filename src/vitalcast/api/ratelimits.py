"""Route dependencies that spend one request of the caller's budget or answer 429."""

from __future__ import annotations

from typing import Any

from fastapi import Depends

from vitalcast.api.deps import CurrentUser, Parts
from vitalcast.errors import RateLimited
from vitalcast.ratelimit import Scope


def _enforce(scope: Scope) -> Any:  # Any: what fastapi.Depends returns (typed Any by FastAPI)
    async def enforce_rate_limit(user: CurrentUser, parts: Parts) -> None:
        # A share token reads on its own budget, apart from its owner's.
        spent = Scope.SHARE if user.is_share else scope
        decision = await parts.limiter.hit(spent, user.rate_key)
        if not decision.allowed:
            parts.metrics.rate_limited.labels(scope=spent.value).inc()
            raise RateLimited(
                f"Too many {spent.value} requests; retry in {decision.retry_after_s} s.",
                retry_after_s=decision.retry_after_s,
            )

    return Depends(enforce_rate_limit)


IngestRateLimit = _enforce(Scope.INGEST)
"""Spend one ingest request of the caller's budget or answer 429."""
TelemetryRateLimit = _enforce(Scope.TELEMETRY)
"""Spend one telemetry read of the caller's budget or answer 429."""
SessionsRateLimit = _enforce(Scope.SESSIONS)
"""Spend one session creation of the caller's budget or answer 429."""
