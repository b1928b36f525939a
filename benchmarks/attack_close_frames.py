"""Found while measuring issue 21: peers that each begin a 16 MiB frame (its
header and just over half a server read), stall, then all close at once.
Figures: the daemon's RSS growth while they stall, its peak in the 3 s after
they close (sampled every 2 ms), and what it keeps. The budget
(``max_buffered_bytes``, 256 MiB) should bound all three.

Run: ``python benchmarks/attack_close_frames.py [N] [asyncio|trio|threads ...]`` (N: 100).
"""

from __future__ import annotations

import os
import sys
import threading
import time

from _attack import HEADER, Daemon, MiB, engines_from_argv, raw_connect, socket_dir, table, timed_add


def main() -> None:
    numbers = [int(arg) for arg in sys.argv[1:] if arg.isdigit()]
    count = numbers[0] if numbers else 100
    body = b'{"id":2,"method":"Big","params":{"size":1,"pad":"' + b"x" * (32 * 1024)
    rows = []
    for engine in engines_from_argv(sys.argv[1:]):
        with socket_dir() as where, Daemon(os.path.join(where, "s"), engine) as daemon:
            for _ in range(10):
                timed_add(daemon.path)
            base = daemon.rss()
            socks = []
            for _ in range(count):
                sock = raw_connect(daemon.path)
                sock.sendall(HEADER.pack(16 * MiB, 0) + body)
                socks.append(sock)
            time.sleep(1)
            held = daemon.rss() - base
            peak = [0]
            stop = threading.Event()

            def watch(
                peak: list[int] = peak,
                stop: threading.Event = stop,
                daemon: Daemon = daemon,
                base: int = base,
            ) -> None:
                while not stop.is_set():
                    peak[0] = max(peak[0], daemon.rss() - base)
                    time.sleep(0.002)

            watcher = threading.Thread(target=watch)
            watcher.start()
            for sock in socks:
                sock.close()
            time.sleep(3)
            stop.set()
            watcher.join()
            rows.append(
                [
                    engine,
                    count,
                    f"{held / MiB:,.0f}",
                    f"{peak[0] / MiB:,.0f}",
                    f"{(daemon.rss() - base) / MiB:,.0f}",
                    "yes" if daemon.alive() else "DIED",
                ]
            )
    print(
        table(
            [
                "engine",
                "connections",
                "RSS growth while they stall MiB",
                "peak after they close MiB",
                "kept MiB",
                "alive",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
