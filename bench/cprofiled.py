"""``python -m bench.cprofiled ARGS``: ``vitalcast ARGS`` (serve, worker) with a profiler that a
benchmark switches on and off by signal, so only its measured window is profiled: SIGUSR1 starts
it, SIGUSR2 stops it and writes ``$BENCH_CPROFILE_OUT``.

Why in the process: py-spy decides "idle" from a thread's state, and a thread that a loopback
``send`` had just preempted (the woken reader runs first) is runnable, not idle. On a busy
2-core machine a third of a queue worker's py-spy samples were such ``transport.write`` frames,
which cost it no CPU at all. Two profilers that count CPU time only:

- ``BENCH_PROFILE=sample`` (default): a statistical profiler on the process's CPU clock
  (``ITIMER_PROF``, ``BENCH_PROFILE_HZ`` per CPU second, default 500): each tick records the main
  thread's Python stack, written as py-spy's collapsed stacks (``bench/profile_summary.py`` reads
  them). A tick that lands in C code (a socket call, the database driver) is charged to the
  Python function that called it; an idle event loop gets no ticks. Overhead: a few percent.
- ``BENCH_PROFILE=cprofile``: cProfile on the thread's CPU clock, a pstats file
  (``bench/cprofile_summary.py``): exact call counts, but its overhead (a clock read per call)
  inflates Python-heavy code two to three times over C calls: use it for counts, not shares.
"""

from __future__ import annotations

import cProfile
import os
import re
import signal
import sys
import time
from collections import Counter
from types import FrameType

_MODE = os.environ.get("BENCH_PROFILE", "sample")
_HZ = int(os.environ.get("BENCH_PROFILE_HZ", "500"))
_profiler = cProfile.Profile(time.thread_time)
_stacks: Counter[tuple[str, ...]] = Counter()
_SHORT = re.compile(r".*/(site-packages|src|lib/python3\.\d+)/")


def _frame_label(frame: FrameType) -> str:
    code = frame.f_code
    return f"{code.co_qualname} ({_SHORT.sub('', code.co_filename)}:{code.co_firstlineno})"


def _tick(_signum: int, frame: FrameType | None) -> None:
    stack = []
    while frame is not None:
        stack.append(_frame_label(frame))
        frame = frame.f_back
    _stacks[tuple(reversed(stack))] += 1


def _start(_signum: int, _frame: FrameType | None) -> None:
    if _MODE == "cprofile":
        _profiler.enable()
        return
    _stacks.clear()
    signal.signal(signal.SIGPROF, _tick)
    signal.setitimer(signal.ITIMER_PROF, 1 / _HZ, 1 / _HZ)


def _stop(_signum: int, _frame: FrameType | None) -> None:
    out = os.environ["BENCH_CPROFILE_OUT"]
    if _MODE == "cprofile":
        _profiler.disable()
        _profiler.dump_stats(out)
        return
    signal.setitimer(signal.ITIMER_PROF, 0, 0)
    with open(out, "w") as file:
        for stack, n in _stacks.most_common():
            file.write(f"{';'.join(stack)} {n}\n")


def main() -> None:
    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)
    from vitalcast.cli import main as vitalcast

    sys.argv[0] = "vitalcast"
    vitalcast()


if __name__ == "__main__":
    main()
