"""vitalcast: real-time session telemetry for wearable health samples.

Importing the package starts nothing; see ``vitalcast.app.create_app`` and ``vitalcast.cli``.
"""

__version__ = "0.1.0"
