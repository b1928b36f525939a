"""Issue 21 item 11, the smaller ones:

(a) the fatal id-``null`` error after the replies of earlier calls: 5 ``Add``
    calls and a frame over the size limit in one write, 200 times: how often
    the error came before a reply (or a reply was missing);
(b) SIGTERM under load (grace 2 s): 4 connections with 8 calls blocked for
    60 s each and a peer calling ``Add`` in a loop: time to exit, and the
    descriptors and threads last seen before it did;
(c) "accept failed" under a 64-descriptor table: 10 s of connections opened
    and kept (up to 300): how many such lines were logged.

Run: ``python benchmarks/attack_11_small.py [asyncio|trio|threads ...]``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time

from _attack import (
    Daemon,
    add_request,
    encode,
    engines_from_argv,
    frame,
    raw_connect,
    recv_envelope,
    socket_dir,
    table,
)

FATAL = bytes.fromhex("ffffffff0000") + b"{"


def fatal_order(path: str) -> tuple[int, int]:
    early = missing = 0
    for _ in range(200):
        with raw_connect(path, timeout=5) as sock:
            sock.sendall(b"".join(add_request(i, i, 1) for i in range(1, 6)) + FATAL)
            got = []
            with contextlib.suppress(OSError):
                while (reply := recv_envelope(sock)) is not None:
                    got.append(reply.get("id"))
            results = [x for x in got if x is not None]
            if len(results) < 5:
                missing += 1
            elif None in got and got.index(None) < len(got) - 1:
                early += 1
    return early, missing


def sigterm_under_load(daemon: Daemon) -> tuple[float, int, int]:
    socks = []
    for _ in range(4):
        sock = raw_connect(daemon.path, timeout=30)
        sock.sendall(b"".join(frame(encode(id=i, method="Block", params={"tag": "z"})) for i in range(1, 9)))
        socks.append(sock)
    stop = threading.Event()

    def caller() -> None:
        with contextlib.suppress(OSError), raw_connect(daemon.path, timeout=5) as sock:
            i = 0
            while not stop.is_set():
                i += 1
                sock.sendall(add_request(i, 1, 1))
                if recv_envelope(sock) is None:
                    return

    thread = threading.Thread(target=caller)
    thread.start()
    time.sleep(1)
    t0 = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    fds = threads = -1
    while daemon.alive() and time.monotonic() - t0 < 30:
        with contextlib.suppress(OSError, KeyError, ValueError):
            fds, threads = daemon.fds(), daemon.threads()
        time.sleep(0.01)
    took = time.monotonic() - t0
    stop.set()
    thread.join()
    for sock in socks:
        sock.close()
    return took, fds, threads


def accept_failures(engine: str, where: str) -> int:
    with Daemon(os.path.join(where, "c"), engine, _nofile=[64, 64]) as daemon:
        socks: list[object] = []
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                socks.append(raw_connect(daemon.path, timeout=1))
            except OSError:
                time.sleep(0.001)
            if len(socks) > 300:
                socks.pop(0).close()  # type: ignore[attr-defined]
        for sock in socks:
            sock.close()  # type: ignore[attr-defined]
        daemon.stop()
        return daemon.log().count("accept failed")


def main() -> None:
    rows = []
    for engine in engines_from_argv(sys.argv[1:]):
        with socket_dir() as where:
            with Daemon(os.path.join(where, "a"), engine) as daemon:
                early, missing = fatal_order(daemon.path)
            with Daemon(os.path.join(where, "b"), engine, shutdown_grace=2) as daemon:
                took, fds, threads = sigterm_under_load(daemon)
            lines = accept_failures(engine, where)
            rows.append(
                [
                    engine,
                    f"{early} early, {missing} missing replies",
                    f"{took:.1f} s",
                    f"{fds} fds, {threads} threads",
                    lines,
                ]
            )
    print(
        table(
            [
                "engine",
                "(a) fatal error of 200 vs earlier replies",
                "(b) SIGTERM to exit (grace 2 s)",
                "(b) last seen before exit",
                "(c) 'accept failed' lines in 10 s",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
