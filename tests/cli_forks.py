"""A fork server for ``vitalcast`` CLI commands in tests (``tests.processes.run_cli``).

Each ``python -m vitalcast …`` that a test ran spent about 0.5–0.8 s of CPU importing the CLI,
SQLAlchemy, Alembic and the command's modules before it did anything, some 50 times per run.
This process imports them once; for each command it forks a child that takes the caller's
arguments, environment, working directory and output files, runs ``vitalcast.__main__`` as
``python -m vitalcast`` would, and exits as the interpreter would. The command
is a real, separate process on the real database; only the imports were done before the fork,
and it ends without the interpreter's module teardown (``_exit``).

Protocol (one Unix-socket connection per command): the caller sends one JSON line
``{"args", "env", "cwd", "stdout", "stderr"}``; this server answers the command's pid, then its
exit code as ``subprocess`` reports it (negative: killed by that signal), one line each.

Run as ``python -m tests.cli_forks SOCKET_PATH``; it prints ``ready`` once it listens.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import runpy
import signal
import socket
import sys
import threading
import traceback
from typing import Any, NoReturn

#: what the commands import: the CLI, the database layer and migrations, and the lazily
#: imported modules of the commands the tests run (token, users, retention, import, backfill)
PRELOAD = (
    "vitalcast.cli",
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
    "rich.console",
    "rich.progress",
)


def serve(path: str) -> NoReturn:
    """Accept commands until killed."""
    for name in PRELOAD:
        importlib.import_module(name)
    # handlers exit on their own; they are never waited for
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        if os.fork() == 0:
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            request = json.loads(conn.makefile("rb").readline())
            pid = os.fork()
            if pid == 0:
                conn.close()
                _exit(_command(request))
            # the handler: reports the command's pid, waits for it, reports its exit code
            try:
                conn.sendall(f"{pid}\n".encode())
                _, status = os.waitpid(pid, 0)
                conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
            finally:
                os._exit(0)
        conn.close()


def _exit(code: int) -> NoReturn:
    """Exit as the interpreter would, without its finalization: wait for the command's
    non-daemon threads, run its exit handlers, flush its output. (Tearing down every module
    this server imported cost 0.45 s of each command's 0.5 s.)"""
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _command(request: dict[str, Any]) -> int:
    """Become ``python -m vitalcast ARGS`` with the request's environment, directory and
    output; its exit code."""
    os.setsid()  # the caller kills the command alone (a timeout), never this server
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    for fd, target in ((null, 0), (out, 1), (err, 2)):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    sys.argv = ["vitalcast", *request["args"]]
    try:
        runpy.run_module("vitalcast", run_name="__main__", alter_sys=True)
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
