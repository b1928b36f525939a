"""Issue 21 item 7 (known open): a peer that never reads its reply. With
``frame_timeout=2`` and ``connection_idle_timeout=2``, a peer pipelines 64
calls of 256 KiB replies and never reads (then, on another connection, the
same followed by a half frame): is it closed within 10 s, and what does the
server hold meanwhile?

Run: ``python benchmarks/attack_07_never_reads.py [asyncio|trio|threads ...]``.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time

from _attack import HEADER, Daemon, MiB, encode, engines_from_argv, frame, raw_connect, socket_dir, table


def hung_up(sock: object) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLHUP | select.POLLERR | select.POLLRDHUP)  # type: ignore[arg-type]
    return any(mask & (select.POLLHUP | select.POLLERR | select.POLLRDHUP) for _, mask in poller.poll(0))


def attack(engine: str, where: str, half: bool) -> list[object]:
    with Daemon(
        os.path.join(where, f"s{half}"), engine, frame_timeout=2, connection_idle_timeout=2
    ) as daemon:
        base = daemon.rss()
        sock = raw_connect(daemon.path)
        sock.setblocking(False)
        data = memoryview(
            b"".join(frame(encode(id=i, method="Big", params={"size": 256 * 1024})) for i in range(64))
        )
        end = time.monotonic() + 2
        while data and time.monotonic() < end:
            if select.select([], [sock], [], 0.1)[1]:
                with contextlib.suppress(BlockingIOError):
                    data = data[sock.send(data) :]
        if half:
            with contextlib.suppress(BlockingIOError):
                sock.send(HEADER.pack(100, 0) + b'{"i')
        t0 = time.monotonic()
        closed_at = None
        held = 0
        while time.monotonic() - t0 < 10:
            held = max(held, daemon.rss() - base)
            if hung_up(sock):
                closed_at = time.monotonic() - t0
                break
            time.sleep(0.1)
        sock.close()
        what = "+ half frame" if half else ""
        return [
            engine,
            f"64 x 256 KiB replies never read {what}",
            "no" if closed_at is None else f"after {closed_at:.1f} s",
            f"{held / MiB:.1f}",
        ]


def main() -> None:
    rows = []
    for engine in engines_from_argv(sys.argv[1:]):
        with socket_dir() as where:
            rows.append(attack(engine, where, False))
            rows.append(attack(engine, where, True))
    print(table(["engine", "attack", "closed within 10 s (timeouts 2 s)", "RSS held MiB"], rows))


if __name__ == "__main__":
    main()
