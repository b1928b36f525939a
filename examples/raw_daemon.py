"""A small daemon written on the raw packet layer only.

It accepts connections on a Unix socket and answers JSON packets:
``{"op": "upper", "text": ...}``, ``{"op": "whoami"}`` (the caller's pid,
uid and gid from SO_PEERCRED), and ``{"op": "read_fd"}`` with a file
descriptor attached (it reads the file it was handed). Each accepted socket
is handed to an AsyncUnixStreamClient, which owns it from then on.

Run: ``python examples/raw_daemon.py /tmp/raw.sock`` (prints "ready").
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

import anyio

from unixrpc import (
    AsyncUnixStreamClient,
    ConnectionBrokenError,
    JSONSerializer,
    LengthPrefixedSerializer,
    SocketAncillary,
    StreamProtocol,
)

PROTOCOL: StreamProtocol[Any, Any] = StreamProtocol(LengthPrefixedSerializer(JSONSerializer()))


async def handle(conn: socket.socket) -> None:
    async with AsyncUnixStreamClient(conn, PROTOCOL) as peer:
        caller = peer.get_peer_credentials()
        while True:
            ancillary = SocketAncillary()
            try:
                request = await peer.recv_packet(ancillary_data=ancillary)
            except ConnectionBrokenError:
                return
            fds = list(ancillary.iter_fds())
            try:
                reply = answer(request, caller._asdict(), fds)
            finally:
                for fd in fds:
                    os.close(fd)
            await peer.send_packet(reply)


def answer(request: Any, caller: dict[str, int], fds: list[int]) -> Any:
    match request:
        case {"op": "upper", "text": str(text)}:
            return {"ok": text.upper()}
        case {"op": "whoami"}:
            return {"ok": caller}
        case {"op": "read_fd"} if len(fds) == 1:
            os.lseek(fds[0], 0, os.SEEK_SET)
            return {"ok": os.read(fds[0], 4096).decode()}
        case _:
            return {"error": f"unknown request {request!r}"}


async def serve(path: str) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    listener.setblocking(False)
    print("ready", flush=True)
    with listener:
        async with anyio.create_task_group() as tg:
            while True:
                await anyio.wait_readable(listener)
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    continue
                tg.start_soon(handle, conn)


if __name__ == "__main__":
    anyio.run(serve, sys.argv[1])
