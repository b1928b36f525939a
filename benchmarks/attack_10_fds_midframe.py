"""Issue 21 item 10: descriptors sent ahead of their frames. The daemon's
table is 1,024 descriptors (soft and hard); 10 connections each send a
header declaring 100 descriptors with the descriptors, and stall. Figures:
the server's descriptors, how many of the 10 it closed (and told why), and
a fresh client's latency meanwhile.

Run: ``python benchmarks/attack_10_fds_midframe.py [asyncio|trio|threads ...]``.
"""

from __future__ import annotations

import os
import sys
import time

from _attack import (
    HEADER,
    Daemon,
    engines_from_argv,
    raw_connect,
    recv_envelope,
    send_with_fds,
    socket_dir,
    table,
    timed_add,
)


def main() -> None:
    rows = []
    for engine in engines_from_argv(sys.argv[1:]):
        with socket_dir() as where, Daemon(os.path.join(where, "s"), engine, _nofile=[1024, 1024]) as daemon:
            base = daemon.fds()
            socks = []
            body = b'{"id":1,"method":"Add","params":{"a":1,"b":2}}'
            for _ in range(10):
                sock = raw_connect(daemon.path)
                socks.append(sock)
                send_with_fds(sock, HEADER.pack(len(body), 100), 100)
            time.sleep(0.5)
            peak = daemon.fds()
            fresh = timed_add(daemon.path, timeout=5)
            told = closed = 0
            for sock in socks:
                sock.settimeout(0.5)
                try:
                    reply = recv_envelope(sock)
                except (TimeoutError, ConnectionResetError):
                    continue
                closed += 1
                told += reply is not None and "ahead of their frames" in str(reply)
                sock.close()
            rows.append(
                [
                    engine,
                    f"{base} -> {peak}",
                    f"{closed} ({told} told why)",
                    "timed out" if fresh is None else f"{fresh * 1e3:.1f} ms",
                ]
            )
            for sock in socks:
                sock.close()
    print(table(["engine", "server fds", "of 10 closed", "fresh client"], rows))


if __name__ == "__main__":
    main()
