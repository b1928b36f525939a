"""Echo peer for the benchmarks: a separate process that writes back every byte
it reads, on every connection, with one blocking thread per connection.
Usage: python _echo.py SOCKET_PATH  (prints "ready" once listening)."""

from __future__ import annotations

import os
import socket
import sys
import threading


def _serve(conn: socket.socket) -> None:
    with conn:
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        while True:
            n = conn.recv_into(buf)
            if not n:
                return
            conn.sendall(view[:n])


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
