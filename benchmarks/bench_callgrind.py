"""Instructions per call under ``valgrind --tool=callgrind``: a figure that
stays put on a noisy shared machine, where wall-clock times swing by tens of
percent between runs (docs/performance.md).

Server side: each server of ``_rpc_peers.py`` runs under callgrind while a
sync ``Client`` in this process (not under valgrind) makes sequential
``Add(a=1, b=2)`` calls; the server is run twice, for FEW and for MANY calls,
and (instructions(MANY) - instructions(FEW)) / (MANY - FEW) is its cost per
call with start-up and shutdown cancelled out. The floor servers speak the
same wire untyped, so the ratio to them is what our server machinery costs.

Client side (``--clients``): the same difference for a process that makes
the calls (``Client``, ``AsyncClient`` on asyncio and trio) against the
blocking floor server, which runs outside valgrind.

Run: ``python benchmarks/bench_callgrind.py [--calls MANY] [--clients] [--no-servers] [KIND ...]``
(KIND: the servers to measure, default all; needs ``valgrind``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import anyio

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import HERE, peer
from _rpc_peers import Add

from unixrpc import AsyncClient, Client

# (kind in _rpc_peers.py, label, the floor it is compared with)
SERVERS = [
    ("floor-unixrpc", "blocking floor server, our wire (untyped)", None),
    ("streams-unixrpc", "asyncio-streams server, our wire (untyped)", None),
    ("threads", "threads engine, plain def", "floor-unixrpc"),
    ("threads-async", "threads engine, async def (loop thread)", "threads"),
    ("unixrpc", "asyncio Server, async def", "streams-unixrpc"),
    ("unixrpc-trio", "trio Server, async def", "streams-unixrpc"),
]
CLIENTS = [
    ("sync", "Client.call"),
    ("asyncio", "AsyncClient.call on asyncio"),
    ("trio", "AsyncClient.call on trio"),
]
MANY = 3000
FEW = 1000
_TOTAL = re.compile(rb"^(?:summary|totals):\s*(\d+)", re.MULTILINE)


def _valgrind(out: str) -> list[str]:
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable]


def _instructions(out: str) -> int:
    with open(out, "rb") as f:
        match = _TOTAL.search(f.read())
    assert match is not None, f"no total in {out}"
    return int(match.group(1))


def _server_run(kind: str, calls: int, tmp: str) -> int:
    """Instructions of the *kind* server process that answered *calls* calls."""
    path = os.path.join(tmp, f"{kind}.{calls}.sock")
    out = os.path.join(tmp, f"{kind}.{calls}.out")
    proc = subprocess.Popen(
        [*_valgrind(out), os.path.join(HERE, "_rpc_peers.py"), kind, path],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", f"{kind} did not start"
        with Client(path) as client:
            request = Add(a=1, b=2)
            for _ in range(calls):
                client.call(request)
        # let the server see the hang-up before it is stopped, so each run ends alike
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    return _instructions(out)


def _client_run(mode: str, calls: int, path: str, tmp: str) -> int:
    out = os.path.join(tmp, f"client-{mode}.{calls}.out")
    subprocess.run(
        [*_valgrind(out), os.path.abspath(__file__), "--client-process", mode, str(calls), path],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return _instructions(out)


def _client_process(mode: str, calls: int, path: str) -> None:
    request = Add(a=1, b=2)
    if mode == "sync":
        with Client(path) as client:
            for _ in range(calls):
                client.call(request)
        return

    async def run() -> None:
        async with AsyncClient(path) as client:
            for _ in range(calls):
                await client.call(request)

    anyio.run(run, backend=mode)


def per_call(run: object, many: int, few: int) -> float:
    assert callable(run)
    return (run(many) - run(few)) / (many - few)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--calls", type=int, default=MANY, help="calls of the long run (the short one: a third)"
    )
    parser.add_argument("--clients", action="store_true", help="measure the clients too")
    parser.add_argument("--no-servers", action="store_true", help="measure no server")
    parser.add_argument("--client-process", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("kinds", nargs="*", help="servers to measure (default: all)")
    args = parser.parse_args()
    if args.client_process:
        mode, calls, path = args.client_process
        _client_process(mode, int(calls), path)
        return
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: no instruction counts")
        return
    many = args.calls
    few = max(1, many // 3)
    kinds = set() if args.no_servers else set(args.kinds or [kind for kind, _, _ in SERVERS])
    with tempfile.TemporaryDirectory(prefix="urpc-cg-") as tmp:
        if kinds:
            print(f"instructions per call (callgrind), server process, ({many} - {few} calls) / {many - few}")
        figures: dict[str, float] = {}
        for kind, label, floor in SERVERS:
            if kind not in kinds:
                continue
            figures[kind] = per_call(lambda n, k=kind: _server_run(k, n, tmp), many, few)
            ratio = f"  {figures[kind] / figures[floor]:5.2f}x {floor}" if floor in figures else ""
            print(f"  {label:<45} {figures[kind]:10,.0f}{ratio}", flush=True)
        if args.clients:
            print("instructions per call (callgrind), client process, against the blocking floor server")
            with peer("_rpc_peers.py", "floor-unixrpc", os.path.join(tmp, "floor.sock")):
                sync = None
                path = os.path.join(tmp, "floor.sock")
                for mode, label in CLIENTS:
                    count = per_call(lambda n, m=mode, p=path: _client_run(m, n, p, tmp), many, few)
                    sync = sync or count
                    print(f"  {label:<45} {count:10,.0f}  {count / sync:5.2f}x Client.call", flush=True)


if __name__ == "__main__":
    main()
