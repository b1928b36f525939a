"""Issue 21 item 5: descriptors a handler returns for a call whose reply
cannot be sent. 50 calls of a handler that sleeps 0.3 s and then returns
``FileDescriptor.transfer(fd)``, each (a) cancelled at once, (b) on a
connection closed at once (the peer left), for a plain ``def`` handler and
an ``async def`` one; then the server's descriptors once every handler has
returned, against its baseline (the leak is what is left).

Run: ``python benchmarks/attack_05_fds.py [asyncio|trio|threads ...]``.
"""

from __future__ import annotations

import os
import sys
import time

from _attack import Daemon, encode, engines_from_argv, frame, raw_connect, recv_envelope, socket_dir, table

CALLS = 50


def attack(daemon: Daemon, method: str, how: str) -> int:
    base = daemon.fds()
    socks = []
    for i in range(CALLS):
        sock = raw_connect(daemon.path)
        call = frame(encode(id=1, method=method, params={"seconds": 0.3}))
        if how == "cancelled":
            sock.sendall(call + frame(encode(cancel=1)))
            recv_envelope(sock)  # its Cancelled
            socks.append(sock)
        else:
            sock.sendall(call)
            time.sleep(0.01)  # (the call has started)
            sock.close()
        del i
    time.sleep(1.5)  # every handler has returned
    for sock in socks:
        sock.close()
    deadline = time.monotonic() + 5
    while daemon.fds() > base and time.monotonic() < deadline:
        time.sleep(0.05)
    return max(daemon.fds() - base, 0)  # (below the baseline: a connection of before had not closed yet)


def main() -> None:
    rows = []
    for engine in engines_from_argv(sys.argv[1:]):
        with socket_dir() as where, Daemon(os.path.join(where, "s"), engine) as daemon:
            for method in ("FdAfter", "AsyncFdAfter"):
                for how in ("cancelled", "peer left"):
                    leaked = attack(daemon, method, how)
                    kind = "def" if method == "FdAfter" else "async def"
                    rows.append([engine, kind, how, f"{leaked} of {CALLS}"])
    print(table(["engine", "handler", "call", "descriptors leaked"], rows))


if __name__ == "__main__":
    main()
