"""What the attack scripts (benchmarks/attack_*.py) share: the daemon in
its own process (benchmarks/_attack_server.py) and what they read of it in
/proc, raw peers (tests/reliability_support.py's), CPU hogs, latency
percentiles and tables.

Each attack is run as a hostile local peer would, against a default
``Server()`` unless it says otherwise, on every engine (asyncio, trio,
threads); the scripts print figures, they assert nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from reliability_support import (  # noqa: E402, F401  (re-exported for the scripts)
    HEADER,
    add_request,
    encode,
    frame,
    raw_connect,
    recv_envelope,
    send_with_fds,
    wait_for,
)

ENGINES = ("asyncio", "trio", "threads")
MiB = 1024 * 1024
SERVER = os.path.join(HERE, "_attack_server.py")
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "sdk"), os.path.join(ROOT, "tests")]))


def engines_from_argv(argv: Sequence[str]) -> tuple[str, ...]:
    chosen = tuple(arg for arg in argv if arg in ENGINES)
    return chosen or ENGINES


def proc_status(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class Daemon:
    """benchmarks/_attack_server.py in its own process, on *path*."""

    def __init__(self, path: str, backend: str, preexec: Any = None, **kwargs: Any) -> None:
        self.path = path
        self.backend = backend
        self._log = tempfile.TemporaryFile()  # noqa: SIM115  (closed by stop())
        self.proc = subprocess.Popen(
            [sys.executable, SERVER, path, backend, json.dumps(kwargs)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=ENV,
            preexec_fn=preexec,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line != b"ready\n":
            self.kill()
            raise RuntimeError(f"the daemon did not start: {line!r}\n{self.log()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def threads(self) -> int:
        return proc_status(self.pid, "Threads")

    def rss(self) -> int:
        """Resident memory, bytes."""
        return proc_status(self.pid, "VmRSS") * 1024

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self, seconds: float = 30.0) -> float:
        """Close its stdin (a graceful shutdown): how long it took to exit."""
        t0 = time.monotonic()
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(seconds)
        except subprocess.TimeoutExpired:
            self.kill()
        return time.monotonic() - t0

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.alive():
            self.stop()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


@contextlib.contextmanager
def socket_dir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="atk", dir="/tmp") as where:
        yield where


def timed_add(path: str, timeout: float = 5.0) -> float | None:
    """One Add on a new connection: seconds to its answer, None if none came in *timeout*."""
    t0 = time.perf_counter()
    try:
        with raw_connect(path, timeout=timeout) as sock:
            sock.sendall(add_request(1, 2, 3))
            reply = recv_envelope(sock)
    except OSError:
        return None
    if reply != {"id": 1, "result": 5}:
        return None
    return time.perf_counter() - t0


@contextlib.contextmanager
def cpu_hogs(count: int) -> Iterator[None]:
    """*count* processes that spin and send nothing."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def close_all(socks: Sequence[socket.socket]) -> None:
    for sock in socks:
        sock.close()
