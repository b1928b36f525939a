"""Large frames: round trips of 1 MiB and of 16 MiB - 1 (just under the
default frame limit) through the raw clients, with the RPC framing
(``FrameSerializer``), against a peer in another process that reads each
frame whole and sends it back.

The floor is a plain blocking socket that reads the reply into a buffer
allocated once, then copies the body out (as any client that hands the
body on must). The clients receive into a buffer sized to the frame, which
goes back to the read size once the frame is taken: this measures what that
costs. Pinned to one CPU like the other benchmarks.

Then a 1 MiB string through the typed layer: ``Client.call(Echo(data=...))``
(and ``AsyncClient.call``) against the threads backend, the asyncio Server
and a blocking server of our wire that answers with orjson (our client
alone), beside the raw floor above and a JSON floor (a blocking socket
client and server, length prefix + orjson, buffers allocated once).
Ratios are paired (median over rounds of floor / case in the same round).
Run: ``python benchmarks/bench_large.py [ROUNDS]``.
"""

from __future__ import annotations

import os
import socket
import statistics
import sys
import tempfile
import time

import anyio
import orjson

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import measure, measure_samples, paired_ratio, peer, pin_to_one_cpu
from _rpc_peers import Echo

from unixrpc import AsyncClient, AsyncUnixStreamClient, Client, StreamProtocol, UnixStreamClient
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


ECHO_SIZE = 1 << 20


def json_floor_calls(path: str, data: str, rounds: int) -> float:
    """A blocking socket speaking our wire with orjson, reply buffer allocated once."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    buf = bytearray(ECHO_SIZE + 4096)
    view = memoryview(buf)
    try:
        t0 = time.perf_counter()
        for call_id in range(rounds):
            body = orjson.dumps({"id": call_id, "method": "Echo", "params": {"data": data}})
            sock.sendall(len(body).to_bytes(4, "big") + b"\0\0" + body)
            got = 0
            while got < 6 or got < 6 + int.from_bytes(buf[:4], "big"):
                got += sock.recv_into(view[got:])
            reply = orjson.loads(view[6:got])
            assert len(reply["result"]) == len(data)
        return (time.perf_counter() - t0) / rounds
    finally:
        sock.close()


def echo_calls(path: str, data: str, rounds: int) -> float:
    with Client(path) as client:
        request = Echo(data=data)
        t0 = time.perf_counter()
        for _ in range(rounds):
            client.call(request)
        return (time.perf_counter() - t0) / rounds


async def async_echo_calls(path: str, data: str, rounds: int) -> float:
    async with AsyncClient(path) as client:
        request = Echo(data=data)
        t0 = time.perf_counter()
        for _ in range(rounds):
            await client.call(request)
        return (time.perf_counter() - t0) / rounds


def echo_section(tmp: str, bulk_path: str, rounds: int) -> None:
    data = "x" * ECHO_SIZE
    frame = FrameSerializer().frame_bytes(b"x" * ECHO_SIZE)
    paths = {
        kind: os.path.join(tmp, f"{kind}.sock") for kind in ("floor-echo", "echo-threads", "echo-unixrpc")
    }
    with (
        peer("_rpc_peers.py", "floor-echo", paths["floor-echo"]),
        peer("_rpc_peers.py", "echo-threads", paths["echo-threads"]),
        peer("_rpc_peers.py", "echo-unixrpc", paths["echo-unixrpc"]),
    ):
        samples = measure_samples(
            {
                "raw floor: 1 MiB frame, blocking socket": lambda: floor_round_trips(
                    bulk_path, frame, rounds
                ),
                "JSON floor: blocking socket + orjson, both sides": lambda: json_floor_calls(
                    paths["floor-echo"], data, rounds
                ),
                "Client.call, blocking orjson server": lambda: echo_calls(paths["floor-echo"], data, rounds),
                "Client.call, threads backend": lambda: echo_calls(paths["echo-threads"], data, rounds),
                "Client.call, asyncio Server": lambda: echo_calls(paths["echo-unixrpc"], data, rounds),
                "AsyncClient.call on asyncio, asyncio Server": lambda: anyio.run(
                    async_echo_calls, paths["echo-unixrpc"], data, rounds, backend="asyncio"
                ),
            },
            REPEATS,
        )
    raw, json_floor = list(samples.values())[:2]
    print(
        f"1 MiB Echo call, {rounds} per run, median of {REPEATS} runs (paired x the floors: higher is faster)"
    )
    for name, values in samples.items():
        print(
            f"  {name:<52} {statistics.median(values) * 1e3:8.2f} ms"
            f"  {paired_ratio(raw, values):5.2f}x raw floor"
            f"  {paired_ratio(json_floor, values):5.2f}x JSON floor"
        )


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
            echo_section(tmp, path, rounds)


if __name__ == "__main__":
    main()
