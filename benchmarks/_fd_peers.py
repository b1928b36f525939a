"""Servers for bench_fds.py, each in its own process (prints "ready"):

* ``unixrpc PATH`` -- a unixrpc Server with PutShared (maps a sealed memfd
  and returns its size), PutInline (bytes inline, base64 in the JSON body)
  and Add;
* ``floor PATH`` -- a plain blocking socket server: reads a 8-byte length
  and that many bytes, answers 8 bytes.
"""

from __future__ import annotations

import base64
import socket
import sys
import threading

import anyio

from unixrpc import FD, Method, Server, SharedBuffer

MAX_FRAME = 2**32 - 1


class PutShared(Method[int]):
    buffer: FD


class PutInline(Method[int]):
    """The bytes inline in the JSON body, base64-encoded."""

    data: str


class Add(Method[int]):
    a: int
    b: int


def run_unixrpc(path: str) -> None:
    server = Server(max_frame_size=MAX_FRAME)

    @server.method(PutShared)
    async def put_shared(req: PutShared) -> int:  # mapping does not block: no worker thread
        view = SharedBuffer.map(req.buffer)
        try:
            return len(view)
        finally:
            view.release()

    @server.method(PutInline)
    def put_inline(req: PutInline) -> int:
        return len(base64.b64decode(req.data))

    @server.method(Add)
    async def add(req: Add) -> int:
        return req.a + req.b

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(server.serve, path)
            print("ready", flush=True)

    anyio.run(main)


def run_floor(path: str) -> None:
    def serve(conn: socket.socket) -> None:
        buf = bytearray(1 << 20)
        with conn:
            while True:
                header = conn.recv(8, socket.MSG_WAITALL)
                if len(header) < 8:
                    return
                left = int.from_bytes(header, "big")
                while left:
                    left -= conn.recv_into(buf, min(left, len(buf)))
                conn.sendall(header)

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    {"unixrpc": run_unixrpc, "floor": run_floor}[sys.argv[1]](sys.argv[2])
