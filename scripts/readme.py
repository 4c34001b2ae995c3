"""Regenerate the README's generated sections: the configuration table (from ``Settings``) and the
benchmark table (from every ``bench/results/*.json``). ``make bench`` runs it; tests check that
neither table has drifted from what this renders.

    uv run python -m scripts.readme
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from bench.report import bench_table

from vitalcast.settings import Settings

ROOT = Path(__file__).resolve().parent.parent

README = ROOT / "README.md"


def settings_table() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = "unset" if field.default is None else f"`{field.default}`"
        if name == "data_dir":
            default = "`./.vitalcast`"
        rows.append(f"| `VITALCAST_{name.upper()}` | {default} | {field.description} |")
    return "\n".join(rows)


def replace_section(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"README has no {name} section")
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)


def render(text: str, results: dict[str, Any]) -> str:
    text = replace_section(text, "settings", settings_table())
    return replace_section(text, "bench", bench_table(results))


def load_results() -> dict[str, Any]:
    folder = ROOT / "bench" / "results"
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


if __name__ == "__main__":
    README.write_text(render(README.read_text(), load_results()))
    print("README.md updated")
