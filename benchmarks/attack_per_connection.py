"""The worst case per connection, measured (issue 21, docs/reliability.md):
what one connection costs the daemon (its own process, default
``Server()``) in resident memory, descriptors and threads, in each state a
hostile local peer can leave it in:

* ``idle``: one ``Add`` answered, then nothing;
* ``half frame (small)``: then the header of a 100-byte frame and 3 bytes of it;
* ``half frame (16 MiB)``: then the header of a 16 MiB frame and just over
  half a server read (32 KiB + 1) of it, which makes the server allocate
  the frame's buffer; the budget (``max_buffered_bytes``) closes those
  over it;
* ``unsent (256 KiB replies)``: then 64 pipelined ``Big`` calls of 256 KiB
  each, never read;
* ``unsent (small replies)``: then 4 MiB of pipelined ``Add`` calls, never read.

For each state, N connections are put in it on a fresh daemon, then the
daemon's ``VmRSS`` (/proc/PID/status), descriptors (/proc/PID/fd) and
threads (/proc/PID/task) are read against its figures before (the daemon
already served one client); per connection = delta / N. Connections the
server closed meanwhile are counted (the figures are per connection still
open).

Run: ``python benchmarks/attack_per_connection.py [N] [asyncio|trio|threads ...]``.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import time
from collections.abc import Callable

from _attack import (
    HEADER,
    Daemon,
    MiB,
    add_request,
    encode,
    engines_from_argv,
    frame,
    raw_connect,
    recv_envelope,
    socket_dir,
    table,
    timed_add,
)

KiB = 1024


def settle(daemon: Daemon, seconds: float = 1.0) -> None:
    """Wait until the daemon's RSS stops moving (at most a few seconds)."""
    time.sleep(seconds)
    last = daemon.rss()
    for _ in range(20):
        time.sleep(0.25)
        now = daemon.rss()
        if abs(now - last) < 256 * KiB:
            return
        last = now


def answered(sock: socket.socket) -> None:
    sock.sendall(add_request(1, 2, 3))
    assert recv_envelope(sock) == {"id": 1, "result": 5}


def idle(sock: socket.socket) -> None:
    answered(sock)


def half_small(sock: socket.socket) -> None:
    answered(sock)
    sock.sendall(HEADER.pack(100, 0) + b'{"i')


def half_large(sock: socket.socket) -> None:
    answered(sock)
    body = b'{"id":2,"method":"Big","params":{"size":1,"pad":"' + b"x" * (32 * KiB)
    sock.sendall(HEADER.pack(16 * MiB, 0) + body)


def unsent_big(sock: socket.socket) -> None:
    answered(sock)
    sock.setblocking(False)
    data = b"".join(frame(encode(id=i, method="Big", params={"size": 256 * KiB})) for i in range(2, 66))
    _send_what_goes(sock, data)


def unsent_small(sock: socket.socket) -> None:
    answered(sock)
    sock.setblocking(False)
    one = add_request(2, 2, 3)
    _send_what_goes(sock, one * (4 * MiB // len(one)))


def _send_what_goes(sock: socket.socket, data: bytes) -> None:
    """Send what the server takes within 0.2 s of it stopping to take more."""
    view = memoryview(data)
    while view:
        _, writable, _ = select.select([], [sock], [], 0.2)
        if not writable:
            return
        try:
            view = view[sock.send(view) :]
        except BlockingIOError:
            continue
        except OSError:
            return


STATES: dict[str, tuple[Callable[[socket.socket], None], int | None]] = {
    # name: (what each connection does, at most this many connections)
    "idle": (idle, None),
    "half frame (small)": (half_small, None),
    "half frame (16 MiB)": (half_large, 40),
    "unsent (256 KiB replies)": (unsent_big, 300),
    "unsent (small replies)": (unsent_small, 300),
}


def closed_by_server(sock: socket.socket) -> bool:
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN | select.POLLHUP)
    if not poller.poll(0):
        return False
    try:
        sock.setblocking(False)
        while True:
            data = sock.recv(1 << 20)
            if not data:
                return True
            if b'"id":null' in data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def measure(engine: str, state: str, count: int) -> dict[str, float]:
    action, cap = STATES[state]
    n = min(count, cap) if cap else count
    with socket_dir() as where, Daemon(os.path.join(where, "s"), engine) as daemon:
        for _ in range(20):
            timed_add(daemon.path)
        time.sleep(0.5)
        rss0, fds0, threads0 = daemon.rss(), daemon.fds(), daemon.threads()
        socks = []
        try:
            for _ in range(n):
                sock = raw_connect(daemon.path)
                socks.append(sock)
                action(sock)
            settle(daemon)
            closed = sum(closed_by_server(sock) for sock in socks)
            rss, fds, threads = daemon.rss(), daemon.fds(), daemon.threads()
            fresh = timed_add(daemon.path, timeout=10)
        finally:
            for sock in socks:
                sock.close()
        deadline = time.monotonic() + 30
        while daemon.fds() > fds0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        after = daemon.rss()
        open_ = max(n - closed, 1)
        return {
            "n": n,
            "closed": closed,
            "rss0": rss0,
            "rss_delta": rss - rss0,
            "per_conn": (rss - rss0) / open_,
            "fds_per_conn": (fds - fds0) / open_,
            "threads_per_conn": (threads - threads0) / open_,
            "threads": threads,
            "after": after - rss0,
            "fds_back": daemon.fds() - fds0,
            "fresh_ms": -1.0 if fresh is None else fresh * 1e3,
        }


def main() -> None:
    numbers = [int(arg) for arg in sys.argv[1:] if arg.isdigit()]
    count = numbers[0] if numbers else 1000
    rows = []
    for engine in engines_from_argv(sys.argv[1:]):
        for state in STATES:
            r = measure(engine, state, count)
            rows.append(
                [
                    engine,
                    state,
                    f"{int(r['n']):,}",
                    int(r["closed"]),
                    f"{r['rss0'] / MiB:.1f}",
                    f"{r['rss_delta'] / MiB:.1f}",
                    f"{r['per_conn'] / KiB:,.0f}",
                    f"{r['fds_per_conn']:.2f}",
                    f"{r['threads_per_conn']:.2f} ({int(r['threads'])})",
                    f"{r['after'] / MiB:.1f}",
                    int(r["fds_back"]),
                    "timed out" if r["fresh_ms"] < 0 else f"{r['fresh_ms']:.1f}",
                ]
            )
            print(f"{engine} {state} done", file=sys.stderr, flush=True)
    header = [
        "engine",
        "state",
        "conns",
        "closed by server",
        "RSS before MiB",
        "RSS delta MiB",
        "KiB / open conn",
        "fds / conn",
        "threads / conn (total)",
        "RSS delta once closed MiB",
        "fds left",
        "fresh client ms",
    ]
    print(table(header, rows))


if __name__ == "__main__":
    main()
