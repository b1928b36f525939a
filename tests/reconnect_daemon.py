"""The daemon of the reconnect tests (tests/test_reconnect.py), run in its
own process so that it can be killed and started again under the same path.

Run: ``python reconnect_daemon.py PATH BACKEND`` (PATH ``-``: the socket
systemd-socket-activate passes). Handlers are plain ``def`` so that they run
alike on every engine. Every value is a function of the request alone, so a
call answered by a restarted daemon has the same result as by the first.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator

from pydantic import BaseModel

from unixrpc import FD, Method, Server, StreamMethod


class Get(Method[int], name="t.Get", idempotent=True):
    """2 * n, after *delay* seconds."""

    n: int
    delay: float = 0.0


class Bump(Method[int], name="t.Bump"):
    """n + 1, after *delay* seconds (not idempotent: it stands for a write)."""

    n: int
    delay: float = 0.0


class Event(BaseModel):
    seq: int


class Watch(StreamMethod[Event], name="t.Watch"):
    """Events since + 1 .. until, one every *pace* seconds (a cursor)."""

    since: int = 0
    until: int = 1_000_000
    pace: float = 0.002


class ReadFd(Method[str], name="t.ReadFd", idempotent=True):
    """The first bytes of the file *fd*, after *delay* seconds."""

    fd: FD
    delay: float = 0.0


class Pid(Method[int], name="t.Pid", idempotent=True):
    """The daemon's pid."""


server = Server(name="t.reconnect")


@server.method(Get)
def get(request: Get) -> int:
    time.sleep(request.delay)
    return 2 * request.n


@server.method(Bump)
def bump(request: Bump) -> int:
    time.sleep(request.delay)
    return request.n + 1


@server.method(Watch)
def watch(request: Watch) -> Iterator[Event]:
    for seq in range(request.since + 1, request.until + 1):
        yield Event(seq=seq)
        time.sleep(request.pace)


@server.method(ReadFd)
def read_fd(request: ReadFd) -> str:
    time.sleep(request.delay)
    return os.pread(request.fd.fileno(), 100, 0).decode()


@server.method(Pid)
def pid(request: Pid) -> int:
    return os.getpid()


if __name__ == "__main__":
    path, backend = sys.argv[1], sys.argv[2]
    server.serve_forever(None if path == "-" else path, backend=backend)
