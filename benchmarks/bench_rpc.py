"""Typed RPC layer: call latency and 64-in-flight throughput, in one run.

Each server runs in its own process; everything is pinned to one CPU (see
bench_raw.py for why). Cases:

* floor -- plain blocking socket client and server, length prefix + orjson,
  the same payload as ``Add(a=1, b=2)``;
* the floor client against a hand-written asyncio-streams server: what an
  event-loop server costs before any framework (the event-loop floor);
* ``Client.call(Add(a=1, b=2))`` against a unixrpc Server (asyncio, then
  trio), sequential;
* the same Client against the blocking floor server and against the
  asyncio-streams server, both speaking the unixrpc wire format: the client's
  own cost, and the client with the event-loop floor;
* ``AsyncClient.call`` on asyncio and on trio, sequential;
* ``Client.call`` against the threads backend (plain ``def`` and ``async
  def`` Add), and against the asyncio Server with a plain ``def`` Add;
* 64 threads sharing one sync ``Client``, against the threads backend and
  against the asyncio Server (the same plain ``def`` handler);
* 64 calls in flight on one connection: AsyncClient on asyncio vs a
  hand-written asyncio-streams client with request ids against an
  asyncio-streams server.

Where uvloop is installed (``unixrpc[uvloop]``), the asyncio Server and
AsyncClient on uvloop too, beside plain asyncio.

Run: ``python benchmarks/bench_rpc.py [CALLS]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import orjson

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import measure_samples, paired_ratio, peer, pin_to_one_cpu
from _rpc_peers import Add

from unixrpc import AsyncClient, Client

N = 10_000
REPEATS = 5
THROUGHPUT_REPEATS = 9
IN_FLIGHT = 64


@contextmanager
def rpc_peer(kind: str, tmp: str) -> Iterator[str]:
    path = os.path.join(tmp, f"{kind}.sock")
    with peer("_rpc_peers.py", kind, path):
        yield path


def floor_calls(path: str, n: int) -> float:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    buf = bytearray(65536)
    view = memoryview(buf)
    try:
        t0 = time.perf_counter()
        for call_id in range(n):
            body = orjson.dumps({"id": call_id, "method": "Add", "params": {"a": 1, "b": 2}})
            sock.sendall(len(body).to_bytes(4, "big") + body)
            got = sock.recv_into(buf)
            while got < 4 or got < 4 + int.from_bytes(buf[:4], "big"):
                got += sock.recv_into(view[got:])
            reply = orjson.loads(buf[4 : 4 + int.from_bytes(buf[:4], "big")])
            assert reply["result"] == 3
        return (time.perf_counter() - t0) / n
    finally:
        sock.close()


def sync_calls(path: str, n: int) -> float:
    with Client(path) as client:
        request = Add(a=1, b=2)
        t0 = time.perf_counter()
        for _ in range(n):
            client.call(request)
        return (time.perf_counter() - t0) / n


async def async_calls(path: str, n: int) -> float:
    async with AsyncClient(path) as client:
        request = Add(a=1, b=2)
        t0 = time.perf_counter()
        for _ in range(n):
            await client.call(request)
        return (time.perf_counter() - t0) / n


def threads_in_flight(path: str, n: int) -> float:
    """Seconds per call with IN_FLIGHT threads sharing one sync Client."""
    import threading

    with Client(path) as client:
        request = Add(a=1, b=2)
        count = n // IN_FLIGHT
        barrier = threading.Barrier(IN_FLIGHT + 1)

        def worker() -> None:
            barrier.wait()
            for _ in range(count):
                client.call(request)

        threads = [threading.Thread(target=worker) for _ in range(IN_FLIGHT)]
        for thread in threads:
            thread.start()
        barrier.wait()
        t0 = time.perf_counter()
        for thread in threads:
            thread.join()
        return (time.perf_counter() - t0) / (count * IN_FLIGHT)


async def async_in_flight(path: str, n: int) -> float:
    """Seconds per call with IN_FLIGHT tasks calling at once."""
    async with AsyncClient(path) as client:
        request = Add(a=1, b=2)

        async def worker(count: int) -> None:
            for _ in range(count):
                await client.call(request)

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(IN_FLIGHT):
                tg.start_soon(worker, n // IN_FLIGHT)
        return (time.perf_counter() - t0) / (n // IN_FLIGHT * IN_FLIGHT)


async def streams_in_flight(path: str, n: int) -> float:
    """The asyncio-streams baseline: a reader task files replies by id."""
    reader, writer = await asyncio.open_unix_connection(path)
    pending: dict[int, asyncio.Future[int]] = {}
    ids = itertools.count()

    async def read_replies() -> None:
        while True:
            header = await reader.readexactly(4)
            reply = orjson.loads(await reader.readexactly(int.from_bytes(header, "big")))
            pending.pop(reply["id"]).set_result(reply["result"])

    async def call() -> int:
        call_id = next(ids)
        future = pending[call_id] = asyncio.get_running_loop().create_future()
        body = orjson.dumps({"id": call_id, "method": "Add", "params": {"a": 1, "b": 2}})
        writer.write(len(body).to_bytes(4, "big") + body)
        return await future

    async def worker(count: int) -> None:
        for _ in range(count):
            await call()

    reader_task = asyncio.create_task(read_replies())
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(n // IN_FLIGHT) for _ in range(IN_FLIGHT)))
    elapsed = time.perf_counter() - t0
    reader_task.cancel()
    writer.close()
    return elapsed / (n // IN_FLIGHT * IN_FLIGHT)


# (case, reference, target): the ratios issue 18 sets between cases of one run
TARGETS = [
    ("Client.call, threads backend, plain def", "Client.call, blocking floor server", "<= 1.3x"),
    ("Client.call(Add(a=1, b=2)), unixrpc Server", "Client.call, asyncio-streams server", "<= 1.5x"),
    ("Client.call, unixrpc Server on trio", "Client.call(Add(a=1, b=2)), unixrpc Server", "<= 1.0x"),
    ("AsyncClient.call on asyncio", "Client.call(Add(a=1, b=2)), unixrpc Server", "<= 1.15x"),
    ("AsyncClient.call on trio", "Client.call(Add(a=1, b=2)), unixrpc Server", "<= 1.15x"),
    ("Client.call, threads backend, async def", "Client.call, threads backend, plain def", "<= 2x"),
]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else N
    pin_to_one_cpu()
    uvloop = importlib.util.find_spec("uvloop") is not None
    uv = {"use_uvloop": True}
    with (
        tempfile.TemporaryDirectory(prefix="urpc-bench-") as tmp,
        rpc_peer("unixrpc-uvloop", tmp) if uvloop else contextlib.nullcontext("") as uv_path,
        rpc_peer("floor", tmp) as floor_path,
        rpc_peer("unixrpc", tmp) as rpc_path,
        rpc_peer("streams", tmp) as streams_path,
        rpc_peer("floor-unixrpc", tmp) as plain_rpc_path,
        rpc_peer("streams-unixrpc", tmp) as streams_rpc_path,
        rpc_peer("unixrpc-trio", tmp) as trio_rpc_path,
        rpc_peer("unixrpc-def", tmp) as def_rpc_path,
        rpc_peer("threads", tmp) as threads_path,
        rpc_peer("threads-async", tmp) as threads_async_path,
    ):
        latency_samples = measure_samples(
            {
                "floor: blocking socket + length prefix + orjson": lambda: floor_calls(floor_path, n),
                "floor client, asyncio-streams server": lambda: floor_calls(streams_path, n),
                "Client.call(Add(a=1, b=2)), unixrpc Server": lambda: sync_calls(rpc_path, n),
                "Client.call, unixrpc Server on trio": lambda: sync_calls(trio_rpc_path, n),
                "Client.call, blocking floor server": lambda: sync_calls(plain_rpc_path, n),
                "Client.call, asyncio-streams server": lambda: sync_calls(streams_rpc_path, n),
                "AsyncClient.call on asyncio": lambda: anyio.run(async_calls, rpc_path, n, backend="asyncio"),
                "AsyncClient.call on trio": lambda: anyio.run(async_calls, rpc_path, n, backend="trio"),
                "Client.call, threads backend, plain def": lambda: sync_calls(threads_path, n),
                "Client.call, threads backend, async def": lambda: sync_calls(threads_async_path, n),
                "Client.call, asyncio Server, plain def": lambda: sync_calls(def_rpc_path, n),
                **(
                    {
                        "Client.call, asyncio Server on uvloop": lambda: sync_calls(uv_path, n),
                        "AsyncClient.call on uvloop, Server on uvloop": lambda: anyio.run(
                            async_calls, uv_path, n, backend="asyncio", backend_options=uv
                        ),
                    }
                    if uvloop
                    else {}
                ),
            },
            REPEATS,
        )
        latency = {name: statistics.median(values) for name, values in latency_samples.items()}
        throughput = measure_samples(
            {
                "asyncio streams + ids (baseline)": lambda: asyncio.run(streams_in_flight(streams_path, n)),
                "AsyncClient on asyncio": lambda: anyio.run(async_in_flight, rpc_path, n, backend="asyncio"),
                "AsyncClient on trio": lambda: anyio.run(async_in_flight, rpc_path, n, backend="trio"),
                **(
                    {
                        "AsyncClient on uvloop, Server on uvloop": lambda: anyio.run(
                            async_in_flight, uv_path, n, backend="asyncio", backend_options=uv
                        ),
                    }
                    if uvloop
                    else {}
                ),
            },
            THROUGHPUT_REPEATS,
        )
        threads_load = measure_samples(
            {
                "64 threads, one Client, asyncio Server (def)": lambda: threads_in_flight(def_rpc_path, n),
                "64 threads, one Client, threads backend (def)": lambda: threads_in_flight(threads_path, n),
            },
            REPEATS,
        )
    floor_samples = next(iter(latency_samples.values()))
    floor = latency[next(iter(latency))]
    print(f"sequential call latency, {n} calls per run, median of {REPEATS} runs, one CPU")
    print("  ('paired': median over runs of the case's time / the floor's in the same run)")
    for name, seconds in latency.items():
        paired = paired_ratio(latency_samples[name], floor_samples)
        print(f"  {name:<50} {seconds * 1e6:8.2f} us  {seconds / floor:5.2f}x floor  (paired {paired:5.2f}x)")
    async_def = latency_samples["Client.call(Add(a=1, b=2)), unixrpc Server"]
    plain_def = latency_samples["Client.call, asyncio Server, plain def"]
    print(
        "  plain def / async def handler on the asyncio Server: "
        f"{paired_ratio(plain_def, async_def):4.2f}x (paired)"
    )
    print("  issue 18 targets (paired: median over rounds of case / reference in the same round)")
    for case, reference, target in TARGETS:
        ratio = paired_ratio(latency_samples[case], latency_samples[reference])
        print(f"    {case} / {reference}: {ratio:4.2f}x  (target {target})")
    print(f"{IN_FLIGHT} threads sharing one sync Client, median of {REPEATS} rounds")
    reference = next(iter(threads_load.values()))
    for name, samples in threads_load.items():
        seconds = statistics.median(samples)
        print(
            f"  {name:<50} {1 / seconds:10.0f} calls/s"
            f"  (paired {paired_ratio(reference, samples):4.2f}x the first)"
        )
    baseline_samples = next(iter(throughput.values()))
    baseline = statistics.median(baseline_samples)
    print(
        f"throughput with {IN_FLIGHT} calls in flight on one connection, median of "
        f"{THROUGHPUT_REPEATS} rounds; 'paired': median of the per-round ratios"
    )
    for name, samples in throughput.items():
        seconds = statistics.median(samples)
        paired = paired_ratio(baseline_samples, samples)
        print(
            f"  {name:<50} {1 / seconds:10.0f} calls/s  {baseline / seconds:5.2f}x baseline"
            f"  (paired {paired:4.2f}x)"
        )


if __name__ == "__main__":
    main()
