"""Issue 21 item 3: unsent output against the budget. One connection
pipelines 1,150 calls of a method returning 1 MiB and never reads (also with
``max_calls_per_connection=16``); then 8 connections pipeline 256 such calls
each. Figures: the server's peak RSS growth over 8 s (a fresh client served
every 50 ms meanwhile: its worst latency), whether the server closed the
greedy connections, and its RSS once they are gone.

Run: ``python benchmarks/attack_03_unsent.py [asyncio|trio|threads ...]``.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time

from _attack import (
    Daemon,
    MiB,
    encode,
    engines_from_argv,
    frame,
    raw_connect,
    socket_dir,
    table,
    timed_add,
)


def flood(path: str, calls: int) -> object:
    sock = raw_connect(path)
    sock.setblocking(False)
    data = memoryview(b"".join(frame(encode(id=i, method="Big", params={"size": MiB})) for i in range(calls)))
    end = time.monotonic() + 2
    while data and time.monotonic() < end:
        if select.select([], [sock], [], 0.1)[1]:
            with contextlib.suppress(BlockingIOError):
                data = data[sock.send(data) :]
    return sock


def closed(sock: object) -> bool:
    import socket

    assert isinstance(sock, socket.socket)
    try:
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                return True
            if b'"id":null' in chunk:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def run(engine: str, where: str, name: str, connections: int, calls: int, **kwargs: object) -> list[object]:
    with Daemon(os.path.join(where, name), engine, **kwargs) as daemon:
        for _ in range(10):
            timed_add(daemon.path)
        base = daemon.rss()
        socks = [flood(daemon.path, calls) for _ in range(connections)]
        peak, worst, timeouts = 0, 0.0, 0
        end = time.monotonic() + 8
        while time.monotonic() < end:
            took = timed_add(daemon.path, timeout=2)
            if took is None:
                timeouts += 1
            else:
                worst = max(worst, took)
            peak = max(peak, daemon.rss() - base)
            time.sleep(0.05)
        shut = sum(closed(sock) for sock in socks)
        for sock in socks:
            sock.close()  # type: ignore[attr-defined]
        time.sleep(1)
        return [
            engine,
            f"{connections} x {calls} calls of 1 MiB, never read",
            kwargs or "defaults",
            f"{peak / MiB:,.0f}",
            f"{worst * 1e3:.1f}",
            timeouts,
            f"{shut} of {connections}",
            f"{(daemon.rss() - base) / MiB:.0f}",
            "yes" if daemon.alive() else "DIED",
        ]


def main() -> None:
    rows = []
    for engine in engines_from_argv(sys.argv[1:]):
        with socket_dir() as where:
            rows.append(run(engine, where, "a", 1, 1150))
            rows.append(run(engine, where, "b", 1, 1150, max_calls_per_connection=16))
            rows.append(run(engine, where, "c", 8, 256))
    print(
        table(
            [
                "engine",
                "attack",
                "server",
                "peak RSS growth MiB",
                "fresh client worst ms",
                "timeouts",
                "closed by server",
                "RSS growth after MiB",
                "alive",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
