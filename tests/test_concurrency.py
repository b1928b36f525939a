"""Locking rules of the raw clients, with real threads (sync) and real tasks
(async, on asyncio and trio): sends never interleave, send and receive do
not wait for each other, close() does not wait for a blocked receive."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import anyio
import pytest

from conftest import open_fds
from drivers import lp_frame, lp_json, read_lp_frames
from unixrpc import AsyncUnixStreamClient, ClientClosedError, UnixStreamClient

THREADS = 8
PER_THREAD = 300


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    client_end, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with peer:
        yield client_end, peer
    client_end.close()


def _check_streams(frames: list[dict[str, int]], writers: int, per_writer: int) -> None:
    """Every writer's packets arrived whole, once, in its own order."""
    seen: dict[int, list[int]] = {}
    for frame in frames:
        seen.setdefault(frame["w"], []).append(frame["i"])
    assert sorted(seen) == list(range(writers))
    for sequence in seen.values():
        assert sequence == list(range(per_writer))


def test_sync_concurrent_sends_never_interleave(pair: tuple[socket.socket, socket.socket]) -> None:
    client = UnixStreamClient(pair[0], lp_json())
    frames: list[dict[str, int]] = []
    reader = threading.Thread(target=lambda: frames.extend(read_lp_frames(pair[1], THREADS * PER_THREAD)))
    reader.start()
    padding = "p" * 5000  # large enough that a frame takes several writes when the buffer is full

    def writer(w: int) -> None:
        for i in range(PER_THREAD):
            client.send_packet({"w": w, "i": i, "pad": padding})

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reader.join(timeout=30)
    assert not reader.is_alive()
    _check_streams(frames, THREADS, PER_THREAD)
    client.close()


def test_sync_send_does_not_wait_for_blocked_recv(pair: tuple[socket.socket, socket.socket]) -> None:
    client = UnixStreamClient(pair[0], lp_json())
    received: list[object] = []
    reader = threading.Thread(target=lambda: received.append(client.recv_packet()))
    reader.start()
    time.sleep(0.05)  # the reader is now blocked in recv, holding the receive lock
    client.send_packet("sent while another thread waits to receive")
    assert read_lp_frames(pair[1], 1) == ["sent while another thread waits to receive"]
    assert client.socket.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM
    pair[1].sendall(lp_frame("wake up"))
    reader.join(timeout=5)
    assert received == ["wake up"]
    client.close()


def test_sync_concurrent_receivers_share_packets(pair: tuple[socket.socket, socket.socket]) -> None:
    client = UnixStreamClient(pair[0], lp_json())
    total = 2000
    got: list[int] = []
    lock = threading.Lock()

    def receiver() -> None:
        while True:
            packet = client.recv_packet()
            if packet == "stop":
                return
            with lock:
                got.append(packet)

    threads = [threading.Thread(target=receiver) for _ in range(4)]
    for t in threads:
        t.start()
    pair[1].sendall(b"".join(lp_frame(i) for i in range(total)) + lp_frame("stop") * 4)
    for t in threads:
        t.join(timeout=10)
    assert sorted(got) == list(range(total))
    client.close()


def test_sync_close_does_not_wait_for_blocked_recv(pair: tuple[socket.socket, socket.socket]) -> None:
    before = open_fds()
    client = UnixStreamClient(pair[0], lp_json())
    errors: list[BaseException] = []
    started = threading.Event()

    def blocked_reader() -> None:
        started.set()
        try:
            client.recv_packet()
        except BaseException as exc:
            errors.append(exc)

    reader = threading.Thread(target=blocked_reader)
    reader.start()
    started.wait()
    time.sleep(0.05)
    client.close()
    reader.join(timeout=5)
    assert not reader.is_alive(), "the blocked reader must wake up"
    assert [type(e) for e in errors] == [ClientClosedError]
    assert pair[0].fileno() == -1, "the descriptor is released once the reader has left"
    assert open_fds() < before, "the client's descriptor is gone"
    assert pair[1].recv(10) == b""


def test_sync_close_wakes_recv_with_timeout(pair: tuple[socket.socket, socket.socket]) -> None:
    client = UnixStreamClient(pair[0], lp_json())
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            client.recv_packet(timeout=30)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    time.sleep(0.05)
    client.close()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert [type(e) for e in errors] == [ClientClosedError]


@pytest.mark.anyio
async def test_async_concurrent_sends_never_interleave(pair: tuple[socket.socket, socket.socket]) -> None:
    frames: list[dict[str, int]] = []
    reader = threading.Thread(target=lambda: frames.extend(read_lp_frames(pair[1], THREADS * PER_THREAD)))
    reader.start()
    padding = "p" * 5000

    async with AsyncUnixStreamClient(pair[0], lp_json()) as client:

        async def writer(w: int) -> None:
            for i in range(PER_THREAD):
                await client.send_packet({"w": w, "i": i, "pad": padding})

        async with anyio.create_task_group() as tg:
            for w in range(THREADS):
                tg.start_soon(writer, w)
    await anyio.to_thread.run_sync(reader.join)
    _check_streams(frames, THREADS, PER_THREAD)


@pytest.mark.anyio
async def test_async_send_does_not_wait_for_pending_recv(pair: tuple[socket.socket, socket.socket]) -> None:
    async with AsyncUnixStreamClient(pair[0], lp_json()) as client:
        received: list[object] = []

        async def reader() -> None:
            received.append(await client.recv_packet())

        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            await anyio.sleep(0.01)
            with anyio.fail_after(5):
                await client.send_packet("while a receive is pending")
            assert read_lp_frames(pair[1], 1) == ["while a receive is pending"]
            pair[1].sendall(lp_frame("answer"))
        assert received == ["answer"]


@pytest.mark.anyio
async def test_async_aclose_does_not_wait_for_pending_recv(pair: tuple[socket.socket, socket.socket]) -> None:
    client = AsyncUnixStreamClient(pair[0], lp_json())
    await client.wait_connected()
    errors: list[BaseException] = []

    async def reader() -> None:
        try:
            await client.recv_packet()
        except ClientClosedError as exc:
            errors.append(exc)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            await anyio.sleep(0.02)
            await client.aclose()
            with pytest.raises(ClientClosedError):
                await client.recv_packet()
    assert [type(e) for e in errors] == [ClientClosedError]
    assert pair[0].fileno() == -1
    assert pair[1].recv(10) == b""


@pytest.mark.anyio
async def test_async_cancelled_recv_loses_nothing(pair: tuple[socket.socket, socket.socket]) -> None:
    async with AsyncUnixStreamClient(pair[0], lp_json()) as client:
        frame = lp_frame({"whole": "packet"})
        pair[1].sendall(frame[:5])
        with anyio.move_on_after(0.05) as scope:
            await client.recv_packet()
        assert scope.cancelled_caught
        pair[1].sendall(frame[5:])
        assert await client.recv_packet() == {"whole": "packet"}


@pytest.mark.anyio
async def test_async_send_cancelled_mid_frame_breaks_connection(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    from unixrpc import ConnectionBrokenError

    pair[0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    async with AsyncUnixStreamClient(pair[0], lp_json()) as client:
        with anyio.move_on_after(0.1) as scope:
            await client.send_packet("x" * 4_000_000)  # nobody reads: blocks after a partial write
        assert scope.cancelled_caught
        with pytest.raises(ConnectionBrokenError, match="cancelled in the middle of a frame"):
            await client.send_packet("next")
