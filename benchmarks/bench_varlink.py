"""The unixrpc Server speaking varlink, against itself speaking unixrpc and
against python-varlink's ThreadingServer and asyncvarlink's server (issue 17), with the same minimal
clients for every server: a blocking socket that writes one message and
reads its reply (varlink: JSON + NUL; unixrpc: a 6-byte header + JSON), so
the figures are the servers'. Two cases: a small call (``Add``) and a
1 MiB echo. Then the clients: unixrpc's VarlinkClient against
python-varlink's Client, calling the same server (ours, asyncio engine).
One CPU; medians of interleaved runs; ratios within this run.

Run: python benchmarks/bench_varlink.py [CALLS]
"""

from __future__ import annotations

import os
import socket
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import orjson
from _harness import measure_samples, paired_ratio, peer, pin_to_one_cpu

N = 2000
BIG_N = 20
REPEATS = 7
MIB = "x" * (1024 * 1024)


@contextmanager
def server(kind: str, tmp: str) -> Iterator[str]:
    path = os.path.join(tmp, f"{kind}.sock")
    with peer("_varlink_peers.py", kind, path):
        yield path


def _read_until(sock: socket.socket, buf: bytearray, done: Callable[[bytearray], int | None]) -> bytes:
    buf.clear()
    while True:
        chunk = sock.recv(1024 * 1024)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
        end = done(buf)
        if end is not None:
            return bytes(buf[:end])


def _nul(buf: bytearray) -> int | None:
    end = buf.find(b"\0")
    return None if end < 0 else end


def _frame(buf: bytearray) -> int | None:
    if len(buf) < 6:
        return None
    end = 6 + int.from_bytes(buf[:4], "big")
    return end if len(buf) >= end else None


def varlink_calls(path: str, n: int, method: str, params: dict[str, object], expect: object) -> float:
    import time

    message = orjson.dumps({"method": f"org.example.bench.{method}", "parameters": params}) + b"\0"
    buf = bytearray()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        t0 = time.perf_counter()
        for _ in range(n):
            sock.sendall(message)
            reply = orjson.loads(_read_until(sock, buf, _nul))
            assert reply["parameters"]["result"] == expect
        return (time.perf_counter() - t0) / n


def unixrpc_calls(path: str, n: int, method: str, params: dict[str, object], expect: object) -> float:
    import time

    body = orjson.dumps({"id": 1, "method": f"org.example.bench.{method}", "params": params})
    frame = len(body).to_bytes(4, "big") + b"\0\0" + body
    buf = bytearray()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        t0 = time.perf_counter()
        for _ in range(n):
            sock.sendall(frame)
            reply = orjson.loads(_read_until(sock, buf, _frame)[6:])
            assert reply["result"] == expect
        return (time.perf_counter() - t0) / n


OURS = (
    "unixrpc wire, asyncio engine",
    "varlink, asyncio engine",
    "unixrpc wire, threads engine",
    "varlink, threads engine",
)
THEIRS = "python-varlink ThreadingServer"
ASYNCVARLINK = "asyncvarlink server"
CLIENTS = ("unixrpc VarlinkClient", "python-varlink Client")


def our_client_calls(path: str, n: int) -> float:
    import time

    from unixrpc import Method
    from unixrpc.varlink.client import VarlinkClient

    class Add(Method[int], name="org.example.bench.Add"):
        a: int
        b: int

    with VarlinkClient(path) as client:
        t0 = time.perf_counter()
        for _ in range(n):
            assert client.call(Add(a=1, b=2)) == 3
        return (time.perf_counter() - t0) / n


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else N
    pin_to_one_cpu()
    add = ("Add", {"a": 1, "b": 2}, 3)
    echo = ("Echo", {"data": MIB}, MIB)
    with (
        tempfile.TemporaryDirectory(prefix="urpc-bench-") as tmp,
        server("unixrpc", tmp) as ours,
        server("unixrpc-threads", tmp) as ours_threads,
        server("python-varlink", tmp) as theirs,
        server("asyncvarlink", tmp) as asyncvarlink,
    ):
        paths = dict(zip(OURS, (ours, ours, ours_threads, ours_threads), strict=True))
        paths[THEIRS] = theirs
        paths[ASYNCVARLINK] = asyncvarlink

        def case(name: str, count: int, call: tuple[str, dict[str, object], object]) -> Callable[[], float]:
            client = varlink_calls if "varlink" in name and "unixrpc wire" not in name else unixrpc_calls
            return lambda: client(paths[name], count, *call)

        small = measure_samples({name: case(name, n, add) for name in (*OURS, THEIRS, ASYNCVARLINK)}, REPEATS)
        big = measure_samples({name: case(name, BIG_N, echo) for name in (*OURS, ASYNCVARLINK)}, REPEATS)
        from _varlink_peers import python_varlink_client

        clients = measure_samples(
            {
                CLIENTS[0]: lambda: our_client_calls(ours, n),
                CLIENTS[1]: lambda: python_varlink_client(ours, n),
            },
            REPEATS,
        )
        # python-varlink reads a message one byte at a time (quadratic: about 16 s per MiB here):
        # one call, once
        their_big = case(THEIRS, 1, echo)()
    print(
        f"one call at a time, one CPU, median of {REPEATS} interleaved runs ({n} small calls, {BIG_N} echoes)"
    )
    for label, samples in (("small call", small), ("1 MiB echo", big)):
        for name, values in samples.items():
            print(f"  {label + ': ' + name:<52} {statistics.median(values) * 1e6:12.1f} us")
        if label == "1 MiB echo":
            print(f"  {label + ': ' + THEIRS:<52} {their_big * 1e6:12.1f} us  (one call)")
        for engine in ("asyncio", "threads"):
            mine = samples[f"varlink, {engine} engine"]
            ratio = paired_ratio(mine, samples[f"unixrpc wire, {engine} engine"])
            if label == "small call":
                faster = paired_ratio(samples[THEIRS], mine)
            else:
                faster = their_big / statistics.median(mine)
            print(
                f"  {label}, {engine} engine: varlink / unixrpc wire {ratio:4.2f}x (paired); "
                f"python-varlink / ours {faster:7.2f}x; "
                f"asyncvarlink / ours {paired_ratio(samples[ASYNCVARLINK], mine):5.2f}x (paired)"
            )
    print("clients, small call to the unixrpc server (varlink, asyncio engine):")
    for name, values in clients.items():
        print(f"  {name:<52} {statistics.median(values) * 1e6:12.1f} us")
    ratio = paired_ratio(clients[CLIENTS[1]], clients[CLIENTS[0]])
    print(f"  python-varlink Client / unixrpc VarlinkClient {ratio:4.2f}x (paired)")


if __name__ == "__main__":
    main()
