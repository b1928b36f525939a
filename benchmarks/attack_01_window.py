"""Issue 21 item 1: a stream window of 2**62 (and a second frame in the same
write) against an async-generator stream that never awaits; and the largest
window allowed with credit far beyond it, never read. Figures: the server's
answer, a fresh client's worst latency and timeouts over 5 s meanwhile, the
server's RSS growth, and whether it serves once the attacker leaves.

Run: ``python benchmarks/attack_01_window.py [asyncio|trio|threads ...]``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

from _attack import (
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


def hold_request(call_id: int, window: int) -> bytes:
    return frame(encode(id=call_id, method="Hold", params={}, stream=window))


def watch(daemon: Daemon, seconds: float) -> tuple[float, int, float]:
    """Fresh clients for *seconds*: worst latency (ms), timeouts, RSS growth peak (MiB)."""
    base = daemon.rss()
    worst, timeouts, peak = 0.0, 0, 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        took = timed_add(daemon.path, timeout=2.0)
        if took is None:
            timeouts += 1
        else:
            worst = max(worst, took)
        peak = max(peak, daemon.rss() - base)
        time.sleep(0.05)
    return worst * 1e3, timeouts, peak / MiB


def main() -> None:
    rows = []
    for engine in engines_from_argv(sys.argv[1:]):
        with socket_dir() as where:
            # (a) window 2**62 + a call in the same write
            with Daemon(os.path.join(where, "a"), engine) as daemon, raw_connect(daemon.path) as attacker:
                attacker.sendall(hold_request(1, 2**62) + add_request(2, 2, 3))
                attacker.settimeout(5)
                answers = []
                with contextlib.suppress(OSError):
                    for _ in range(2):
                        reply = recv_envelope(attacker)
                        if reply is None:
                            break
                        answers.append(reply.get("error", {}).get("code", reply.get("result")))
                worst, timeouts, growth = watch(daemon, 5)
                attacker.close()
                after = timed_add(daemon.path)
                rows.append(
                    [
                        engine,
                        "window 2**62 + Add",
                        answers,
                        f"{worst:.1f}",
                        timeouts,
                        f"{growth:.1f}",
                        "yes" if after is not None else "NO",
                    ]
                )
            # (b) window 1,024 (the largest allowed), credit 2**62 x 64, never read
            with Daemon(os.path.join(where, "b"), engine) as daemon, raw_connect(daemon.path) as attacker:
                attacker.setblocking(False)
                credit = b"".join(frame(encode(credit=1, n=2**62)) for _ in range(64))
                with contextlib.suppress(BlockingIOError):
                    attacker.sendall(hold_request(1, 1024) + add_request(2, 2, 3) + credit)
                worst, timeouts, growth = watch(daemon, 5)
                attacker.close()
                after = timed_add(daemon.path)
                rows.append(
                    [
                        engine,
                        "window 1024, credit 2**62 x 64, never read",
                        "-",
                        f"{worst:.1f}",
                        timeouts,
                        f"{growth:.1f}",
                        "yes" if after is not None else "NO",
                    ]
                )
    print(
        table(
            [
                "engine",
                "attack",
                "answers",
                "fresh client worst ms (5 s)",
                "timeouts",
                "RSS growth MiB",
                "served after",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
