"""The daemon the attack scripts (benchmarks/attack_*.py) aim at, in its own
process: tests/reliability_support.py's server (Add, Block, Release,
Pending, Big, BigAfter, Hold) plus methods that hand out descriptors, served
by ``serve_forever`` in the main thread as a real daemon is (so SIGTERM and
SIGINT shut it down gracefully).

``python benchmarks/_attack_server.py PATH BACKEND KWARGS_JSON`` serves on
PATH with ``Server(**KWARGS)``, prints ``ready`` once a call is answered,
and shuts down when its stdin is closed. Keys of KWARGS that start with an
underscore are not the server's:

* ``_nofile``: ``[soft, hard]`` ``RLIMIT_NOFILE`` set before serving;
* ``_spare_threads``: drop to uid 65534 with that many threads to spare
  (``RLIMIT_NPROC``), once listening;
* ``_profile``: a path: the main thread (the event loop of the anyio
  engine) runs under cProfile, whose stats are written there at exit;
  ``_profile_threads``: a path: every thread (the threads engine) does,
  one stats file per thread, ``PATH.N``;
* ``_switch_interval``: ``sys.setswitchinterval`` (how long a thread that
  does not block may hold the GIL; CPython's default is 5 ms).
"""

from __future__ import annotations

import json
import os
import resource
import socket
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from pydantic import BaseModel  # noqa: E402

from reliability_support import drop_to_thread_limit, make_server  # noqa: E402
from unixrpc import FD, FileDescriptor, Method  # noqa: E402


class Handle(BaseModel):
    fd: FD


class FdAfter(Method[Handle]):
    """A plain ``def`` handler that sleeps *seconds*, then hands out a new
    descriptor (of /dev/null) with ``FileDescriptor.transfer``."""

    seconds: float


class AsyncFdAfter(Method[Handle]):
    """The same, ``async def``."""

    seconds: float


def build(backend: str, kwargs: dict[str, object]):  # type: ignore[no-untyped-def]
    server = make_server(backend, **kwargs)

    @server.method(FdAfter)
    def fd_after(req: FdAfter) -> Handle:
        time.sleep(req.seconds)
        return Handle(fd=FileDescriptor.transfer(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)))

    @server.method(AsyncFdAfter)
    async def async_fd_after(req: AsyncFdAfter) -> Handle:
        import anyio

        await anyio.sleep(req.seconds)
        return Handle(fd=FileDescriptor.transfer(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)))

    return server


def _answered(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(path)
            body = b'{"id":1,"method":"Add","params":{"a":2,"b":3}}'
            sock.sendall(len(body).to_bytes(4, "big") + b"\0\0" + body)
            return b'"result":5' in sock.recv(100)
    except OSError:
        return False


def main() -> None:
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1)
    path, backend, kwargs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    nofile = kwargs.pop("_nofile", None)
    spare = kwargs.pop("_spare_threads", None)
    profile = kwargs.pop("_profile", None)
    profile_threads = kwargs.pop("_profile_threads", None)
    switch_interval = kwargs.pop("_switch_interval", None)
    if switch_interval is not None:
        sys.setswitchinterval(switch_interval)
    if nofile is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, tuple(nofile))
    server = build(backend, kwargs)

    def watch() -> None:
        while not _answered(path):
            time.sleep(0.01)
        if spare is not None:
            drop_to_thread_limit(spare)
        print("ready", flush=True)
        sys.stdin.read()  # until the attack script closes it
        server.shutdown()

    threading.Thread(target=watch, daemon=True).start()
    profiler = None
    if profile is not None:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    if profile_threads is not None:
        _profile_every_thread(profile_threads)
    try:
        server.serve_forever(path, backend=backend)
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile)


def _profile_every_thread(prefix: str) -> None:
    import cProfile
    import itertools

    numbers = itertools.count()
    original_run = threading.Thread.run

    def run(self: threading.Thread) -> None:
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            original_run(self)
        finally:
            profiler.disable()
            profiler.dump_stats(f"{prefix}.{next(numbers)}")

    threading.Thread.run = run  # type: ignore[method-assign]


if __name__ == "__main__":
    main()
