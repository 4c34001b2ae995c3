"""Data in and out in other systems' formats: Apple Health exports in, CSV and FHIR R4 out.

Nothing here writes samples itself: an import goes through the ingest service (same validation,
identity and watermarks as ``POST /api/v1/samples``), and exports read what the API would show.
"""
