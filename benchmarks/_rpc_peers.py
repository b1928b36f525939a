"""Servers for bench_rpc.py, each run in its own process:

* ``unixrpc PATH``  -- a unixrpc Server with Add (asyncio backend);
* ``unixrpc-trio PATH`` -- the same Server under trio;
* ``unixrpc-def PATH`` -- the asyncio Server with a plain ``def`` Add;
* ``unixrpc-uvloop PATH`` -- the asyncio Server on uvloop (needs uvloop);
* ``threads PATH`` -- the Server on the threads backend, plain ``def`` Add;
* ``threads-async PATH`` -- the threads backend with the ``async def`` Add;
* ``floor PATH``    -- a plain blocking socket server, thread per connection,
  length prefix + orjson, ``{"id","method","params"}`` -> ``{"id","result"}``;
* ``streams PATH``  -- the same protocol with hand-written asyncio streams;
* ``floor-unixrpc PATH``, ``streams-unixrpc PATH`` -- the floor and streams
  servers speaking the unixrpc wire format (6-byte header, no fds), for our
  clients (they answer ``Echo`` too: the ``data`` param back);
* ``echo-threads PATH``, ``echo-unixrpc PATH`` -- ``Echo`` (a plain ``def``
  on the threads backend, an ``async def`` on the asyncio Server), for
  bench_large.py.

Prints "ready" once listening.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading

import orjson

from unixrpc import Method, Server


class Add(Method[int]):
    a: int
    b: int


class Echo(Method[str]):
    data: str


def echo_server(plain: bool) -> Server:
    server = Server()
    if plain:

        @server.method(Echo)
        def echo_plain(req: Echo) -> str:
            return req.data

    else:

        @server.method(Echo)
        async def echo(req: Echo) -> str:
            return req.data

    return server


def add_server(plain: bool) -> Server:
    server = Server()
    if plain:

        @server.method(Add)
        def add_plain(req: Add) -> int:
            return req.a + req.b

    else:

        @server.method(Add)
        async def add(req: Add) -> int:
            return req.a + req.b

    return server


def run_threads(path: str, plain: bool = True, server: Server | None = None) -> None:
    server = server or add_server(plain)
    import os
    import time

    def announce() -> None:
        while not os.path.exists(path):
            time.sleep(0.001)
        print("ready", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    server.serve_forever(path, backend="threads")


def run_unixrpc(
    path: str, backend: str = "asyncio", plain: bool = False, server: Server | None = None
) -> None:
    server = server or add_server(plain)

    async def main() -> None:
        import anyio

        async with anyio.create_task_group() as tg:
            await tg.start(server.serve, path)
            print("ready", flush=True)

    import anyio

    if backend == "uvloop":  # the documented switch for an embedding program: anyio's option
        anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True})
        return
    anyio.run(main, backend=backend)


def run_unixrpc_trio(path: str) -> None:
    run_unixrpc(path, "trio")


def _answer(body: bytes | memoryview, pad: bytes = b"") -> bytes:
    """Answer one Add request; *pad* fills the header past the 4-byte length."""
    request = orjson.loads(body)
    params = request["params"]
    result = params["data"] if request["method"] == "Echo" else params["a"] + params["b"]
    reply = orjson.dumps({"id": request["id"], "result": result})
    return len(reply).to_bytes(4, "big") + pad + reply


def _serve_blocking(path: str, pad: bytes) -> None:
    """A blocking server, a thread per connection: ``u32 length`` + *pad* + JSON."""
    header = 4 + len(pad)

    def serve(conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
                out = []
                while len(buf) >= header and len(buf) >= header + int.from_bytes(buf[:4], "big"):
                    end = header + int.from_bytes(buf[:4], "big")
                    out.append(_answer(buf[header:end], pad))
                    buf = buf[end:]
                if out:
                    conn.sendall(b"".join(out))

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def run_floor_echo(path: str) -> None:
    """The blocking floor for large calls: our wire, a frame read whole into a
    buffer kept across frames (no quadratic ``bytes +=``), orjson."""

    def serve(conn: socket.socket) -> None:
        header = bytearray(6)
        body = bytearray()
        with conn:
            while _read_into(conn, memoryview(header)):
                size = int.from_bytes(header[:4], "big")
                if len(body) < size:
                    body = bytearray(size)
                view = memoryview(body)[:size]
                if not _read_into(conn, view):
                    return
                conn.sendall(_answer(view, b"\0\0"))

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def _read_into(conn: socket.socket, view: memoryview) -> bool:
    got = 0
    while got < len(view):
        n = conn.recv_into(view[got:])
        if not n:
            return False
        got += n
    return True


def run_floor(path: str) -> None:
    _serve_blocking(path, b"")


def run_streams(path: str, pad: bytes = b"") -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                header = await reader.readexactly(4 + len(pad))
                body = await reader.readexactly(int.from_bytes(header[:4], "big"))
                writer.write(_answer(body, pad))
        except asyncio.IncompleteReadError:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_unix_server(handle, path)
        print("ready", flush=True)
        await server.serve_forever()

    asyncio.run(main())


def run_floor_unixrpc(path: str) -> None:
    """The floor server speaking the unixrpc wire format (6-byte header, no fds)."""
    _serve_blocking(path, b"\0\0")


def run_streams_unixrpc(path: str) -> None:
    """The asyncio-streams server speaking the unixrpc wire format."""
    run_streams(path, b"\0\0")


if __name__ == "__main__":
    peers = {
        "unixrpc": run_unixrpc,
        "unixrpc-trio": run_unixrpc_trio,
        "unixrpc-def": lambda path: run_unixrpc(path, plain=True),
        "threads": run_threads,
        "threads-async": lambda path: run_threads(path, plain=False),
        "streams-unixrpc": run_streams_unixrpc,
        "floor": run_floor,
        "streams": run_streams,
        "floor-unixrpc": run_floor_unixrpc,
        "unixrpc-uvloop": lambda path: run_unixrpc(path, "uvloop"),
        "floor-echo": run_floor_echo,
        "echo-threads": lambda path: run_threads(path, server=echo_server(True)),
        "echo-unixrpc": lambda path: run_unixrpc(path, server=echo_server(False)),
    }
    peers[sys.argv[1]](sys.argv[2])
