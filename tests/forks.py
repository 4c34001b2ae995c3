"""A fork server for the suite's ``python -m …`` children: ``vitalcast`` CLI commands
(``tests.processes.run_cli``), servers and workers (``tests.processes.spawn``), and the test
entry points that wrap them (``tests.stepped_clock``, ``tests.held_server``, ``tests.held_worker``).

Every such child spent 0.5–0.8 s (a CLI command) to about 2 s (a server or worker) of CPU importing
SQLAlchemy, FastAPI, Socket.IO, uvicorn, bullmq, Alembic and vitalcast before it did anything,
hundreds of times per run on 2 cores. This process imports them once; for each child it forks a
process that takes the caller's arguments, environment, working directory and output files, runs
the module as ``python -m MODULE`` would, and exits as the interpreter would. The child is a real,
separate process on the real services, signalled and killed by its pid like any other (it leads a
session of its own); only the imports were done before the fork. Nothing runs in this server but
imports: no event loop, no thread, no connection is inherited.

Protocol (one Unix-socket connection per child): the caller sends one JSON line
``{"module", "args", "env", "cwd"}`` with the child's stdout and stderr as two file descriptors
(``SCM_RIGHTS``: the caller opens them, as for ``Popen``); this server answers the child's pid, then, once it has ended, its exit code as ``subprocess`` reports it (negative: killed
by that signal), one line each. The ended child stays a zombie, its pid reserved, until the caller
closes the connection, so a signal sent by pid never reaches another process (as with ``Popen``);
a child still running when its caller's connection closes is SIGKILLed.

Run as ``python -m tests.forks SOCKET_PATH``; it prints ``ready`` once it listens.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import json
import os
import runpy
import select
import signal
import socket
import sys
import threading
import traceback
from typing import Any, NoReturn

#: what the children import, entry points first (each pulls in most of its dependencies): the
#: CLI, the database layer and migrations, the lazily imported modules of the commands the tests
#: run (token, users, retention, import, backfill), and everything ``serve`` and ``worker`` load
#: before they answer (the app, uvicorn's protocols, the queue, both database drivers)
PRELOAD = (
    "vitalcast.cli",
    "vitalcast.app",
    "vitalcast.queue.runner",
    "vitalcast.api.http_protocol",
    "vitalcast.realtime.broadcaster",
    "vitalcast.db.engine",
    "vitalcast.db.migrate",
    "vitalcast.db.tables",
    "vitalcast.local_tokens",
    "vitalcast.observability",
    "vitalcast.sessions.repository",
    "vitalcast.interop.apple_health",
    "vitalcast.interop.importer",
    "vitalcast.lifecycle.erasure",
    "vitalcast.lifecycle.retention",
    "vitalcast.queue.backfill",
    "vitalcast.wiring",
    "sqlalchemy.dialects.sqlite.aiosqlite",
    "sqlalchemy.dialects.postgresql.asyncpg",
    "aiosqlite",
    "asyncpg",
    "alembic.command",
    "alembic.config",
    "alembic.runtime.migration",
    "rich.console",
    "rich.progress",
    "uvicorn",
    "uvicorn.main",
    "uvicorn.loops.auto",
    "uvicorn.loops.uvloop",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.websockets.auto",
    "uvicorn.lifespan.on",
    "uvicorn.supervisors",
    "engineio.async_drivers.asgi",
    "alembic.ddl.postgresql",
    "alembic.ddl.sqlite",
    "tests.doubles",
)


def serve(path: str) -> NoReturn:
    """Accept children until killed."""
    for name in PRELOAD:
        importlib.import_module(name)
    assert threading.active_count() == 1, "a preloaded module started a thread: forks unsafe"
    # what every child inherits lives as long as it: out of the collector's scans (a server
    # freezes what it loaded itself before serving; here its children need not scan it first)
    gc.collect()
    gc.freeze()
    # handlers exit on their own; they are never waited for
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        if os.fork() == 0:
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            _handle(conn)
        conn.close()


def _handle(conn: socket.socket) -> NoReturn:
    """The handler of one child: forks it, reports its pid, waits for it and reports its exit
    code, then reaps it once the caller has closed the connection. A caller that closes the
    connection while the child runs (it died, or gave the child up) has the child SIGKILLed:
    a child never outlives the test process that started it."""
    try:
        line, fds, _flags, _address = socket.recv_fds(conn, 1 << 16, 2)
        while not line.endswith(b"\n"):
            line += conn.recv(1 << 16)
        pid = os.fork()
        if pid == 0:
            conn.close()
            _exit(_run(json.loads(line), *fds))
        for fd in fds:
            os.close(fd)
        ended = os.pidfd_open(pid)
        conn.sendall(f"{pid}\n".encode())
        caller_gone = False
        while not caller_gone:
            readable, _, _ = select.select([ended, conn], [], [])
            if ended in readable:
                break
            caller_gone = not conn.recv(1024)
        if caller_gone:
            os.kill(pid, signal.SIGKILL)
        else:
            status = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
            assert status is not None
            code = status.si_status if status.si_code == os.CLD_EXITED else -status.si_status
            with contextlib.suppress(OSError):
                conn.sendall(f"{code}\n".encode())
                while conn.recv(1024):  # until the caller closes
                    pass
        os.waitpid(pid, 0)
    finally:
        os._exit(0)


def _exit(code: int) -> NoReturn:
    """Exit as the interpreter would, without its finalization: wait for the child's
    non-daemon threads (after the hooks that tell them to end, e.g. an executor's), run its exit
    handlers, flush its output. (Tearing down every module this server imported cost 0.45 s of
    each CLI command's 0.5 s.)"""
    shutdown = getattr(threading, "_shutdown", None)  # what the interpreter runs at exit
    if shutdown is not None:
        shutdown()
    else:
        for thread in threading.enumerate():
            if thread is not threading.main_thread() and not thread.daemon:
                thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _run(request: dict[str, Any], stdout: int, stderr: int) -> int:
    """Become ``python -m MODULE ARGS`` with the request's environment, directory and output
    (``stdout``, ``stderr``: descriptors the caller sent); its exit code."""
    os.setsid()  # the caller signals the child alone, never this server
    null = os.open(os.devnull, os.O_RDONLY)
    for fd, target in ((null, 0), (stdout, 1), (stderr, 2)):
        os.dup2(fd, target)
    for fd in {null, stdout, stderr}:
        os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    module = request.get("module", "vitalcast")
    sys.argv = [module, *request["args"]]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        code = exit_.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    serve(sys.argv[1])
