"""AsyncClient request coalescing, over real sockets on asyncio and trio.

A request made while other calls are in flight is queued and written with
the others in one send by the client's flusher task; a lone call is written
at once. These tests check that batching happens, that nothing is lost,
reordered into another call or leaked, and that the edges hold: a caller
that gives up before its request is written, a batch larger than the socket
buffer, a batch whose write fails.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import pytest

from conftest import open_fds
from rpc_support import Add, Echo, Sleep, make_server, serving
from unixrpc import AsyncClient, ConnectionBrokenError, FrameTooLargeError
from unixrpc._core.framing import HEADER

pytestmark = [pytest.mark.anyio, pytest.mark.server]  # every test here runs on every engine


class FrameReader:
    """Reads whole frames off a blocking peer socket."""

    def __init__(self, peer: socket.socket) -> None:
        self.peer = peer
        self.buffer = b""

    def _whole_frame_buffered(self) -> bool:
        have = len(self.buffer)
        return have >= HEADER.size and have >= HEADER.size + HEADER.unpack_from(self.buffer)[0]

    def next_body(self) -> bytes:
        while not self._whole_frame_buffered():
            chunk = self.peer.recv(65536)
            assert chunk, "the client closed the connection"
            self.buffer += chunk
        end = HEADER.size + HEADER.unpack_from(self.buffer)[0]
        body, self.buffer = self.buffer[HEADER.size : end], self.buffer[end:]
        return body


@contextmanager
def counting_writes(client: AsyncClient) -> Iterator[list[int]]:
    """Record the size of every first write the client's transport makes."""
    raw: Any = client.raw
    original_class = type(raw)
    sizes: list[int] = []

    class Counting(original_class):  # type: ignore[misc, valid-type]
        __slots__ = ()

        def try_send(self, data: bytes, cmsgs: Any = None) -> int | None:
            sizes.append(len(data))
            return super().try_send(data, cmsgs)  # type: ignore[no-any-return]

    raw.__class__ = Counting
    try:
        yield sizes
    finally:
        raw.__class__ = original_class


async def test_requests_made_together_share_one_write(anyio_backend: str, sock_dir: str) -> None:
    path = os.path.join(sock_dir, "s.sock")
    async with serving(make_server(), path), AsyncClient(path) as client:
        with counting_writes(client) as writes:
            results: dict[int, int] = {}

            async def call(i: int) -> None:
                results[i] = await client.call(Add(a=i, b=1000))

            async with anyio.create_task_group() as tg:
                for i in range(20):
                    tg.start_soon(call, i)
        assert results == {i: i + 1000 for i in range(20)}
        # the first request goes out alone (nothing else was in flight), the
        # other nineteen were queued behind it and written together
        assert len(writes) == 2, writes
        assert writes[1] == 19 * writes[0] or writes[1] > 10 * writes[0]


async def test_a_lone_call_is_written_at_once(anyio_backend: str, sock_dir: str) -> None:
    path = os.path.join(sock_dir, "s.sock")
    async with serving(make_server(), path), AsyncClient(path) as client:
        with counting_writes(client) as writes:
            for i in range(5):
                assert await client.call(Add(a=i, b=i)) == 2 * i
                assert not client._conn.writer._corked
        assert len(writes) == 5


async def test_call_given_up_before_its_request_is_written_is_never_sent(anyio_backend: str) -> None:
    client_end, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    client_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    outcomes: list[str] = []
    async with AsyncClient(client_end) as client:

        async def call(method: Any) -> None:
            try:
                await client.call(method)
            except ConnectionBrokenError:
                outcomes.append(type(method).__name__)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                # the peer does not read: the first request fills the socket and
                # the flusher is left waiting to write the second
                tg.start_soon(call, Echo(payload={"pad": "x" * 500_000}))
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(call, Add(a=1, b=2))
                await anyio.wait_all_tasks_blocked()
                # so this one stays queued until it times out
                with pytest.raises(TimeoutError):
                    await client.call(Sleep(seconds=0, tag="given up"), timeout=0.05)
                assert not client._conn.writer._corked

                def read_all() -> list[bytes]:
                    reader = FrameReader(peer)
                    bodies = [reader.next_body(), reader.next_body()]
                    assert not reader.buffer
                    peer.settimeout(0.3)
                    with pytest.raises(TimeoutError):
                        peer.recv(1)  # nothing else: neither the request nor a cancel for it
                    peer.close()
                    return bodies

                bodies = await anyio.to_thread.run_sync(read_all)
        assert b'"method":"Echo"' in bodies[0]
        assert b'"method":"Add"' in bodies[1]
        assert sorted(outcomes) == ["Add", "Echo"]  # both failed when the peer left


async def test_cancelled_caller_leaves_the_rest_of_its_batch_alone(anyio_backend: str, sock_dir: str) -> None:
    path = os.path.join(sock_dir, "s.sock")
    async with serving(make_server(), path), AsyncClient(path) as client:
        results: list[int] = []

        async def call(i: int) -> None:
            results.append(await client.call(Add(a=i, b=0)))

        async with anyio.create_task_group() as tg:
            tg.start_soon(client.call, Sleep(seconds=0.1, tag="first"))
            await anyio.wait_all_tasks_blocked()
            for i in range(5):
                tg.start_soon(call, i)
            with anyio.CancelScope() as scope:
                scope.cancel()  # queued with the five, then given up
                await client.call(Sleep(seconds=5, tag="dropped"))
            assert scope.cancelled_caught
        assert sorted(results) == [0, 1, 2, 3, 4]
        assert await client.call(Add(a=2, b=3)) == 5


async def test_batch_larger_than_the_socket_buffer(anyio_backend: str, sock_dir: str) -> None:
    path = os.path.join(sock_dir, "s.sock")
    before = open_fds()
    async with serving(make_server(), path), AsyncClient(path) as client:
        client.raw.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        payloads = {i: {"i": i, "pad": "x" * 30_000} for i in range(40)}
        with counting_writes(client) as writes:
            results: dict[int, object] = {}

            async def call(i: int) -> None:
                results[i] = await client.call(Echo(payload=payloads[i]))

            async with anyio.create_task_group() as tg:
                for i in payloads:
                    tg.start_soon(call, i)
        assert results == payloads
        assert max(writes) > 1_000_000  # the batch went through the partial-write path
    assert open_fds() == before


async def test_failed_batch_write_fails_its_calls(anyio_backend: str) -> None:
    client_end, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    before = open_fds()
    errors: list[BaseException] = []
    async with AsyncClient(client_end) as client:

        async def call(i: int) -> None:
            try:
                await client.call(Add(a=i, b=0))
            except ConnectionBrokenError as exc:
                errors.append(exc)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call, 0)  # written at once
                await anyio.wait_all_tasks_blocked()
                assert b'"method":"Add"' in FrameReader(peer).next_body()
                peer.close()  # the server is gone before the others are written
                for i in range(1, 6):
                    tg.start_soon(call, i)
        assert len(errors) == 6
        assert not client._conn.writer._corked
    assert open_fds() <= before


async def test_request_over_the_frame_limit_leaves_no_call_behind(anyio_backend: str, sock_dir: str) -> None:
    path = os.path.join(sock_dir, "s.sock")
    async with serving(make_server(), path), AsyncClient(path, max_frame_size=200) as client:
        for _ in range(2):  # alone, then with another call in flight (the queued path)
            with pytest.raises(FrameTooLargeError):
                await client.call(Echo(payload={"pad": "x" * 500}))
            assert len(client._conn.core) == 0
            assert not client._conn.writer._corked
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.call, Sleep(seconds=5))
            while len(client._conn.core) != 1:  # until the Sleep call is in flight
                await anyio.sleep(0.001)
            with pytest.raises(FrameTooLargeError):
                await client.call(Echo(payload={"pad": "x" * 500}))
            assert len(client._conn.core) == 1  # only the Sleep
            assert not client._conn.writer._corked
            tg.cancel_scope.cancel()
        assert await client.call(Add(a=1, b=2)) == 3
