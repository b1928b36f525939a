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
os.execv(sys.executable, [sys.executable, "-c", sys.argv[3]])
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
    # move the sources out of the way of 3, 4, ... first
    sources = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in fds]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    env["LISTEN_FDS"] = str(len(fds)) if listen_fds_value is None else listen_fds_value
    if names is not None:
        env["LISTEN_FDNAMES"] = names
    if listen_pid not in (None, "self"):
        env["LISTEN_PID"] = listen_pid
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                LAUNCHER,
                ",".join(map(str, sources)),
                "self" if listen_pid == "self" else "",
                PRELUDE + textwrap.dedent(code),
            ],
            pass_fds=sources,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        for fd in sources:
            os.close(fd)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines, result.stderr
    report: dict[str, Any] = json.loads(lines[-1])
    return report


def unix_listener(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(8)
    return sock


class Manager:
    """The service manager's end: a datagram socket that records senders."""

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

    def nothing_pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return True
        return False
