"""Bulk data: moving 1 MiB, 64 MiB and 512 MiB to a daemon, in one run.

* floor -- a plain blocking socket: length + the bytes, the peer reads them
  all and answers;
* inline -- ``Client.call(PutInline(data=...))``: the bytes base64-encoded in
  the JSON body (the frame limit raised to fit), decoded by the daemon;
* memfd handoff -- ``Client.call(PutShared(buffer=fd))`` with a sealed memfd
  made beforehand by ``SharedBuffer.from_bytes``: the daemon maps it and
  answers its size. Timed over back-to-back calls, like the small call (a
  single call timed right after moving 64 MiB through the floor socket
  measures cold caches instead). Creating the memfd (one copy of the bytes
  into it) is timed separately;
* a small call (``Add``) for scale: the target is a 64 MiB handoff under 2x it.

Servers run in their own processes; pinned to one CPU like the other
benchmarks. Run: ``python benchmarks/bench_fds.py [REPEATS]``.
"""

from __future__ import annotations

import base64
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _fd_peers import MAX_FRAME, Add, PutInline, PutShared
from _harness import peer, pin_to_one_cpu

from unixrpc import Client, FileDescriptor, SharedBuffer

SIZES = {"1 MiB": 1 << 20, "64 MiB": 64 << 20, "512 MiB": 512 << 20}
#: handoffs per timing: a handoff is timed back to back, as the small call is
HANDOFFS = 300


@contextmanager
def fd_peer(kind: str, tmp: str) -> Iterator[str]:
    path = os.path.join(tmp, f"{kind}.sock")
    with peer("_fd_peers.py", kind, path):
        yield path


def timed(fn: Callable[[], object], repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    pin_to_one_cpu()
    rows: list[tuple[str, float, float, float, float]] = []
    with (
        tempfile.TemporaryDirectory(prefix="urpc-bench-") as tmp,
        fd_peer("floor", tmp) as floor_path,
        fd_peer("unixrpc", tmp) as rpc_path,
        Client(rpc_path, max_frame_size=MAX_FRAME) as client,
    ):
        small = timed(lambda: [client.call(Add(a=1, b=2)) for _ in range(1000)], repeats) / 1000
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as floor_sock:
            floor_sock.connect(floor_path)
            for label, size in SIZES.items():
                data = os.urandom(size)

                def floor(data: bytes = data) -> None:
                    floor_sock.sendall(len(data).to_bytes(8, "big"))
                    floor_sock.sendall(data)
                    assert floor_sock.recv(8, socket.MSG_WAITALL) == len(data).to_bytes(8, "big")

                floor_time = timed(floor, repeats)
                create = timed(lambda data=data: SharedBuffer.from_bytes(data).close(), repeats)
                with SharedBuffer.from_bytes(data) as shared:

                    def handoff_calls(shared: FileDescriptor = shared, size: int = size) -> None:
                        for _ in range(HANDOFFS):
                            assert client.call(PutShared(buffer=shared)) == size

                    # back to back, like the small calls it is compared with
                    handoff = timed(handoff_calls, repeats) / HANDOFFS

                def inline_call(data: bytes = data) -> None:
                    encoded = base64.b64encode(data).decode()
                    assert client.call(PutInline(data=encoded)) == len(data)

                inline = timed(inline_call, max(1, repeats - 1))
                rows.append((label, floor_time, inline, handoff, create))
                del data
    print(f"bulk transfer, median of {repeats} runs; small call (Add) = {small * 1e6:.1f} us")
    header = f"{'size':<8} {'floor':>10} {'inline JSON':>14} {'memfd handoff':>14} {'make memfd':>11}"
    print(f"  {header}  handoff/small")
    for label, floor_time, inline, handoff, create in rows:
        print(
            f"  {label:<8} {floor_time * 1e3:8.2f}ms {inline * 1e3:12.1f}ms {handoff * 1e6:12.1f}us "
            f"{create * 1e3:9.2f}ms  {handoff / small:8.2f}x"
        )
    print("  inline/floor: " + ", ".join(f"{r[0]} {r[2] / r[1]:.1f}x" for r in rows))
    print("  handoff/floor: " + ", ".join(f"{r[0]} {r[3] / r[1]:.4f}x" for r in rows))


if __name__ == "__main__":
    main()
