"""Real subprocesses for tests: ``python -m vitalcast`` children and a private ``redis-server``.

Every child binds 127.0.0.1 on a free port, is stopped when its block exits and is SIGKILLed
even when the test process itself dies without running any teardown (a ``vitalcast`` child by
the ``tests.forks`` handler that watches its caller, a daemon by a watchdog).
Timeouts are parameters so that each caller keeps the bounds its tests were written against.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import select
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from tests.conftest import TEST_SECRET
from tests.services import executable

# A child's start-up is mostly importing the app: seconds of CPU that a loaded 2-core machine
# hands out slowly when several children start at once. The bound only matters on failure.
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0
#: the TLS settings of the HTTP clients that test helpers make per request (these servers speak
#: plain HTTP, but ``httpx`` loads the CA bundle for every client given none: 18 ms of CPU each,
#: hundreds of times per run in the helpers that poll a server)
CLIENT_TLS = ssl.create_default_context()


#: queue timings (``Settings.queue_*``, ``worker_lease_ms``) for tests whose workers are killed,
#: stopped or fail on purpose: retries wait 0.2 s, then 0.4 s (production: 1 s, 2 s); a killed
#: worker's job is redelivered about 4 … 5 s later (production: 4 … 10 s) and its compute lease
#: is free by then. The job lock keeps its production 4 s: locks of 2 s lapsed on a machine at
#: load 20 (a fresh worker's loop stalled past the renewal), and jobs ran twice.
FAST_QUEUE: dict[str, str] = {
    "queue_stalled_interval_ms": "500",
    "queue_backoff_ms": "200",
    "worker_lease_ms": "4000",
}


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 now (the OS's pick; bind it soon after). The pick
    comes from the kernel's ephemeral range, where any process's next ``bind(0)`` or outgoing
    connection may take it once it is free again: for a server that is stopped and started on
    its port, use ``spare_port``."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: where ``spare_port`` picks when the ephemeral range cannot be read (Linux's default starts
#: at 32768)
EPHEMERAL_LOW_DEFAULT = 32_768
#: how many ports below the ephemeral range ``spare_port`` picks from
SPARE_SPAN = 12_000


def ephemeral_low(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> int:
    """The first port of the kernel's ephemeral range (``bind(0)`` and outgoing connections)."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return EPHEMERAL_LOW_DEFAULT


def spare_port() -> int:
    """A free loopback port below the kernel's ephemeral range, for a server that a test stops
    and starts again on the same port (a Redis or PostgreSQL outage): while it is down, no
    ``bind(0)`` and no outgoing connection of any process can take its port, as they did with a
    ``free_port`` (a restart then failed with "address already in use"). Only another explicit
    pick could, and the pick is random over ``SPARE_SPAN`` ports and checked free."""
    high = ephemeral_low()
    low = max(1_024, high - SPARE_SPAN)
    for _ in range(200):
        port = random.randrange(low, high)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {low}..{high - 1}")


def vitalcast_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """The environment of a ``vitalcast`` subprocess: this one minus every ``VITALCAST_*``, the
    test secret, ``data_dir`` and log level info, then ``VITALCAST_<KEY>`` for each setting
    (``log_level="warning"`` overrides the level)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITALCAST_")}
    env |= {
        "VITALCAST_SECRET": TEST_SECRET,
        "VITALCAST_DATA_DIR": str(data_dir),
        "VITALCAST_LOG_LEVEL": "info",
    }
    return env | {f"VITALCAST_{key.upper()}": value for key, value in settings.items()}


def reap_when_gone(*cleanup: str) -> subprocess.Popen[bytes]:
    """A watchdog that runs ``cleanup`` once this test process is gone, killed included (a
    killed pytest runs no fixture teardown, and a daemon like PostgreSQL outlives its parent).
    Kill the watchdog after a normal teardown."""
    script = 'while kill -0 "$0" 2>/dev/null; do sleep 1; done; exec "$@"'
    return subprocess.Popen(
        ["sh", "-c", script, str(os.getpid()), *cleanup],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _wait_until(
    predicate: Callable[[], bool], what: str, timeout_s: float = START_TIMEOUT_S
) -> None:
    """Poll ``predicate`` every 50 ms; RuntimeError naming ``what`` after ``timeout_s``. The
    predicate may raise to give up early (a child that exited)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not happen within {timeout_s} s")


def stop_process(
    process: subprocess.Popen[bytes] | ForkedProcess, timeout_s: float = STOP_TIMEOUT_S
) -> None:
    """SIGTERM (a graceful shutdown), then SIGKILL if it is still running after ``timeout_s``."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@dataclass
class Child:
    """One ``python -m vitalcast …`` subprocess with its stdout and stderr in a log file."""

    process: ForkedProcess
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def entry_point(args: list[str], clock_file: Path | None) -> tuple[list[str], str]:
    """(arguments, module) of ``vitalcast ARGS``, or with ``clock_file`` of the same command
    (serve or worker) on the test-set clock of ``tests.stepped_clock``."""
    if clock_file is None:
        return args, "vitalcast"
    return [str(clock_file), *args], "tests.stepped_clock"


@contextlib.contextmanager
def spawn(
    args: list[str],
    env: dict[str, str],
    log_path: Path,
    *,
    stop_timeout_s: float = STOP_TIMEOUT_S,
    module: str = "vitalcast",
) -> Iterator[Child]:
    """Run ``python -m MODULE ARGS`` (the ``vitalcast`` CLI unless a test entry point is named)
    with its output appended to ``log_path``, forked from ``tests.forks`` (its imports done
    once per test process, not once per child); on exit it is stopped with
    ``stop_process(…, stop_timeout_s)``."""
    process = fork_child(module, args, env, log_path, log_path, append=True)
    try:
        yield Child(process, log_path)
    finally:
        stop_process(process, stop_timeout_s)
        process.close()


@dataclass
class ServerProcess(Child):
    """One ``vitalcast serve`` subprocess and its base URL."""

    url: str = ""


def wait_healthy(server: ServerProcess, timeout_s: float = START_TIMEOUT_S) -> None:
    """Until ``GET /healthz`` answers 200; RuntimeError with the log if the server exits first
    or does not answer within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=1.0, verify=CLIENT_TLS) as http:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"server exited during start-up:\n{server.log()}")
            try:
                if http.get(f"{server.url}/healthz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"{server.url} did not become healthy:\n{server.log()}")


#: what a child's log says when the port it was given was taken before it could bind it
ADDRESS_IN_USE = "address already in use"
#: ports a child is given before its start fails for good
BIND_ATTEMPTS = 3


def log_size(log_path: Path) -> int:
    """Where the next child's output starts in ``log_path`` (logs are appended to)."""
    try:
        return log_path.stat().st_size
    except FileNotFoundError:
        return 0


def log_since(log_path: Path, offset: int) -> str:
    """What ``log_path`` gained after ``offset`` (``log_size`` before a child started)."""
    with log_path.open("rb") as log_file:
        log_file.seek(offset)
        return log_file.read().decode(errors="replace")


def port_taken(child: Child, log_offset: int) -> bool:
    """The child exited because its port was taken (``free_port`` released it, and another
    process bound it or used it for a connection before the child bound it): then it is started
    again on another port, which no bound on time could avoid."""
    if child.process.poll() is None:
        return False
    return ADDRESS_IN_USE in log_since(child.log_path, log_offset).lower()


@contextlib.contextmanager
def serve_subprocesses(
    env: dict[str, str],
    log_paths: list[Path],
    *,
    start_timeout_s: float = START_TIMEOUT_S,
    stop_timeout_s: float = STOP_TIMEOUT_S,
    clock_file: Path | None = None,
) -> Iterator[list[ServerProcess]]:
    """One ``vitalcast serve`` per log path (on the clock of ``clock_file`` when given), each
    on a free loopback port, started together; every one answers /healthz (each within
    ``start_timeout_s``) before the block runs. A server whose port was taken before it bound
    it is started again on another (``port_taken``)."""
    with contextlib.ExitStack() as stack:

        def start(log_path: Path) -> tuple[ServerProcess, int]:
            port = free_port()
            args, module = entry_point(
                ["serve", "--host", "127.0.0.1", "--port", str(port)], clock_file
            )
            offset = log_size(log_path)
            child = stack.enter_context(
                spawn(args, env, log_path, stop_timeout_s=stop_timeout_s, module=module)
            )
            return ServerProcess(child.process, log_path, f"http://127.0.0.1:{port}"), offset

        started = [start(log_path) for log_path in log_paths]
        servers = []
        for server, offset in started:
            for attempt in range(1, BIND_ATTEMPTS + 1):
                try:
                    wait_healthy(server, start_timeout_s)
                    break
                except RuntimeError:
                    if attempt == BIND_ATTEMPTS or not port_taken(server, offset):
                        raise
                    server, offset = start(server.log_path)
            servers.append(server)
        yield servers


@contextlib.contextmanager
def serve_subprocess(
    env: dict[str, str],
    log_path: Path,
    *,
    start_timeout_s: float = START_TIMEOUT_S,
    stop_timeout_s: float = STOP_TIMEOUT_S,
) -> Iterator[ServerProcess]:
    """``vitalcast serve`` on a free loopback port, answering /healthz before the block runs."""
    with serve_subprocesses(
        env, [log_path], start_timeout_s=start_timeout_s, stop_timeout_s=stop_timeout_s
    ) as (server,):
        yield server


class ForkedProcess:
    """A child of ``tests.forks`` with the part of ``subprocess.Popen`` that the suite uses:
    ``pid``, ``returncode``, ``poll``, ``wait``, ``send_signal``, ``terminate``, ``kill``. The
    fork server reports its exit code over ``conn``; until ``close``, an ended child stays a
    zombie, so its pid is never another process's (as with a ``Popen`` not yet waited for)."""

    def __init__(self, conn: socket.socket, args: list[str]) -> None:
        self.args = args
        self.returncode: int | None = None
        self._conn = conn
        self._buffer = b""
        self._lock = threading.Lock()
        pid = self._line(None)
        assert pid is not None
        self.pid = int(pid)

    def _line(self, timeout_s: float | None) -> bytes | None:
        """The server's next line, or None when none came within ``timeout_s``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select([self._conn], [], [], remaining)
            if not readable:
                return None
            data = self._conn.recv(64)
            if not data:
                raise RuntimeError(f"tests.forks lost the child {self.args}")
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def wait(self, timeout: float | None = None) -> int:
        with self._lock:
            return self._wait(timeout)

    def _wait(self, timeout: float | None) -> int:
        if self.returncode is None:
            line = self._line(timeout)
            if line is None:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            self.returncode = int(line)
        return self.returncode

    def poll(self) -> int | None:
        """The exit code, or None while it runs (or while another thread waits for it, as
        ``Popen.poll`` answers then)."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self._wait(0)
        except subprocess.TimeoutExpired:
            return None
        finally:
            self._lock.release()

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def close(self) -> None:
        """Let the fork server reap the child, SIGKILLing it first if it still runs (so does
        this test process's end: a child never outlives it)."""
        self._conn.close()


class Forks:
    """This test process's ``tests.forks`` server, started at its first child and SIGKILLed
    when this process is gone (``reap_when_gone``) or exits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._folder: Path | None = None
        self._server: subprocess.Popen[bytes] | None = None

    def socket_path(self) -> Path:
        with self._lock:
            if self._server is None or self._server.poll() is not None:
                self._start()
            assert self._folder is not None
            return self._folder / "forks.sock"

    def _start(self) -> None:
        self._folder = Path(tempfile.mkdtemp(prefix="vc-forks-"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("VITALCAST_")}
        self._server = subprocess.Popen(
            [sys.executable, "-m", "tests.forks", str(self._folder / "forks.sock")],
            env=env,
            cwd=Path(__file__).parents[1],
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        reap_when_gone("kill", "-9", str(self._server.pid))
        assert self._server.stdout is not None
        if self._server.stdout.readline().strip() != b"ready":
            raise RuntimeError("tests.forks did not start")
        atexit.register(self._server.kill)

    def start(
        self,
        module: str,
        args: list[str],
        env: dict[str, str],
        stdout: Path,
        stderr: Path,
        *,
        append: bool = False,
    ) -> ForkedProcess:
        """``python -m MODULE ARGS`` with ``env`` in this process's directory, its output
        written to ``stdout`` and ``stderr`` (appended with ``append``, else truncated; one
        file when both are the same path)."""
        request = {"module": module, "args": args, "env": env, "cwd": os.getcwd()}
        mode = "ab" if append else "wb"
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with contextlib.ExitStack() as files:
                out = files.enter_context(stdout.open(mode))
                err = out if stderr == stdout else files.enter_context(stderr.open(mode))
                conn.connect(str(self.socket_path()))
                line = json.dumps(request).encode() + b"\n"
                socket.send_fds(conn, [line], [out.fileno(), err.fileno()])
            return ForkedProcess(conn, [module, *args])
        except BaseException:
            conn.close()
            raise

    def run(
        self, args: list[str], env: dict[str, str], timeout_s: float
    ) -> subprocess.CompletedProcess[str]:
        with tempfile.TemporaryDirectory(prefix="vc-cli-") as folder:
            out, err = Path(folder) / "stdout", Path(folder) / "stderr"
            process = self.start("vitalcast", args, env, out, err)
            try:
                code = process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # the command leads its group
                process.wait()
                raise subprocess.TimeoutExpired(
                    ["vitalcast", *args], timeout_s, out.read_bytes(), err.read_bytes()
                ) from None
            finally:
                process.close()
            return subprocess.CompletedProcess(
                ["vitalcast", *args], code, out.read_text(), err.read_text()
            )


_FORKS = Forks()


#: ``python -m MODULE ARGS`` forked from ``tests.forks`` (``Forks.start``); the caller stops
#: it, then ``close``s it
fork_child = _FORKS.start


def run_cli(
    args: list[str], env: dict[str, str], timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m vitalcast ARGS`` to completion, output captured as text; the exit code is
    the caller's to check (killed and TimeoutExpired after ``timeout_s``). The command is a
    process forked from ``tests.forks``, which has imported the CLI's modules once (about
    0.6 s of CPU that each command's start-up no longer pays)."""
    return _FORKS.run(args, env, timeout_s)


#: ``python -c _MEASURED FILE PROGRAM…`` runs PROGRAM and writes its peak RSS (``ru_maxrss``,
#: KiB) to FILE. The program is forked from this small process rather than from pytest because a
#: child's ``ru_maxrss`` includes the memory it shared with its parent before ``exec``: a child of
#: a large pytest process would report pytest's size, not its own.
_MEASURED = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[1], "w") as report:
    report.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_cli_measured(
    args: list[str], env: dict[str, str], output_dir: Path, timeout_s: float = 120
) -> tuple[subprocess.CompletedProcess[str], float]:
    """``run_cli`` plus the child's own peak resident memory in MiB (see ``_MEASURED``);
    stdout and stderr go through files in ``output_dir``."""
    out_path, err_path = output_dir / "cli.stdout", output_dir / "cli.stderr"
    rss_path = output_dir / "cli.maxrss"
    command = [sys.executable, "-m", "vitalcast", *args]
    with out_path.open("wb") as out, err_path.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-c", _MEASURED, str(rss_path), *command],
            env=env,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    reaper = reap_when_gone("kill", "-9", "--", f"-{process.pid}")
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
    finally:
        reaper.kill()
        reaper.wait(5)
    done = subprocess.CompletedProcess(
        args, process.returncode, out_path.read_text(), err_path.read_text()
    )
    return done, int(rss_path.read_text()) / 1024


def redis_answers(url: str) -> bool:
    """The Redis at ``url`` answers PING (synchronous, for set-up outside an event loop)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


class RedisServer:
    """A ``redis-server`` of the test's own (no persistence) on a ``spare_port``, never the
    shared one. A test may ``stop`` it (SIGTERM, a shutdown) or ``kill`` it (SIGKILL, an outage)
    and ``start`` it again on the same port and URL. Without ``redis-server`` on PATH the test
    goes through ``service_missing``."""

    def __init__(
        self, folder: Path, *, port: int | None = None, start_timeout_s: float = START_TIMEOUT_S
    ) -> None:
        self._program = executable("redis-server")
        self.port = port if port is not None else spare_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._folder = folder
        self._start_timeout_s = start_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._reaper: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Run it; returns once it answers PING (RuntimeError after the start timeout)."""
        self._process = subprocess.Popen(
            [
                self._program,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self._folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._reaper = reap_when_gone("kill", "-9", str(self._process.pid))
        _wait_until(self._answers, "redis-server start", self._start_timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM and wait up to ``timeout_s`` for it to exit (TimeoutExpired if it hangs)."""
        self._end(signal.SIGTERM, timeout_s)

    def kill(self) -> None:
        """SIGKILL: an outage, not a shutdown; returns once the process is gone."""
        self._end(signal.SIGKILL, 10.0)

    def _end(self, signum: int, timeout_s: float) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signum)
            self._process.wait(timeout_s)
        if self._reaper is not None:
            self._reaper.kill()
            self._reaper.wait(5)
        self._process = self._reaper = None

    def _answers(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise RuntimeError("redis-server exited during start-up")
        return redis_answers(self.url)
