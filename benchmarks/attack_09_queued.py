"""Issue 21 item 9: a connection with more calls queued than threads. 32
blocking calls on one connection (the threads engine runs 16 at once), then
a cancel of the last and a ``unixrpc.Ping`` on the same connection: how
long until each is answered (the blocked calls hold 20 s). Then a graceful
shutdown (grace 3 s) with the calls still blocked, and a call sent on that
connection during it: refused ``ShuttingDown`` or not answered.

Run: ``python benchmarks/attack_09_queued.py [asyncio|trio|threads ...]``.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from _attack import Daemon, encode, engines_from_argv, frame, raw_connect, recv_envelope, socket_dir, table


def wait_reply(sock: object, call_id: int, seconds: float) -> tuple[float | None, object]:
    t0 = time.monotonic()
    sock.settimeout(seconds)  # type: ignore[attr-defined]
    while True:
        try:
            reply = recv_envelope(sock)  # type: ignore[arg-type]
        except OSError:
            return None, "timeout"
        if reply is None:
            return None, "closed"
        if reply.get("id") == call_id:
            return time.monotonic() - t0, reply.get("error", {}).get("code", "result")


def main() -> None:
    rows = []
    for engine in engines_from_argv(sys.argv[1:]):
        with socket_dir() as where, Daemon(os.path.join(where, "s"), engine, shutdown_grace=3) as daemon:
            sock = raw_connect(daemon.path, timeout=30)
            blocks = (
                frame(encode(id=i, method="Block", params={"tag": "q", "seconds": 20})) for i in range(1, 33)
            )
            sock.sendall(b"".join(blocks))
            time.sleep(1)
            sock.sendall(frame(encode(cancel=32)))
            cancel_took, cancel_code = wait_reply(sock, 32, 25)
            sock.sendall(frame(encode(id=100, method="unixrpc.Ping", params={})))
            ping_took, _ = wait_reply(sock, 100, 25)
            stopper = threading.Thread(target=daemon.stop)
            stopper.start()
            time.sleep(0.5)
            sock.sendall(frame(encode(id=200, method="Add", params={"a": 1, "b": 2})))
            during_took, during = wait_reply(sock, 200, 10)
            stopper.join()
            sock.close()

            def fmt(took: float | None) -> str:
                return "none" if took is None else f"{took * 1e3:.0f} ms"

            rows.append(
                [
                    engine,
                    f"{fmt(cancel_took)} ({cancel_code})",
                    fmt(ping_took),
                    f"{during} after {fmt(during_took)}",
                ]
            )
    print(
        table(["engine", "cancel of the 32nd call answered", "Ping answered", "call during shutdown"], rows)
    )


if __name__ == "__main__":
    main()
