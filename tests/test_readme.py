"""The README documents every setting as the code defines it (the table is generated)."""

from __future__ import annotations

from pathlib import Path

from scripts.readme import settings_table

README = Path(__file__).resolve().parent.parent / "README.md"


def test_configuration_table_matches_settings():
    """`python -m scripts.readme` output for Settings stands in the README unchanged."""
    assert settings_table() in README.read_text()
