"""Memory per connection: the figures in docs/reliability.md. Sizes, not times.

1. The receive buffer of one connection while a frame arrives and after it
   is taken (``PacketReceiver.allocated_size()``), for frames of 1 MiB and
   16 MiB - 1 (just under the default limit), read as a transport reads.
2. A unixrpc Server in another process, default limits: its RSS with CLIENTS
   idle connections that each made one call carrying a frame just under
   16 MiB, then once they have all closed, then after a ``gc.collect()`` in
   the server (what reference cycles held).

Run: ``python benchmarks/mem_buffers.py [CLIENTS]``.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import anyio
from _harness import peer

from unixrpc import Client, Method, Server, StreamProtocol
from unixrpc._core import wire
from unixrpc._core.framing import FrameSerializer

CLIENTS = 16
MiB = 1 << 20
#: the JSON body of the call: {"id":..,"method":"Put","params":{"data":"xxx..."}} just under 16 MiB
DATA_SIZE = wire.DEFAULT_MAX_FRAME_SIZE - 4096


class Put(Method[int]):
    data: str


class Collect(Method[list[int]]):
    """Run the server's cyclic GC: [objects collected, RSS in KiB after]."""


class Rss(Method[int]):
    """The server's RSS in KiB."""


def rss_kib(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def run_server(path: str) -> None:
    server = Server()

    @server.method(Put)
    async def put(req: Put) -> int:
        return len(req.data)

    @server.method(Collect)
    async def collect(req: Collect) -> list[int]:
        found = gc.collect()
        return [found, rss_kib()]

    @server.method(Rss)
    async def rss(req: Rss) -> int:
        return rss_kib()

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(server.serve, path)
            print("ready", flush=True)

    anyio.run(main)


def receiver_figures() -> None:
    serializer = FrameSerializer()
    print(f"receive buffer of one connection (read size {wire.RECV_SIZE // 1024} KiB)")
    for label, size in (("1 MiB", MiB), ("16 MiB - 1", wire.DEFAULT_MAX_FRAME_SIZE - 1)):
        frame = serializer.frame_bytes(b"x" * size)
        receiver = StreamProtocol(serializer).receiver(wire.RECV_SIZE)
        largest = 0
        for offset in range(0, len(frame), wire.RECV_SIZE):
            view = receiver.get_buffer()
            count = min(len(view), len(frame) - offset)
            view[:count] = frame[offset : offset + count]
            del view
            receiver.buffer_updated(count)
            largest = max(largest, receiver.allocated_size())
        assert len(receiver.next_packets()) == 1
        ratio = largest / len(frame)
        print(
            f"  {label:>10} frame: largest buffer {largest / MiB:7.2f} MiB ({ratio:.2f}x the frame),"
            f" after it {receiver.allocated_size() / 1024:.0f} KiB"
        )


def server_figures(clients: int) -> None:
    with tempfile.TemporaryDirectory(prefix="urpc-mem-") as tmp:
        path = os.path.join(tmp, "server.sock")
        with peer("mem_buffers.py", "--server", path), Client(path) as probe:
            time.sleep(0.2)
            before = probe.call(Rss())
            data = "x" * DATA_SIZE
            idle = [Client(path) for _ in range(clients)]
            for client in idle:
                assert client.call(Put(data=data)) == DATA_SIZE
            time.sleep(0.2)
            loaded = probe.call(Rss())
            for client in idle:
                client.close()
            time.sleep(0.5)
            closed = probe.call(Rss())
            found, collected = probe.call(Collect())
    print(f"server RSS, {clients} connections that each made one call of {DATA_SIZE / MiB:.1f} MiB")
    print(f"  before:                       {before / 1024:8.1f} MiB")
    print(
        f"  connections idle after it:    {loaded / 1024:8.1f} MiB"
        f"  ({(loaded - before) / 1024 / clients:.2f} MiB per connection)"
    )
    print(f"  all closed:                   {closed / 1024:8.1f} MiB")
    print(f"  after gc.collect() ({found:5} objects): {collected / 1024:8.1f} MiB")


def main() -> None:
    if sys.argv[1:2] == ["--server"]:
        run_server(sys.argv[2])
        return
    clients = int(sys.argv[1]) if len(sys.argv) > 1 else CLIENTS
    receiver_figures()
    server_figures(clients)


if __name__ == "__main__":
    main()
