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
  them), weighed by the main thread's CPU since the previous tick in microseconds: the process
  clock also runs while only a database thread works, and counting ticks charged that thread's
  CPU (38 % of an embedded server's) to the idle loop. A tick that lands in C code (a socket
  call, the database driver) is charged to the Python function that called it. Each thread's
  CPU over the window is written beside it (``OUT.threads.json``). Overhead: a few percent.
- ``BENCH_PROFILE=cprofile``: cProfile on the thread's CPU clock, a pstats file
  (``bench/cprofile_summary.py``): exact call counts, but its overhead (a clock read per call)
  inflates Python-heavy code two to three times over C calls: use it for counts, not shares.
"""

from __future__ import annotations

import contextlib
import cProfile
import json
import os
import re
import signal
import sys
import threading
import time
from collections import Counter
from types import FrameType

_MODE = os.environ.get("BENCH_PROFILE", "sample")
_HZ = int(os.environ.get("BENCH_PROFILE_HZ", "500"))
_profiler = cProfile.Profile(time.thread_time)
_stacks: Counter[tuple[str, ...]] = Counter()
_main_cpu_at = 0.0
_SHORT = re.compile(r".*/(site-packages|src|lib/python3\.\d+)/")


def _frame_label(frame: FrameType) -> str:
    code = frame.f_code
    return f"{code.co_qualname} ({_SHORT.sub('', code.co_filename)}:{code.co_firstlineno})"


def _tick(_signum: int, frame: FrameType | None) -> None:
    stack = []
    while frame is not None:
        stack.append(_frame_label(frame))
        frame = frame.f_back
    global _main_cpu_at
    now = time.thread_time()
    # the tick comes on the process's CPU clock, which the database threads advance too: weigh
    # it by the main thread's own CPU since the previous tick (microseconds)
    _stacks[tuple(reversed(stack))] += round((now - _main_cpu_at) * 1e6)
    _main_cpu_at = now


_threads_at_start: dict[int, tuple[float, float]] = {}


def _thread_cpu_s() -> dict[int, tuple[float, float]]:
    """CPU seconds (user, system) of each of this process's threads, by native id."""
    tick = os.sysconf("SC_CLK_TCK")
    times = {}
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
            times[int(tid)] = (int(fields[11]) / tick, int(fields[12]) / tick)
    return times


def _write_threads(out: str) -> None:
    """Each thread's CPU over the profiled window beside the profile (``OUT.threads.json``): the
    sampler charges every tick to the main thread's stack, whichever thread spent it."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    now = _thread_cpu_s()
    spent = {
        f"{names.get(tid, 'native')}:{tid}": {
            "user_s": round(user - _threads_at_start.get(tid, (0.0, 0.0))[0], 3),
            "system_s": round(system - _threads_at_start.get(tid, (0.0, 0.0))[1], 3),
        }
        for tid, (user, system) in now.items()
    }
    busiest = sorted(spent.items(), key=lambda kv: -(kv[1]["user_s"] + kv[1]["system_s"]))
    with open(f"{out}.threads.json", "w") as file:
        json.dump(dict(busiest), file, indent=1)


def _start(_signum: int, _frame: FrameType | None) -> None:
    _threads_at_start.clear()
    _threads_at_start.update(_thread_cpu_s())
    if _MODE == "cprofile":
        _profiler.enable()
        return
    global _main_cpu_at
    _stacks.clear()
    _main_cpu_at = time.thread_time()
    signal.signal(signal.SIGPROF, _tick)
    signal.setitimer(signal.ITIMER_PROF, 1 / _HZ, 1 / _HZ)


def _stop(_signum: int, _frame: FrameType | None) -> None:
    out = os.environ["BENCH_CPROFILE_OUT"]
    _write_threads(out)
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
