"""Where a profiled server's CPU went: a summary of py-spy's collapsed stacks.

``bench/realtime.py --burst --profile FILE`` samples the server during the burst's rounds into
FILE (one line per distinct stack: frames joined by ``;``, then the sample count). This prints,
as JSON, the share of samples in each stage of a live update (a stage is recognised by a frame
of its code; the first stage, in the order of ``STAGES``, found in a stack takes the sample), the
threads' shares, and the functions with the most samples of their own.

    uv run python -m bench.profile_summary FILE [--top 25]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: (stage, pattern of a frame that puts a sample in it), the most specific first
STAGES: tuple[tuple[str, str], ...] = (
    ("sqlite thread (aiosqlite / unit of work)", r"aiosqlite/core\.py|unit_thread|_unit_worker"),
    ("socket.io push (emit + engine.io + websocket send)", r"socketio/|engineio/|websockets/"),
    ("statement compilation", r"sqlalchemy/sql/compiler\.py|_compile_w_cache|compile\("),
    ("compute: claim (lease + read)", r"take_lease|\bclaim\b|_claim\b"),
    ("compute: save", r"cache\.py:\d+\);?[^;]*\bsave\b|\bsave \(vitalcast|save_many"),
    ("compute: read + aggregate + assemble", r"compute_views|_compute_claimed|aggregate_many"),
    ("ingest service", r"vitalcast/ingest/"),
    ("auth", r"vitalcast/auth\.py|vitalcast/api/auth"),
    ("metrics endpoint", r"metrics_endpoint|prometheus_client"),
    ("request stack (uvicorn, starlette, fastapi)", r"uvicorn/|starlette/|fastapi/"),
    ("sqlalchemy (execute, results, pool)", r"sqlalchemy/"),
    ("event loop", r"asyncio/"),
)


def parse(path: Path) -> Counter[str]:
    stacks: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[stack] += int(count)
    return stacks


def summary(stacks: Counter[str], top: int) -> dict[str, Any]:
    total = sum(stacks.values())
    compiled = [(name, re.compile(pattern)) for name, pattern in STAGES]
    stages: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for stack, n in stacks.items():
        frames = stack.split(";")
        thread = "main" if "run_server" in stack or "asyncio" in frames[0] else "other threads"
        if frames[0].startswith("_bootstrap"):
            thread = "other threads"
        threads[thread] += n
        own[re.sub(r":\d+\)$", ")", frames[-1])] += n
        stage = next((name for name, rx in compiled if rx.search(stack)), "other")
        stages[stage] += n

    def share(counter: Counter[str]) -> dict[str, float]:
        return {k: round(100 * v / total, 1) for k, v in counter.most_common()}

    return {
        "samples": total,
        "stage_share_pct": share(stages),
        "thread_share_pct": share(threads),
        "top_own_pct": {k: round(100 * v / total, 1) for k, v in own.most_common(top)},
    }


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    print(json.dumps(summary(parse(args.profile), args.top), indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
