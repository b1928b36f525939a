"""One async face for both raw clients, so a test body runs against the sync
client and the async client (asyncio and trio) alike.

The sync client's calls block the event loop: tests make sure the data a
sync call waits for is already on its way (written by the peer first)."""

from __future__ import annotations

import socket
from collections.abc import Sequence
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


def lp_json() -> StreamProtocol[Any, Any]:
    return StreamProtocol(LengthPrefixedSerializer(JSONSerializer()))


def lp_frame(obj: Any) -> bytes:
    """The bytes of one length-prefixed JSON frame, as a foreign peer writes it."""
    return lp_json().serialize(obj)


def read_lp_frames(peer: socket.socket, count: int) -> list[Any]:
    """Read *count* length-prefixed JSON frames from a blocking socket."""
    import orjson

    out: list[Any] = []
    data = b""
    while len(out) < count:
        while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
            chunk = peer.recv(1 << 16)
            assert chunk, "peer saw EOF early"
            data += chunk
        size = int.from_bytes(data[:4], "big")
        out.append(orjson.loads(data[4 : 4 + size]))
        data = data[4 + size :]
    assert not data
    return out


class ClientDriver:
    def __init__(self, kind: str, client: Any) -> None:
        self.kind = kind
        self.client = client

    @property
    def is_sync(self) -> bool:
        return self.kind == "sync"

    async def send(self, packet: Any, ancillary: SocketAncillary | None = None) -> None:
        if self.is_sync:
            self.client.send_packet(packet, ancillary_data=ancillary)
        else:
            await self.client.send_packet(packet, ancillary_data=ancillary)

    async def recv(self, ancillary: SocketAncillary | None = None, bufsize: int | None = None) -> Any:
        if self.is_sync:
            return self.client.recv_packet(ancillary_data=ancillary, ancillary_bufsize=bufsize)
        return await self.client.recv_packet(ancillary_data=ancillary, ancillary_bufsize=bufsize)

    async def recv_within(self, seconds: float) -> Any:
        """recv_packet bounded by the client's own timeout idiom."""
        if self.is_sync:
            return self.client.recv_packet(timeout=seconds)
        with anyio.fail_after(seconds):
            return await self.client.recv_packet()

    async def iter_packets(self, timeout: float | None = 0) -> Sequence[Any]:
        if self.is_sync:
            return list(self.client.iter_received_packets(timeout=timeout))
        return [p async for p in self.client.iter_received_packets(timeout=timeout)]

    async def send_eof(self) -> None:
        if self.is_sync:
            self.client.send_eof()
        else:
            await self.client.send_eof()

    async def close(self) -> None:
        if self.is_sync:
            self.client.close()
        else:
            await self.client.aclose()


async def connect(kind: str, address: Any, protocol: Any = None, **kwargs: Any) -> ClientDriver:
    protocol = protocol if protocol is not None else lp_json()
    if kind == "sync":
        return ClientDriver(kind, UnixStreamClient(address, protocol, **kwargs))
    client = AsyncUnixStreamClient(address, protocol, **kwargs)
    try:
        await client.wait_connected()
    except BaseException:
        await client.aclose()
        raise
    return ClientDriver(kind, client)
