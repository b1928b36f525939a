"""Servers for bench_varlink.py, each run in its own process:

* ``unixrpc PATH`` -- a unixrpc Server (asyncio engine) with ``Add`` and
  ``Echo``, answering both wires on one socket;
* ``unixrpc-threads PATH`` -- the same Server on the threads engine, plain ``def`` handlers;
* ``python-varlink PATH`` -- python-varlink's ``ThreadingServer`` with the
  same two methods (``org.example.bench``).

Prints "ready" once listening.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from typing import Any

from unixrpc import Method, Server

IDL = """interface org.example.bench

method Add(a: int, b: int) -> (result: int)

method Echo(data: string) -> (result: string)
"""


class Add(Method[int], name="org.example.bench.Add"):
    a: int
    b: int


class Echo(Method[str], name="org.example.bench.Echo"):
    data: str


def unixrpc_server(plain: bool) -> Server:
    """*plain*: plain ``def`` handlers (what the threads engine runs in place)."""
    server = Server(name="org.example.bench")
    if plain:
        server.add_method(Add, lambda request: request.a + request.b)
        server.add_method(Echo, lambda request: request.data)
        return server

    @server.method(Add)
    async def add(request: Add) -> int:
        return request.a + request.b

    @server.method(Echo)
    async def echo(request: Echo) -> str:
        return request.data

    return server


def python_varlink(path: str) -> None:
    import varlink

    directory = tempfile.mkdtemp(prefix="vl-bench-")
    with open(os.path.join(directory, "org.example.bench.varlink"), "w") as out:
        out.write(IDL)
    service = varlink.Service(vendor="bench", product="bench", version="1", url="", interface_dir=directory)

    @service.interface("org.example.bench")
    class Bench:
        def Add(self, a: int, b: int) -> dict[str, Any]:
            return {"result": a + b}

        def Echo(self, data: str) -> dict[str, Any]:
            return {"result": data}

    class Handler(varlink.RequestHandler):
        service = None

    Handler.service = service
    server = varlink.ThreadingServer("unix:" + path, Handler)
    print("ready", flush=True)
    server.serve_forever()


def asyncvarlink_server(path: str) -> None:
    import asyncio

    from _asyncvarlink_peer import serve  # (asyncvarlink reads annotations: a module without PEP 563)

    asyncio.run(serve(path))


def python_varlink_client(path: str, n: int) -> float:
    """Seconds per small call through python-varlink's client."""
    import time

    import varlink

    with varlink.Client(address="unix:" + path) as client, client.open("org.example.bench") as bench:
        t0 = time.perf_counter()
        for _ in range(n):
            assert bench.Add(a=1, b=2) == {"result": 3}
        return (time.perf_counter() - t0) / n


def main() -> None:
    kind, path = sys.argv[1], sys.argv[2]
    if kind == "python-varlink":
        python_varlink(path)
        return
    if kind == "asyncvarlink":
        asyncvarlink_server(path)
        return
    backend = "threads" if kind == "unixrpc-threads" else "asyncio"
    server = unixrpc_server(plain=backend == "threads")
    with server.serve_in_thread(path, backend=backend):
        print("ready", flush=True)
        threading.Event().wait()  # until killed


if __name__ == "__main__":
    main()
