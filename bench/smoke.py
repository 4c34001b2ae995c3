"""Smoke run of every benchmark script at toy sizes (`make bench-smoke`, run by .ci/run after the
tests): each one must finish without an exception, against the same real SQLite, PostgreSQL,
Redis and server subprocesses it measures with, so that a change of an API a script uses fails
CI instead of the next measuring session (bench/incremental stopped at a TypeError unseen).

The figures of a smoke run mean nothing (a handful of requests on a busy machine); they go to a
temporary folder (VITALCAST_BENCH_RESULTS), never over bench/results/*.json, and are discarded.

    uv run python -m bench.smoke [NAME ...]   # NAME: a script's module name, e.g. capacity
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: module and arguments of each run: the smallest sizes each script accepts, every part on
#: (both databases, embedded and scaled out) so that every code path a measurement takes runs
SMOKES: tuple[tuple[str, ...], ...] = (
    ("ingest", "--batches", "2", "--clients", "1"),
    ("partitions", "--history", "1000", "--batches", "2", "--rounds", "1"),
    ("import", "--records", "2000"),
    ("telemetry", "--gets", "5", "--computes", "1", "--runs", "1", "--smoke"),
    ("telemetry", "--runs", "1", "--smoke", "insights"),
    ("incremental", "--batches", "2", "--lengths", "1"),
    ("queue", "--batches", "4", "--sessions", "2", "--workers", "1", "--repeat", "1"),
    ("realtime", "--batches", "2", "--clients", "4", "--sessions", "2", "--rounds", "1"),
    ("realtime", "--burst", "--burst-size", "4", "2", "1"),
    ("alerts", "--rounds", "2"),
    ("auth", "--gets", "5"),
    ("lifecycle", "export", "--samples", "1000", "--backend", "postgres", "--backend", "sqlite"),
    ("lifecycle", "erasure", "--samples", "1000", "--backend", "postgres", "--backend", "sqlite"),
    ("capacity", "--ladder", "2", "--rounds", "1", "--cpu-sessions", "2"),
    ("soak", "--minutes", "0.1", "--sessions", "2", "--clients", "2", "--warm-up-s", "1"),
    (
        "soak",
        "--minutes",
        "0.1",
        "--sessions",
        "2",
        "--clients",
        "2",
        "--warm-up-s",
        "1",
        "--scaled",
    ),
)
#: the modules of bench/ that measure nothing themselves: every other one must be in SMOKES
NOT_BENCHMARKS = frozenset(
    {
        "__init__",
        "common",
        "cprofile_summary",
        "cprofiled",
        "http_client",
        "profile_summary",
        "report",
        "run_all",
        "smoke",
        "targets",
    }
)
#: a smoke run that takes longer than this has hung
TIMEOUT_S = 600


def unsmoked() -> list[str]:
    """The bench scripts SMOKES leaves out (a new script must be added there)."""
    smoked = {name for name, *_args in SMOKES}
    scripts = {path.stem for path in Path(__file__).parent.glob("*.py")}
    return sorted(scripts - smoked - NOT_BENCHMARKS)


def main(names: list[str]) -> int:
    failed = [f"bench.{name} has no smoke run (SMOKES)" for name in unsmoked()]
    with tempfile.TemporaryDirectory(prefix="vc-bench-smoke-") as folder:
        env = os.environ | {"VITALCAST_BENCH_RESULTS": folder}
        for name, *args in SMOKES:
            if names and name not in names:
                continue
            line = f"bench.{name} {' '.join(args)}"
            print(f"== {line}", flush=True)
            began = time.perf_counter()
            try:
                done = subprocess.run(
                    [sys.executable, "-m", f"bench.{name}", *args],
                    env=env,
                    capture_output=True,
                    timeout=TIMEOUT_S,
                )
            except subprocess.TimeoutExpired:
                print(f"   TIMEOUT after {TIMEOUT_S} s", flush=True)
                failed.append(line)
                continue
            spent = time.perf_counter() - began
            if done.returncode != 0:
                # the output of a failed script is its traceback: shown whole, results are not
                sys.stdout.write(done.stdout.decode(errors="replace")[-4000:])
                sys.stdout.write(done.stderr.decode(errors="replace")[-8000:])
                print(f"   FAILED (exit {done.returncode}) after {spent:.1f} s", flush=True)
                failed.append(line)
            else:
                print(f"   ok in {spent:.1f} s", flush=True)
    for line in failed:
        print(f"failed: {line}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
