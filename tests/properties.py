"""Hypothesis settings of the property tests that run against the real app and databases."""

from __future__ import annotations

from hypothesis import HealthCheck, settings


def on_real_services(max_examples: int) -> settings:
    """Each example drives real databases, so it is slow (no deadline) and shares the test's
    function-scoped fixtures (every example makes its own user and session, which keeps them
    apart); nothing is replayed from a local example database, so CI and a laptop draw alike."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )
