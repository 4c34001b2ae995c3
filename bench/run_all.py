"""Run every benchmark in turn (each writes bench/results/<name>.json); `make bench` then renders
the README table with scripts/readme.py. The soak runs outside CI and is not part of this."""

from __future__ import annotations

import subprocess
import sys

#: module and arguments of each run
BENCHMARKS = (
    ("ingest",),
    ("partitions",),
    ("import",),
    ("telemetry",),
    ("telemetry", "insights"),
    ("incremental",),
    ("queue",),
    ("realtime",),
    ("realtime", "--burst"),
    ("alerts",),
)

if __name__ == "__main__":
    for name, *args in BENCHMARKS:
        print(f"== bench.{name} {' '.join(args)}", flush=True)
        subprocess.run([sys.executable, "-m", f"bench.{name}", *args], check=True)
