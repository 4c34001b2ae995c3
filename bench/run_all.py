"""Run every benchmark in turn (each writes bench/results/<name>.json); `make bench` then renders
the README table with scripts/readme.py. The soak runs outside CI and is not part of this."""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = ("ingest", "import", "telemetry", "queue", "realtime")

if __name__ == "__main__":
    for name in BENCHMARKS:
        print(f"== bench.{name}", flush=True)
        subprocess.run([sys.executable, "-m", f"bench.{name}"], check=True)
