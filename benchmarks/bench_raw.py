"""Raw packet layer: small packet round trip against an echo peer in another process.

Times, in one run: a plain blocking socket (4-byte length prefix + orjson,
the floor), UnixStreamClient, and AsyncUnixStreamClient on asyncio and on
trio, all with the same framing and payload. Prints each as a ratio to the
floor. Run: ``make bench`` or ``python benchmarks/bench_raw.py [ROUNDS]``.

The benchmark and its echo peer are pinned to one CPU. Across two cores the
round trip is dominated by cross-core wake-up latency, which swings by tens
of microseconds from run to run and rewards whichever code blocks last;
on one CPU it measures the code path and context switches alone (the design
notes' figures were taken that way too: floor about 14 us).
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time

import anyio
import orjson
from _harness import measure, peer, pin_to_one_cpu

from unixrpc import (
    AsyncUnixStreamClient,
    JSONSerializer,
    LengthPrefixedSerializer,
    StreamProtocol,
    UnixStreamClient,
)

PAYLOAD = {"id": 1, "method": "add", "params": {"a": 1, "b": 2}}
N = 20_000
REPEATS = 5


def floor_round_trips(path: str, n: int) -> float:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    buf = bytearray(65536)
    view = memoryview(buf)
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            body = orjson.dumps(PAYLOAD)
            sock.sendall(len(body).to_bytes(4, "big") + body)
            got = sock.recv_into(buf)
            while got < 4 or got < 4 + int.from_bytes(buf[:4], "big"):
                got += sock.recv_into(view[got:])
            orjson.loads(buf[4 : 4 + int.from_bytes(buf[:4], "big")])
        return (time.perf_counter() - t0) / n
    finally:
        sock.close()


def protocol() -> StreamProtocol[object, object]:
    return StreamProtocol(LengthPrefixedSerializer(JSONSerializer()))


def sync_round_trips(path: str, n: int) -> float:
    with UnixStreamClient(path, protocol()) as client:
        t0 = time.perf_counter()
        for _ in range(n):
            client.send_packet(PAYLOAD)
            client.recv_packet()
        return (time.perf_counter() - t0) / n


async def async_round_trips(path: str, n: int) -> float:
    async with AsyncUnixStreamClient(path, protocol()) as client:
        t0 = time.perf_counter()
        for _ in range(n):
            await client.send_packet(PAYLOAD)
            await client.recv_packet()
        return (time.perf_counter() - t0) / n


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else N
    pin_to_one_cpu()
    with tempfile.TemporaryDirectory(prefix="urpc-bench-") as tmp:
        path = os.path.join(tmp, "echo.sock")
        with peer("_echo.py", path):
            results = measure(
                {
                    "floor: blocking socket + length prefix + orjson": lambda: floor_round_trips(path, n),
                    "UnixStreamClient": lambda: sync_round_trips(path, n),
                    "AsyncUnixStreamClient on asyncio": lambda: anyio.run(
                        async_round_trips, path, n, backend="asyncio"
                    ),
                    "AsyncUnixStreamClient on trio": lambda: anyio.run(
                        async_round_trips, path, n, backend="trio"
                    ),
                },
                REPEATS,
            )
    floor = next(iter(results.values()))
    print(f"small packet round trip, {n} per run, median of {REPEATS} runs (echo peer in another process)")
    for name, seconds in results.items():
        print(f"  {name:<52} {seconds * 1e6:8.2f} us  {seconds / floor:5.2f}x floor")


if __name__ == "__main__":
    main()
