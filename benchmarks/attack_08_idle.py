"""Issue 21 item 8: ``connection_idle_timeout`` must not cut an active
connection. Against an idle timeout of 2 s, 10 clients at once each call
``Add`` every 1.5 s, 6 times: how many were cut.

Run: ``python benchmarks/attack_08_idle.py [asyncio|trio|threads ...]``.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from _attack import Daemon, add_request, engines_from_argv, raw_connect, recv_envelope, socket_dir, table

CLIENTS, CALLS, EVERY = 10, 6, 1.5


def client(path: str, cut: list[int]) -> None:
    with raw_connect(path, timeout=5) as sock:
        for i in range(CALLS):
            try:
                sock.sendall(add_request(i + 1, 2, 3))
                if recv_envelope(sock) != {"id": i + 1, "result": 5}:
                    raise OSError("cut")
            except OSError:
                cut.append(i)
                return
            time.sleep(EVERY)


def main() -> None:
    rows = []
    for engine in engines_from_argv(sys.argv[1:]):
        with (
            socket_dir() as where,
            Daemon(os.path.join(where, "s"), engine, connection_idle_timeout=2) as daemon,
        ):
            cut: list[int] = []
            threads = [threading.Thread(target=client, args=(daemon.path, cut)) for _ in range(CLIENTS)]
            for thread in threads:
                thread.start()
                time.sleep(0.1)
            for thread in threads:
                thread.join()
            rows.append([engine, f"{len(cut)} of {CLIENTS}", sorted(cut)])
    print(table(["engine", f"cut (a call every {EVERY} s, idle timeout 2 s)", "at call #"], rows))


if __name__ == "__main__":
    main()
