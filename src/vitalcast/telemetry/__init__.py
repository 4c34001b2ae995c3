"""Session telemetry: cached views of a session's samples, exactly fresh, pushed live.

The sub-packages are layers; each imports only those below it (import-linter holds this):
``run`` (computes under a lease and what asks for them) → ``read`` (the GET) → ``store`` (the
cache rows) → ``compute`` (aggregation and pure assembly) → ``scheduling``/``ports`` (the seams
the rest of the process implements) → ``keys`` → ``grid``.
"""
