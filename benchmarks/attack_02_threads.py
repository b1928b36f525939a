"""Issue 21 item 2: threads that cannot be started, and threads held by
streams waiting for credit.

(a) The daemon drops to uid 65534 with 20 threads to spare
(``RLIMIT_NPROC``), then 40 connections each send 4 blocking calls (0.5 s):
is the daemon alive, its socket there, how many calls ran or were refused
``Busy``, is it serving after, how many "could not start a thread" lines.
(b) One connection (then 4) opens 256 streams of window 1 and never sends
credit: the daemon's threads (docs/reliability.md: 16 running calls + 1
reading per connection on the threads engine).

Run: ``python benchmarks/attack_02_threads.py [asyncio|trio|threads ...]`` (as root for (a)).
"""

from __future__ import annotations

import os
import sys
import time

from _attack import (
    Daemon,
    encode,
    engines_from_argv,
    frame,
    raw_connect,
    recv_envelope,
    socket_dir,
    table,
    timed_add,
)


def thread_start_failures(engine: str, where: str) -> list[object]:
    os.chmod(where, 0o755)
    path = os.path.join(where, "a")
    with Daemon(path, engine, _spare_threads=20) as daemon:
        socks = [raw_connect(path, timeout=30) for _ in range(40)]
        block = b"".join(
            frame(encode(id=i, method="Block", params={"tag": "t", "seconds": 0.5})) for i in range(1, 5)
        )
        for sock in socks:
            sock.sendall(block)
        ran = busy = other = lost = 0
        for sock in socks:
            for _ in range(4):
                try:
                    reply = recv_envelope(sock)
                except OSError:
                    reply = None
                if reply is None:
                    lost += 1
                    break
                if reply.get("result") == "t":
                    ran += 1
                elif reply.get("error", {}).get("code") == "unixrpc.Busy":
                    busy += 1
                else:
                    other += 1
            sock.close()
        time.sleep(1)
        served = timed_add(path, timeout=10) is not None
        alive, exists = daemon.alive(), os.path.exists(path)
        daemon.stop()
        lines = daemon.log().count("could not start a thread")
        return [
            engine,
            "RLIMIT_NPROC: 20 spare, 40 conns x 4 Block",
            f"ran {ran}, busy {busy}, other {other}, unanswered conns {lost}",
            "yes" if alive else "DIED",
            "yes" if exists else "GONE",
            "yes" if served else "NO",
            lines,
        ]


def credit_threads(engine: str, where: str, connections: int) -> list[object]:
    path = os.path.join(where, f"b{connections}")
    with Daemon(path, engine) as daemon:
        base = daemon.threads()
        socks = []
        for _ in range(connections):
            sock = raw_connect(path, timeout=10)
            socks.append(sock)
            sock.sendall(
                b"".join(frame(encode(id=i, method="Hold", params={}, stream=1)) for i in range(1, 257))
            )
        time.sleep(2)
        peak = daemon.threads()
        served = timed_add(path, timeout=10)
        for sock in socks:
            sock.close()
        time.sleep(1)
        return [
            engine,
            f"{connections} conn x 256 streams waiting for credit",
            f"threads {base} -> {peak} "
            f"(+{(peak - base) / connections:.0f} per conn), {daemon.threads()} after close",
            "yes" if daemon.alive() else "DIED",
            "-",
            "yes" if served is not None else "NO",
            "-",
        ]


def main() -> None:
    rows = []
    for engine in engines_from_argv(sys.argv[1:]):
        with socket_dir() as where:
            if os.geteuid() == 0:
                rows.append(thread_start_failures(engine, where))
            rows.append(credit_threads(engine, where, 1))
            rows.append(credit_threads(engine, where, 4))
    print(table(["engine", "attack", "outcome", "alive", "socket", "served after", "log lines"], rows))


if __name__ == "__main__":
    main()
