"""Where a process's time went, from a ``bench.cprofiled`` pstats file: as JSON, the busy time
(the event loop's wait, the poll's own time, left out), its share per library (by the file of
each function's own time), and the functions with the most own and cumulative time.

    uv run python -m bench.cprofile_summary FILE.pstats [--top 25]
"""

from __future__ import annotations

import argparse
import json
import pstats
import re
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

#: functions whose own time is the event loop waiting, not work
IDLE = re.compile(r"<method 'poll' of 'select\.epoll'|<method 'select' of|run_once|_run_once")
#: (library, pattern of a function's file), the first match wins
LIBRARIES: tuple[tuple[str, str], ...] = (
    ("bullmq", r"/bullmq/"),
    ("redis-py", r"/redis/"),
    ("socketio/engineio", r"/socketio/|/engineio/"),
    ("websockets", r"/websockets/"),
    ("uvicorn/starlette/fastapi", r"/uvicorn/|/starlette/|/fastapi/"),
    ("pydantic", r"/pydantic"),
    ("sqlalchemy", r"/sqlalchemy/"),
    ("asyncpg", r"/asyncpg/"),
    ("vitalcast", r"/vitalcast/"),
    ("asyncio", r"/asyncio/|uvloop"),
    ("prometheus", r"/prometheus_client/"),
    ("structlog/logging", r"/structlog/|/logging/"),
    ("orjson/json", r"orjson|/json/"),
)


def label(func: tuple[str, int, str]) -> str:
    path, line, name = func
    short = re.sub(r".*/(site-packages|src|lib/python3\.\d+)/", "", path)
    return f"{short}:{line}({name})" if line else name


def summary(path: str, top: int) -> dict[str, Any]:
    stats = pstats.Stats(path)
    entries: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    idle = 0.0
    libraries: Counter[str] = Counter()
    own: Counter[str] = Counter()
    cumulative: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    compiled = [(name, re.compile(pattern)) for name, pattern in LIBRARIES]
    for func, (_cc, nc, tt, ct, _callers) in entries.items():
        name = label(func)
        if IDLE.search(name) and "poll" in name:
            idle += tt
            continue
        own[name] += tt
        cumulative[name] = max(cumulative[name], ct)
        calls[name] += nc
        where = func[0] if func[1] else func[2]
        libraries[next((lib for lib, rx in compiled if rx.search(where)), "other")] += tt
    busy = sum(own.values())
    return {
        "busy_s": round(busy, 3),
        "idle_wait_s": round(idle, 3),
        "libraries_share_of_busy": {
            lib: round(t / busy, 3) for lib, t in libraries.most_common() if t / busy >= 0.005
        },
        "own_time": [
            {"function": f, "s": round(t, 4), "share": round(t / busy, 3), "calls": calls[f]}
            for f, t in own.most_common(top)
        ],
        "cumulative": [
            {"function": f, "s": round(t, 4), "share": round(t / busy, 3), "calls": calls[f]}
            for f, t in cumulative.most_common(top * 2)
        ],
    }


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    print(json.dumps(summary(args.path, args.top), indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
