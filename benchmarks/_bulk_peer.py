"""Bulk peer for bench_large.py: a separate process that reads one whole
unixrpc frame (``u32 length | u16 fd count`` + body) and sends it back, on
every connection, one blocking thread per connection.
Usage: python _bulk_peer.py SOCKET_PATH  (prints "ready" once listening)."""

from __future__ import annotations

import os
import socket
import sys
import threading

HEADER = 6


def _read_exactly(conn: socket.socket, view: memoryview) -> bool:
    got = 0
    while got < len(view):
        n = conn.recv_into(view[got:])
        if not n:
            return False
        got += n
    return True


def _serve(conn: socket.socket) -> None:
    with conn:
        header = bytearray(HEADER)
        body = bytearray()
        while _read_exactly(conn, memoryview(header)):
            size = int.from_bytes(header[:4], "big")
            if len(body) < size:
                body = bytearray(size)
            view = memoryview(body)[:size]
            if not _read_exactly(conn, view):
                return
            conn.sendall(header)
            conn.sendall(view)


def main() -> None:
    path = sys.argv[1]
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
