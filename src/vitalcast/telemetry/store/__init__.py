"""The ``telemetry_cache`` rows: the compute lease and its outcomes, and the named reads of them."""
