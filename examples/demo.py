"""`make demo`: start the example daemons on a temporary socket and talk to
them with the sync and the async clients (asyncio and trio), saying what
happens at each step: first the typed RPC layer (examples/rpc_daemon.py),
then the raw packet layer (examples/raw_daemon.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import anyio
from rpc_daemon import Add, Countdown, GetUser, OpenScratch, UserNotFound, WhoAmI

from unixrpc import (
    AsyncClient,
    AsyncUnixStreamClient,
    Client,
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
    print("\n== raw packet layer: UnixStreamClient (plain blocking socket) ==")
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
    print(f"\n== raw packet layer: AsyncUnixStreamClient on {backend} ==")
    async with AsyncUnixStreamClient(path, protocol()) as client:
        with anyio.fail_after(5):
            for text in ("one", "two", "three"):
                await client.send_packet({"op": "upper", "text": text})
            replies = [await client.recv_packet() for _ in range(3)]
        print("three pipelined requests ->", replies)


def rpc_sync_part(path: str) -> None:
    print("\n== typed RPC, sync Client (plain sockets, no event loop, no thread) ==")
    with Client(path, timeout=5) as client:
        print("Add(a=1, b=2) ->", client.call(Add(a=1, b=2)))
        print("GetUser(uid=1000) ->", repr(client.call(GetUser(uid=1000))))
        try:
            client.call(GetUser(uid=7))
        except UserNotFound as error:
            print(f"GetUser(uid=7) -> raised UserNotFound(uid={error.uid}) [{error.code}]")
        print("WhoAmI() -> the daemon saw", client.call(WhoAmI()))
        print("Countdown(start=3) ->", list(client.stream(Countdown(start=3))))
        scratch = client.call(OpenScratch(note="written by the daemon, read by the client"))
        with scratch.fd.open("r") as f:
            print(f"OpenScratch -> got a file descriptor ({scratch.note}); it reads: {f.read()!r}")


async def rpc_async_part(path: str, backend: str) -> None:
    print(f"\n== typed RPC, AsyncClient on {backend}: 10 calls in flight on one connection ==")
    async with AsyncClient(path, timeout=5) as client:
        results: dict[int, int] = {}

        async def one(i: int) -> None:
            results[i] = await client.call(Add(a=i, b=i))

        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(one, i)
        print("results by call:", [results[i] for i in range(10)])
        print("Countdown(start=2) ->", [n async for n in client.stream(Countdown(start=2))])


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="urpc-demo-") as tmp:
        path = os.path.join(tmp, "rpc.sock")
        print(f"starting examples/rpc_daemon.py on {path}")
        daemon = subprocess.Popen([sys.executable, os.path.join(HERE, "rpc_daemon.py"), path])
        try:
            deadline = time.monotonic() + 30
            while not os.path.exists(path):
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the RPC daemon did not start")
                time.sleep(0.02)
            rpc_sync_part(path)
            for backend in ("asyncio", "trio"):
                anyio.run(rpc_async_part, path, backend, backend=backend)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait()
        removed = not os.path.exists(path)
        print(f"RPC daemon stopped on SIGTERM (exit code {daemon.returncode}); socket removed: {removed}")
    raw_demo()


def raw_demo() -> None:
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
