"""Memory bounds of one connection, over real sockets, on the sync client and
the async client (asyncio and trio):

* the receive buffer is sized to the frame being received (never twice the
  limit) and released once the frame is taken, or, kept for the next large
  frame (the clients' default), given back after a run of small frames or
  an idle while;
* a closed client is freed at once by reference counting: no reference
  cycle through a saved exception and its traceback keeps it (and its
  buffers) alive until the cyclic garbage collector runs.

Assertions are on sizes, reference counts and traced memory, never on time.
"""

from __future__ import annotations

import gc
import socket
import threading
import tracemalloc
import types
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from drivers import ClientDriver, connect
from unixrpc import ConnectionBrokenError, StreamProtocol
from unixrpc._core import wire
from unixrpc._core.framing import FrameSerializer
from unixrpc.protocol import GROWTH, KEEP_SMALL_RUN
from unixrpc.transport import async_client, sync_client

#: a body just under the default limit of 16 MiB
BIG = wire.DEFAULT_MAX_FRAME_SIZE - 1
MiB = 1 << 20


def frame(size: int) -> bytes:
    return FrameSerializer().frame_bytes(b"x" * size)


@contextmanager
def peer_sending(*frames: bytes, then_close: bool) -> Iterator[socket.socket]:
    """A connected socket whose peer (a thread) writes *frames*, then closes
    its end or keeps it open until the block ends."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    def send() -> None:
        for data in frames:
            theirs.sendall(data)
        if then_close:
            theirs.close()

    thread = threading.Thread(target=send)
    thread.start()
    try:
        yield ours
    finally:
        thread.join()
        theirs.close()


async def open_client(kind: str, sock: socket.socket, *, keep: bool = False) -> ClientDriver:
    return await connect(
        kind, sock, StreamProtocol(FrameSerializer()), max_recv_size=wire.RECV_SIZE, keep_large_buffers=keep
    )


@contextmanager
def no_cyclic_gc() -> Iterator[None]:
    """Run the block with the cyclic garbage collector off (only reference
    counting frees memory), after collecting what came before."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _is_ours(obj: object) -> bool:
    if isinstance(obj, types.FrameType):
        return "unixrpc" in obj.f_code.co_filename
    if isinstance(obj, bytes | bytearray):
        return len(obj) >= MiB
    return (type(obj).__module__ or "").startswith("unixrpc")


def cycles_of_ours() -> list[str]:
    """Collect garbage and name the objects of ours that were in cycles."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found = sorted(
            f"frame {obj.f_code.co_name}" if isinstance(obj, types.FrameType) else type(obj).__name__
            for obj in gc.garbage
            if _is_ours(obj)
        )
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.collect()
    return found


# -- the receive buffer ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_frame_just_under_the_limit_costs_its_size_and_is_released(client_kind: str) -> None:
    """A 16 MiB - 1 frame: the buffer is the frame's size (it was 32 MiB, twice
    the limit), and goes back to the read size once the frame is taken (it
    stayed at 32 MiB for the life of the connection)."""
    after = frame(10)
    with peer_sending(frame(BIG), after, then_close=False) as sock:
        client = await open_client(client_kind, sock)
        try:
            receiver = client.client._receiver
            assert receiver.allocated_size() == wire.RECV_SIZE
            tracemalloc.start()
            try:
                packet = await client.recv()
                current, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert len(packet.body) == BIG
            # while receiving: the frame's buffer and the packet's bytes, nothing doubled; the
            # buffer grows with the frame's bytes (GROWTH times what came), and the step
            # before the last may still be held when the frame is taken
            most = (2 + 1 / GROWTH) * (BIG + wire.HEADER_SIZE) + MiB
            assert peak <= most, f"peak {peak / MiB:.1f} MiB"
            # after: the packet, and the buffer back to the read size
            assert current <= BIG + MiB, f"kept {current / MiB:.1f} MiB"
            assert receiver.allocated_size() == wire.RECV_SIZE
            del packet
            assert (await client.recv()).body == b"x" * 10
            assert receiver.allocated_size() == wire.RECV_SIZE
        finally:
            await client.close()


@pytest.mark.anyio
async def test_a_kept_buffer_is_reused_then_given_back_after_small_frames(client_kind: str) -> None:
    """keep_large_buffers (the default): large frames of about one size are
    all read into one buffer of the first one's size (no fresh pages per
    frame), never more than the frame; KEEP_SMALL_RUN small frames in a row
    give it back."""
    size = 2 * MiB
    frames = [frame(size), frame(size - 1000), frame(size)] + [frame(10)] * KEEP_SMALL_RUN
    with peer_sending(*frames, then_close=False) as sock:
        client = await open_client(client_kind, sock, keep=True)
        try:
            receiver = client.client._receiver
            assert (await client.recv()).body == b"x" * size
            kept = receiver._buf
            assert receiver.allocated_size() == size + wire.HEADER_SIZE
            assert receiver.kept
            tracemalloc.start()
            try:
                for body in (size - 1000, size):
                    assert len((await client.recv()).body) == body
                    assert receiver._buf is kept  # the same buffer: nothing allocated for it
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert peak <= size + MiB, f"peak {peak / MiB:.1f} MiB"  # the packets' bytes, no buffer
            for _ in range(KEEP_SMALL_RUN - 1):
                assert (await client.recv()).body == b"x" * 10
            assert receiver.kept
            assert receiver.allocated_size() == size + wire.HEADER_SIZE
            assert (await client.recv()).body == b"x" * 10
            assert not receiver.kept
            assert receiver.allocated_size() == wire.RECV_SIZE
        finally:
            await client.close()


@pytest.mark.anyio
async def test_a_kept_buffer_is_given_back_when_the_connection_idles(
    client_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client waiting for its next frame gives a kept buffer back after
    KEEP_IDLE_SECONDS of nothing: the peer sends the next frame only once
    it has (no timing assumed: it waits for the release, however long)."""
    for module in (sync_client, async_client):
        monkeypatch.setattr(module, "KEEP_IDLE_SECONDS", 0.01)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    client = await open_client(client_kind, ours, keep=True)
    receiver = client.client._receiver
    took_big, released = threading.Event(), threading.Event()

    def send() -> None:
        theirs.sendall(frame(MiB))
        took_big.wait()
        while receiver.kept:  # until the waiting client gives the buffer back
            if released.wait(0.005):
                return  # (the test failed)
        released.set()
        theirs.sendall(frame(10))

    thread = threading.Thread(target=send)
    thread.start()
    try:
        assert len((await client.recv()).body) == MiB
        assert receiver.kept
        took_big.set()
        assert (await client.recv()).body == b"x" * 10  # waited: the buffer went back meanwhile
        assert released.is_set()
        assert receiver.allocated_size() == wire.RECV_SIZE
    finally:
        released.set()
        thread.join()
        theirs.close()
        await client.close()


@pytest.mark.anyio
async def test_an_oversized_frame_is_refused_before_its_body_is_buffered(client_kind: str) -> None:
    limit = 1 * MiB
    oversized = FrameSerializer(max_frame_size=4 * MiB).frame_bytes(b"y" * 4 * MiB)
    with peer_sending(oversized, then_close=True) as sock:
        protocol = StreamProtocol(FrameSerializer(max_frame_size=limit))
        client = await connect(client_kind, sock, protocol, max_recv_size=wire.RECV_SIZE)
        try:
            with pytest.raises(Exception, match=r"frame of 4194304 bytes is over the limit of 1048576"):
                await client.recv()
            with pytest.raises(ConnectionBrokenError, match="peer closed the connection"):
                await client.recv()  # its bytes were dropped as they came, never kept
            assert client.client._receiver.allocated_size() == wire.RECV_SIZE
            assert client.client._receiver.buffered_size() == 0
        finally:
            await client.close()


# -- a closed client is freed at once ----------------------------------------------------------


async def _receive_then_break(kind: str, how: str = "eof") -> tuple[weakref.ref[Any], str]:
    """A client receives a large frame, then finds the connection broken twice
    (the peer closed: *how* is ``eof``, or ``reset`` when the peer left our
    bytes unread), fails to send, and is closed. Returns a weak reference to
    it and the message of the error."""
    with peer_sending(frame(4 * MiB), then_close=True) as sock:
        client = await open_client(kind, sock)
        if how == "reset":
            await client.send(wire.RawFrame(b"{}"))  # never read: the peer's close resets
        packet = await client.recv()
        assert len(packet.body) == 4 * MiB
        del packet
        messages = []
        for _ in range(2):  # the first failure, then the kept one raised again
            try:
                await client.recv()
            except ConnectionBrokenError as exc:
                messages.append(str(exc))
        try:
            await client.send(wire.RawFrame(b"{}"))
        except ConnectionBrokenError as exc:
            messages.append(str(exc).split(" (")[0])
        await client.close()
        ref = weakref.ref(client.client)
        del client
    expected = "peer closed the connection" if how == "eof" else "peer reset the connection"
    assert messages == [expected, expected, "peer closed the connection"]
    return ref, messages[0]


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["eof", "reset"])
async def test_a_broken_and_closed_client_is_freed_without_the_cyclic_gc(client_kind: str, how: str) -> None:
    with no_cyclic_gc():
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            ref, _ = await _receive_then_break(client_kind, how)
            kept = tracemalloc.get_traced_memory()[0] - baseline
        finally:
            tracemalloc.stop()
        assert ref() is None, "the client is still alive: a reference cycle holds it"
        assert kept < MiB, f"{kept / MiB:.1f} MiB still held after closing"
        assert cycles_of_ours() == []


@pytest.mark.anyio
async def test_many_broken_clients_hold_nothing_once_closed(client_kind: str) -> None:
    """Ten clients that each received 4 MiB: nothing of them is left, with the
    cyclic GC off all along (it was 10 x the buffer before)."""
    with no_cyclic_gc():
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            refs = [(await _receive_then_break(client_kind))[0] for _ in range(10)]
            kept = tracemalloc.get_traced_memory()[0] - baseline
        finally:
            tracemalloc.stop()
        assert [ref for ref in refs if ref() is not None] == []
        assert kept < MiB, f"{kept / MiB:.1f} MiB still held after closing"
        assert cycles_of_ours() == []


def test_copy_error_keeps_class_message_and_attributes_and_drops_the_traceback() -> None:
    from unixrpc import AncillaryDataTruncatedError
    from unixrpc.transport._common import copy_error

    def fail() -> None:
        try:
            raise OSError("the cause")
        except OSError as cause:
            message = "control data was truncated"
            raise AncillaryDataTruncatedError(message, bufsize=24, closed_fds=2) from cause

    with pytest.raises(AncillaryDataTruncatedError) as info:
        fail()
    assert info.value.__traceback__ is not None
    copy = copy_error(info.value)
    del info
    assert type(copy) is AncillaryDataTruncatedError
    assert (str(copy), copy.args, copy.bufsize, copy.closed_fds) == (
        "control data was truncated",
        ("control data was truncated",),
        24,
        2,
    )
    assert copy.__traceback__ is None
    assert copy.__cause__ is None
    assert copy.__context__ is None
    reset = copy_error(ConnectionResetError(104, "Connection reset by peer"))
    assert (type(reset), reset.errno, str(reset)) == (
        ConnectionResetError,
        104,
        "[Errno 104] Connection reset by peer",
    )
