"""The read watch: a socket stays registered with asyncio's selector between
waits, never spins the loop when no one reads, and is out of the selector
before it is closed. Real socketpairs; the transport tests run on both
backends (trio takes anyio's own wait)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import anyio
import pytest

from conftest import open_fds
from drivers import lp_frame, lp_json
from unixrpc import AsyncUnixStreamClient, ClientClosedError
from unixrpc._readwatch import ReadWatch, _AsyncioReadWatch, read_watch


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.setblocking(False)
    with a, b:
        yield a, b


class CountingWatch(_AsyncioReadWatch):
    __slots__ = ("calls",)

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(sock, loop)
        self.calls = 0

    def _readable(self) -> None:
        self.calls += 1
        super()._readable()


def registered(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bool:
    """Whether *sock* has a reader in *loop* (asyncio's selector map: no
    public API answers this without changing it)."""
    key = loop._selector.get_map().get(sock.fileno())  # type: ignore[attr-defined]
    return key is not None and key.data[0] is not None


def test_stays_registered_between_waits(pair: tuple[socket.socket, socket.socket]) -> None:
    asyncio.run(_test_stays_registered_between_waits(*pair))


async def _test_stays_registered_between_waits(a: socket.socket, b: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    watch = CountingWatch(a, loop)
    for i in range(5):
        b.send(b"x")
        await watch.wait()
        assert a.recv(16) == b"x"
        assert registered(loop, a), f"unregistered after wait {i}"
    watch.stop()
    assert not registered(loop, a)


def test_unread_socket_stops_being_watched(pair: tuple[socket.socket, socket.socket]) -> None:
    asyncio.run(_test_unread_socket_stops_being_watched(*pair))


async def _test_unread_socket_stops_being_watched(a: socket.socket, b: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    watch = CountingWatch(a, loop)
    b.send(b"first")
    await watch.wait()
    # readable, and no one reads or waits: the loop must not call back on every turn
    for _ in range(50):
        await asyncio.sleep(0)
    assert watch.calls <= 3, watch.calls
    assert not registered(loop, a)
    # the next wait registers again and sees the data still there
    await watch.wait()
    assert a.recv(16) == b"first"
    watch.stop()


def test_cancelled_wait_leaves_the_watch_usable(pair: tuple[socket.socket, socket.socket]) -> None:
    asyncio.run(_test_cancelled_wait_leaves_the_watch_usable(*pair))


async def _test_cancelled_wait_leaves_the_watch_usable(a: socket.socket, b: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    watch = CountingWatch(a, loop)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await watch.wait()
    b.send(b"late")
    for _ in range(5):
        await asyncio.sleep(0)  # the callback finds no waiter: no error, no wake-up of anyone
    await watch.wait()
    assert a.recv(16) == b"late"
    watch.stop()
    watch.stop()  # idempotent


@pytest.mark.anyio
async def test_backend_watch(anyio_backend: str, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    watch = read_watch(a)
    assert isinstance(watch, _AsyncioReadWatch) == (anyio_backend == "asyncio")
    assert isinstance(watch, ReadWatch)
    b.send(b"y")
    with anyio.fail_after(5):
        await watch.wait()
    watch.stop()


@pytest.mark.anyio
async def test_transport_unregisters_before_closing(anyio_backend: str) -> None:
    client_end, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    before = open_fds()
    with peer:
        client = AsyncUnixStreamClient(client_end, lp_json())
        fd = client_end.fileno()
        peer.sendall(lp_frame("hello"))
        assert await client.recv_packet() == "hello"

        async def wait_then_close() -> None:
            await anyio.wait_all_tasks_blocked()
            await client.aclose()  # wakes the receive below, which closes the socket

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_then_close)
            with pytest.raises(ClientClosedError):
                await client.recv_packet()
        if anyio_backend == "asyncio":
            assert not asyncio.get_running_loop().remove_reader(fd), "still in the selector after close"
        # a new socket that reuses the number can be watched at once
        c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with c, d:
            reuse = AsyncUnixStreamClient(c, lp_json())
            d.sendall(lp_frame("again"))
            with anyio.fail_after(5):
                assert await reuse.recv_packet() == "again"
                d.sendall(lp_frame("and after a wait"))
                assert await reuse.recv_packet() == "and after a wait"
            await reuse.aclose()
    assert open_fds() <= before


@pytest.mark.anyio
async def test_receive_lock_first_come_and_cancelled_waiter(anyio_backend: str) -> None:
    """Readers queued on the transport's receive lock get packets in arrival
    order; one cancelled while queued leaves its place to the next."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with b:
        client = AsyncUnixStreamClient(a, lp_json())
        async with client:
            got: list[tuple[str, object]] = []
            doomed = anyio.CancelScope()

            async def reader(name: str, scope: anyio.CancelScope | None = None) -> None:
                with scope or anyio.CancelScope():
                    got.append((name, await client.recv_packet()))

            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    for name, scope in (
                        ("first", None),
                        ("second", doomed),
                        ("third", None),
                        ("fourth", None),
                    ):
                        tg.start_soon(reader, name, scope)
                        await anyio.wait_all_tasks_blocked()
                    doomed.cancel()
                    await anyio.wait_all_tasks_blocked()
                    b.sendall(lp_frame(1) + lp_frame(2) + lp_frame(3))
            assert got == [("first", 1), ("third", 2), ("fourth", 3)]
            assert not client._recv_lock.locked()
