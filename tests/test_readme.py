"""The README's generated sections are what the code and the benchmark results say."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
from bench.report import bench_table
from scripts.readme import load_results, settings_table

README = Path(__file__).resolve().parent.parent / "README.md"


def section(name: str) -> str:
    found = re.search(
        rf"<!-- {name}:start -->\n(.*?)\n<!-- {name}:end -->", README.read_text(), re.S
    )
    assert found is not None, f"README has no {name} section"
    return found.group(1)


def test_configuration_table_matches_settings():
    """`python -m scripts.readme` output for Settings stands in the README unchanged."""
    assert section("settings") == settings_table()


def test_benchmark_table_is_rendered_from_every_result():
    """The README's benchmark table is exactly what scripts/readme.py renders from
    bench/results/*.json, and every result file contributes at least one row."""
    results = load_results()
    assert section("bench") == bench_table(results)
    for name, result in results.items():
        alone = bench_table({name: result}).splitlines()[2:]
        assert alone and all(row in section("bench") for row in alone), name


def test_a_result_without_a_renderer_is_an_error_not_a_missing_row():
    results = load_results() | {"mystery": {"benchmark": "mystery", "value": 1}}
    with pytest.raises(KeyError, match="mystery"):
        bench_table(results)


def test_verdicts_follow_the_figures():
    """A figure past its target renders as missed, the same figure within it as met."""
    realtime = copy.deepcopy(load_results()["realtime"])
    realtime["embedded"]["ingest_to_client"]["p99_ms"] = 249.0
    realtime["embedded"]["missed"] = 0
    assert _embedded_row(realtime).endswith("| p99 < 250 ms, none missed | met |")
    realtime["embedded"]["ingest_to_client"]["p99_ms"] = 250.0
    assert _embedded_row(realtime).endswith("| **missed** |")
    realtime["embedded"]["ingest_to_client"]["p99_ms"] = 1.0
    realtime["embedded"]["missed"] = 1
    assert _embedded_row(realtime).endswith("| **missed** |")


def _embedded_row(realtime: dict) -> str:
    rows = bench_table({"realtime": realtime}).splitlines()
    return next(row for row in rows if "at the client, embedded" in row)
