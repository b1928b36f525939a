"""Large frames: round trips of 1 MiB and of 16 MiB - 1 (just under the
default frame limit) through the raw clients, with the RPC framing
(``FrameSerializer``), against a peer in another process that reads each
frame whole and sends it back.

The floor is a plain blocking socket that reads the reply into a buffer
allocated once, then copies the body out (as any client that hands the
body on must). The clients receive into a buffer sized to the frame, which
goes back to the read size once the frame is taken: this measures what that
costs. Pinned to one CPU like the other benchmarks.
Run: ``python benchmarks/bench_large.py [ROUNDS]``.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time

import anyio

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import measure, peer, pin_to_one_cpu

from unixrpc import AsyncUnixStreamClient, StreamProtocol, UnixStreamClient
from unixrpc._core import wire
from unixrpc._core.framing import FrameSerializer

SIZES = {"1 MiB": 1 << 20, "16 MiB - 1": wire.DEFAULT_MAX_FRAME_SIZE - 1}
ROUNDS = 20
REPEATS = 5


def floor_round_trips(path: str, frame: bytes, rounds: int) -> float:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    buf = bytearray(len(frame))
    view = memoryview(buf)
    try:
        t0 = time.perf_counter()
        for _ in range(rounds):
            sock.sendall(frame)
            got = 0
            while got < len(frame):
                got += sock.recv_into(view[got:])
            bytes(view[wire.HEADER_SIZE :])
        return (time.perf_counter() - t0) / rounds
    finally:
        sock.close()


def sync_round_trips(path: str, frame: bytes, rounds: int) -> float:
    protocol = StreamProtocol(FrameSerializer())
    with UnixStreamClient(path, protocol, max_recv_size=wire.RECV_SIZE) as client:
        t0 = time.perf_counter()
        for _ in range(rounds):
            client.send_data(frame)
            client.recv_packet()
        return (time.perf_counter() - t0) / rounds


async def async_round_trips(path: str, frame: bytes, rounds: int) -> float:
    protocol = StreamProtocol(FrameSerializer())
    async with AsyncUnixStreamClient(path, protocol, max_recv_size=wire.RECV_SIZE) as client:
        t0 = time.perf_counter()
        for _ in range(rounds):
            sent = client.try_send(frame)
            if sent != len(frame):
                await client.finish_send(frame, sent)
            await client.recv_packet()
        return (time.perf_counter() - t0) / rounds


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else ROUNDS
    pin_to_one_cpu()
    with tempfile.TemporaryDirectory(prefix="urpc-bench-") as tmp:
        path = os.path.join(tmp, "bulk.sock")
        with peer("_bulk_peer.py", path):
            for label, size in SIZES.items():
                frame = FrameSerializer().frame_bytes(b"x" * size)
                results = measure(
                    {
                        "floor: blocking socket, buffer allocated once": lambda f=frame: floor_round_trips(
                            path, f, rounds
                        ),
                        "UnixStreamClient": lambda f=frame: sync_round_trips(path, f, rounds),
                        "AsyncUnixStreamClient on asyncio": lambda f=frame: anyio.run(
                            async_round_trips, path, f, rounds, backend="asyncio"
                        ),
                        "AsyncUnixStreamClient on trio": lambda f=frame: anyio.run(
                            async_round_trips, path, f, rounds, backend="trio"
                        ),
                    },
                    REPEATS,
                )
                floor = next(iter(results.values()))
                print(f"{label} frame round trip, {rounds} per run, median of {REPEATS} runs")
                for name, seconds in results.items():
                    print(f"  {name:<52} {seconds * 1e3:8.2f} ms  {seconds / floor:5.2f}x floor")


if __name__ == "__main__":
    main()
