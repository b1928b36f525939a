"""`make demo`: start the example daemon on a temporary socket and talk to it
with the sync client and the async client (asyncio and trio), saying what
happens at each step."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from typing import Any

import anyio

from unixrpc import (
    AsyncUnixStreamClient,
    JSONSerializer,
    LengthPrefixedSerializer,
    SocketAncillary,
    StreamProtocol,
    UnixStreamClient,
)

HERE = os.path.dirname(os.path.abspath(__file__))


def protocol() -> StreamProtocol[Any, Any]:
    return StreamProtocol(LengthPrefixedSerializer(JSONSerializer()))


def sync_part(path: str) -> None:
    print("\n== sync client (plain blocking socket, no event loop) ==")
    with UnixStreamClient(path, protocol(), connect_timeout=5) as client:
        print(f"connected to {client.get_peer_name()}; daemon is {client.get_peer_credentials()}")
        client.send_packet({"op": "upper", "text": "hello, daemon"})
        print("upper ->", client.recv_packet(timeout=5))
        client.send_packet({"op": "whoami"})
        print("whoami ->", client.recv_packet(timeout=5))
        with tempfile.TemporaryFile() as f:
            f.write(b"contents of a file only the client opened")
            f.flush()
            ancillary = SocketAncillary()
            ancillary.add_fds([f])
            client.send_packet({"op": "read_fd"}, ancillary_data=ancillary)
            print("read_fd (file descriptor passed with SCM_RIGHTS) ->", client.recv_packet(timeout=5))


async def async_part(path: str, backend: str) -> None:
    print(f"\n== async client on {backend} ==")
    async with AsyncUnixStreamClient(path, protocol()) as client:
        with anyio.fail_after(5):
            for text in ("one", "two", "three"):
                await client.send_packet({"op": "upper", "text": text})
            replies = [await client.recv_packet() for _ in range(3)]
        print("three pipelined requests ->", replies)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="urpc-demo-") as tmp:
        path = os.path.join(tmp, "daemon.sock")
        print(f"starting examples/raw_daemon.py on {path}")
        daemon = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "raw_daemon.py"), path], stdout=subprocess.PIPE, text=True
        )
        try:
            assert daemon.stdout is not None
            if daemon.stdout.readline().strip() != "ready":
                raise SystemExit("the daemon did not start")
            sync_part(path)
            for backend in ("asyncio", "trio"):
                anyio.run(async_part, path, backend, backend=backend)
        finally:
            daemon.terminate()
            daemon.wait()
            if daemon.stdout is not None:
                daemon.stdout.close()
        print("\ndaemon stopped; demo done")


if __name__ == "__main__":
    main()
