"""Helpers for the daemon tests: a launcher that puts descriptors at fd 3, 4,
... and execs a child with the LISTEN_* variables (as systemd does), and the
service manager's end of NOTIFY_SOCKET."""

from __future__ import annotations

import array
import fcntl
import json
import os
import socket
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from typing import Any

# dup2() the descriptors given as argv[1] to 3, 4, ... (dup2 clears FD_CLOEXEC),
# close the originals, set LISTEN_PID to this pid when asked, and exec the child:
# the child is the very process the variables name, as under systemd.
LAUNCHER = """
import os, sys
sources = [int(fd) for fd in sys.argv[1].split(",") if fd]
for offset, fd in enumerate(sources):
    os.dup2(fd, 3 + offset)
for fd in sources:
    os.close(fd)
if sys.argv[2] == "self":
    os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.executable, [sys.executable, "-c", *sys.argv[3:]])
"""

PRELUDE = """
import fcntl, json, os, socket, stat, subprocess, sys
from unixrpc import SocketActivationError, listen_fds
from unixrpc.daemon import inherited_listener_at, inherited_listeners

def report(**values):
    print(json.dumps(values), flush=True)

def error_of(call, *args):
    try:
        call(*args)
    except SocketActivationError as exc:
        return str(exc)
    return None

def listen_env_of_a_child():
    out = subprocess.run(
        [sys.executable, "-c", "import os; print([k for k in os.environ if k.startswith('LISTEN_')])"],
        capture_output=True, text=True, check=True,
    ).stdout
    return out.strip()
"""


def _launch(
    code: str,
    fds: Sequence[int],
    *,
    listen_pid: str | None,
    listen_fds_value: str | None,
    names: str | None,
    env: dict[str, str] | None,
    args: Sequence[str],
    run: bool,
) -> subprocess.CompletedProcess[str] | subprocess.Popen[str]:
    # move the sources out of the way of 3, 4, ... first
    sources = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in fds]
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_", "WATCHDOG_"))}
    environ["LISTEN_FDS"] = str(len(fds)) if listen_fds_value is None else listen_fds_value
    if names is not None:
        environ["LISTEN_FDNAMES"] = names
    if listen_pid not in (None, "self"):
        environ["LISTEN_PID"] = listen_pid
    environ.update(env or {})
    argv = [
        sys.executable,
        "-c",
        LAUNCHER,
        ",".join(map(str, sources)),
        "self" if listen_pid == "self" else "",
        PRELUDE + textwrap.dedent(code),
        *args,
    ]
    try:
        if run:
            return subprocess.run(
                argv, pass_fds=sources, env=environ, capture_output=True, text=True, timeout=60, check=False
            )
        return subprocess.Popen(
            argv, pass_fds=sources, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    finally:
        for fd in sources:
            os.close(fd)


def run_activated(
    code: str,
    fds: Sequence[int] = (),
    *,
    listen_pid: str | None = "self",
    listen_fds_value: str | None = None,
    names: str | None = None,
) -> dict[str, Any]:
    """Run *code* (after PRELUDE) with *fds* at 3, 4, ... and the LISTEN_*
    variables; return what it reported (one JSON line)."""
    result = _launch(
        code,
        fds,
        listen_pid=listen_pid,
        listen_fds_value=listen_fds_value,
        names=names,
        env=None,
        args=(),
        run=True,
    )
    assert isinstance(result, subprocess.CompletedProcess)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines, result.stderr
    report: dict[str, Any] = json.loads(lines[-1])
    return report


def spawn_activated(
    code: str,
    fds: Sequence[int] = (),
    *,
    names: str | None = None,
    env: dict[str, str] | None = None,
    args: Sequence[str] = (),
) -> subprocess.Popen[str]:
    """Start *code* (after PRELUDE) as a long-running socket-activated daemon:
    *fds* at 3, 4, ..., LISTEN_PID its own pid, *env* added (NOTIFY_SOCKET,
    WATCHDOG_USEC...), *args* in its ``sys.argv[1:]``."""
    proc = _launch(
        code, fds, listen_pid="self", listen_fds_value=None, names=names, env=env, args=args, run=False
    )
    assert isinstance(proc, subprocess.Popen)
    return proc


def unix_listener(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(8)
    return sock


class Manager:
    """The service manager's end of NOTIFY_SOCKET: a datagram socket that also
    sees each sender's pid (SCM_CREDENTIALS), as systemd does."""

    def __init__(self, sock: socket.socket, notify_socket: str) -> None:
        self.sock = sock
        self.notify_socket = notify_socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)

    def receive(self, timeout: float = 5.0) -> tuple[bytes, int, list[int]]:
        """One datagram: its bytes, the sender's pid (SCM_CREDENTIALS) and any fds."""
        self.sock.settimeout(timeout)
        data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12) + socket.CMSG_SPACE(4 * 8))
        pid = -1
        fds: list[int] = []
        for level, kind, payload in ancdata:
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS):
                pid = struct.unpack("3i", payload[:12])[0]
            elif (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
                fds.extend(array.array("i", payload[: len(payload) - len(payload) % 4]))
        return data, pid, fds

    def wait_for(self, state: bytes, timeout: float = 20.0) -> tuple[list[bytes], int]:
        """Read datagrams until one holds the line *state* (``b"READY=1"``);
        return that datagram's lines and its sender's pid."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no {state!r} from the daemon"
            data, pid, fds = self.receive(left)
            for fd in fds:
                os.close(fd)
            lines = data.split(b"\n")
            if state in lines:
                return lines, pid

    def drain(self) -> list[bytes]:
        """Every datagram already queued, without waiting."""
        got = []
        self.sock.setblocking(False)
        try:
            while True:
                got.append(self.sock.recv(4096))
        except BlockingIOError:
            return got

    def nothing_pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return True
        return False


def bind_manager(path_or_abstract: str) -> Manager:
    """A Manager listening on a path, or on ``@name`` in the abstract namespace."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if path_or_abstract.startswith("@"):
        sock.bind(b"\0" + path_or_abstract[1:].encode())
    else:
        sock.bind(path_or_abstract)
    return Manager(sock, path_or_abstract)
