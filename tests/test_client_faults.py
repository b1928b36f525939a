"""The RPC clients against a misbehaving or stalled server: a raw peer on
the other end of a socketpair, run by a thread, that writes exactly the
bytes and descriptors a test wants. Every case runs on the sync client and
on the async client under asyncio and trio.

Covers issue 11 (defect 5: the timeout covers sending; defect 8: descriptors
that came with no frame; the class of the broken error) and issue 13's
client messages."""

from __future__ import annotations

import array
import fcntl
import os
import socket
import struct
import termios
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import orjson
import pytest

from conftest import open_fds
from rpc_support import Add, Count, Echo, Log, Sleep
from unixrpc import (
    FD,
    AncillaryDataTruncatedError,
    AsyncClient,
    Client,
    ConnectionBrokenError,
    FileDescriptor,
    Method,
    RemoteProtocolError,
    ServerBusyError,
)
from unixrpc._core.wire import HEADER, HEADER_SIZE

pytestmark = pytest.mark.anyio

BIG = 1 << 20  # a request far larger than a socket buffer


class GetFd(Method[FD]):
    pass


class Peer:
    """The server end of a socketpair, driven by the test's script in a thread."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(10)
        self.buffer = b""

    def read_frame(self) -> dict[str, Any]:
        while True:
            if len(self.buffer) >= HEADER_SIZE:
                size, _ = HEADER.unpack_from(self.buffer)
                if len(self.buffer) >= HEADER_SIZE + size:
                    body = self.buffer[HEADER_SIZE : HEADER_SIZE + size]
                    self.buffer = self.buffer[HEADER_SIZE + size :]
                    return orjson.loads(body)  # type: ignore[no-any-return]
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise EOFError
            self.buffer += chunk

    def wait_queued(self, count: int) -> None:
        """Wait, reading nothing, until *count* bytes wait in the socket."""
        deadline = time.monotonic() + 10
        while struct.unpack("i", fcntl.ioctl(self.sock, termios.FIONREAD, b"\0" * 4))[0] < count:
            assert time.monotonic() < deadline, "the client wrote nothing"
            time.sleep(0.005)

    def read_all(self) -> bytes:
        """Every byte until the client closes."""
        data = self.buffer
        while chunk := self.sock.recv(1 << 16):
            data += chunk
        return data

    def send(self, body: bytes, *, declared: int = 0, fds: list[int] | None = None) -> None:
        data = HEADER.pack(len(body), declared) + body
        if fds:
            rights = array.array("i", fds).tobytes()
            sent = self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
            if sent < len(data):
                self.sock.sendall(data[sent:])
        else:
            self.sock.sendall(data)

    def serve(self) -> None:
        """Answer Add calls, ignore the rest, until the client hangs up."""
        try:
            while True:
                envelope = self.read_frame()
                if envelope.get("method") == "Add" and "id" in envelope:
                    params = envelope["params"]
                    self.send(orjson.dumps({"id": envelope["id"], "result": params["a"] + params["b"]}))
        except (EOFError, OSError):
            pass


@contextmanager
def peer(script: Callable[[Peer], None]) -> Iterator[socket.socket]:
    """A socketpair whose far end runs *script*; yields the client's end."""
    client_end, server_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            script(Peer(server_end))
        except BaseException as exc:  # reported by the test
            errors.append(exc)
        finally:
            server_end.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield client_end
    finally:
        client_end.close()  # a no-op once the client has it: the client closes it
        thread.join(10)
        assert not thread.is_alive(), "the peer script did not finish"
    if errors:
        raise errors[0]


class Driver:
    """Call, notify and stream alike on the sync and async clients."""

    def __init__(self, kind: str, client: Any) -> None:
        self.kind, self.client = kind, client

    async def call(self, method: Any, **kwargs: Any) -> Any:
        if self.kind == "sync":
            # in a thread, so that a client that blocks for ever fails the test instead of hanging it
            return await anyio.to_thread.run_sync(
                lambda: self.client.call(method, **kwargs), abandon_on_cancel=True
            )
        return await self.client.call(method, **kwargs)

    async def notify(self, method: Any) -> None:
        if self.kind == "sync":
            await anyio.to_thread.run_sync(self.client.notify, method, abandon_on_cancel=True)
        else:
            await self.client.notify(method)

    async def items(self, method: Any, count: int, **kwargs: Any) -> list[Any]:
        got: list[Any] = []
        if self.kind == "sync":

            def run() -> None:
                with self.client.stream(method, **kwargs) as stream:
                    for item in stream:
                        got.append(item)
                        if len(got) == count:
                            break

            await anyio.to_thread.run_sync(run, abandon_on_cancel=True)
        else:
            async with self.client.stream(method, **kwargs) as stream:
                async for item in stream:
                    got.append(item)
                    if len(got) == count:
                        break
        return got


@asynccontextmanager
async def connected(kind: str, sock: socket.socket, **kwargs: Any) -> AsyncIterator[Driver]:
    with anyio.fail_after(30):
        if kind == "sync":
            with Client(sock, **kwargs) as client:
                yield Driver(kind, client)
        else:
            async with AsyncClient(sock, **kwargs) as client:
                yield Driver(kind, client)


# -- defect 8: descriptors that came with no frame --------------------------------------------


async def test_descriptors_that_came_with_no_frame_break_the_connection(client_kind: str) -> None:
    """A server sends a descriptor with a reply that declares none: before the
    fix, the next reply that declares one got it (/dev/null instead of the pipe)."""
    before = open_fds()

    def script(p: Peer) -> None:
        request = p.read_frame()
        stray = os.open(os.devnull, os.O_RDONLY)
        try:
            p.send(orjson.dumps({"id": request["id"], "result": 3}), declared=0, fds=[stray])
        finally:
            os.close(stray)
        try:
            request = p.read_frame()
        except EOFError:
            return  # the fixed client sends nothing more
        r, w = os.pipe()
        os.write(w, b"the pipe")
        try:
            p.send(orjson.dumps({"id": request["id"], "result": 0}), declared=1, fds=[r])
        finally:
            os.close(r)
            os.close(w)
        p.read_all()

    with peer(script) as sock:
        async with connected(client_kind, sock, timeout=10) as client:
            assert await client.call(Add(a=1, b=2)) == 3  # its own reply was whole
            try:
                handle = await client.call(GetFd())
            except RemoteProtocolError as exc:
                error: BaseException = exc
            else:
                assert isinstance(handle, FileDescriptor)
                target = os.readlink(f"/proc/self/fd/{handle.fileno()}")
                handle.close()
                pytest.fail(f"the reply took a descriptor that came with no frame ({target})")
            assert type(error) is RemoteProtocolError
            assert str(error) == (
                "connection is broken: peer broke the protocol: 1 file descriptors came with no frame"
            )
            with pytest.raises(RemoteProtocolError, match="came with no frame"):
                await client.call(Add(a=1, b=2))  # broken for good
    assert open_fds() <= before


# -- the class of the broken error (issue 11, "Also") -----------------------------------------


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b"not json", "connection is broken: peer sent an invalid envelope: invalid literal"),
        (b'{"id": "one", "result": 1}', 'connection is broken: peer sent an invalid envelope: "id" must be'),
        (b"x" * 200, "connection is broken: server broke the protocol: frame of 200 bytes is over the limit"),
    ],
    ids=["not-json", "bad-id", "oversized"],
)
async def test_a_server_that_breaks_the_protocol_raises_remote_protocol_error(
    client_kind: str, reply: bytes, message: str
) -> None:
    def script(p: Peer) -> None:
        p.read_frame()
        p.send(reply)
        p.read_all()

    with peer(script) as sock:
        async with connected(client_kind, sock, timeout=10, max_frame_size=100) as client:
            for _ in range(2):  # the call in flight, then every later one
                with pytest.raises(RemoteProtocolError) as caught:
                    await client.call(Add(a=1, b=2))
                assert type(caught.value) is RemoteProtocolError
                assert str(caught.value).startswith(message)


async def test_lost_descriptors_raise_ancillary_data_truncated_error(client_kind: str) -> None:
    before = open_fds()

    def script(p: Peer) -> None:
        request = p.read_frame()
        fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(4)]
        try:  # more than the client's control buffer holds (max_fds_per_frame=1)
            p.send(orjson.dumps({"id": request["id"], "result": 0}), declared=4, fds=fds)
        finally:
            for fd in fds:
                os.close(fd)
        p.read_all()

    with peer(script) as sock:
        async with connected(client_kind, sock, timeout=10, max_fds_per_frame=1) as client:
            for _ in range(2):
                with pytest.raises(AncillaryDataTruncatedError) as caught:
                    await client.call(GetFd())
                assert type(caught.value) is AncillaryDataTruncatedError
                assert str(caught.value).startswith("connection is broken: ")
                assert caught.value.bufsize > 0
    assert open_fds() <= before


# -- defect 5: the timeout covers sending the request ------------------------------------------


async def test_timeout_covers_a_request_the_server_does_not_read(client_kind: str) -> None:
    """A request cut in the middle of its frame by its timeout: TimeoutError, and
    the connection is broken, so no later bytes can follow the half frame."""
    received: list[bytes] = []
    go = threading.Event()
    before = open_fds()

    def script(p: Peer) -> None:
        go.wait(30)  # reads nothing until the call has timed out
        received.append(p.read_all())

    with peer(script) as sock:
        async with connected(client_kind, sock, timeout=10) as client:
            with pytest.raises(TimeoutError) as caught:
                await client.call(Echo(payload={"pad": "x" * BIG}), timeout=0.5)
            assert str(caught.value) == (
                "could not send the request for Echo within 0.5 seconds: "
                "it was cut in the middle of its frame, so the connection is broken"
            )
            with pytest.raises(
                ConnectionBrokenError, match="connection is broken: a frame was cut in the middle"
            ):
                await client.call(Add(a=1, b=2))
            with pytest.raises(ConnectionBrokenError):
                await client.notify(Log(line="x"))
            go.set()
    data = received[0]
    size, _ = HEADER.unpack_from(data)
    assert size > BIG
    assert 0 < len(data) < HEADER_SIZE + size  # half a frame, and nothing after it
    assert b'"method":"Echo"' in data[:100]
    assert open_fds() <= before


async def test_a_request_not_started_within_its_timeout_leaves_the_connection_usable(
    client_kind: str,
) -> None:
    """A large notification holds the write side while the server reads nothing;
    a call that times out before a byte of it is written changes nothing."""
    go, blocked = threading.Event(), threading.Event()

    def script(p: Peer) -> None:
        p.wait_queued(16 * 1024)  # the notification has started, and cannot finish
        blocked.set()
        go.wait(30)
        p.serve()

    with peer(script) as sock:
        async with connected(client_kind, sock, timeout=10) as client, anyio.create_task_group() as tg:
            tg.start_soon(client.notify, Echo(payload={"pad": "x" * BIG}))  # blocks: nobody reads
            assert await anyio.to_thread.run_sync(blocked.wait, 10)
            with pytest.raises(TimeoutError) as caught:
                await client.call(Add(a=1, b=2), timeout=0.5)
            assert str(caught.value) == (
                "could not send the request for Add within 0.5 seconds (the server is not reading)"
            )
            go.set()  # the notification goes through; the connection still works
            assert await client.call(Add(a=2, b=3)) == 5


async def test_timeout_covers_a_stream_request_the_server_does_not_read(client_kind: str) -> None:
    go = threading.Event()

    class BigCount(Count, name="Count"):
        pad: str = ""

    def script(p: Peer) -> None:
        go.wait(30)
        p.read_all()

    with peer(script) as sock:
        async with connected(client_kind, sock, timeout=10) as client:
            with pytest.raises(
                TimeoutError, match=r"could not send the request for Count within 0\.5 seconds"
            ):
                await client.items(BigCount(n=1, pad="x" * BIG), 1, timeout=0.5)
            with pytest.raises(ConnectionBrokenError):
                await client.call(Add(a=1, b=2))
            go.set()


# -- issue 13: messages that say what to do ----------------------------------------------------


async def test_timeout_names_the_method_and_the_seconds(client_kind: str) -> None:
    def script(p: Peer) -> None:
        request = p.read_frame()  # Sleep: never answered
        assert request["method"] == "Sleep"
        assert p.read_frame() == {"cancel": request["id"]}  # the timed-out call is cancelled
        p.serve()

    with peer(script) as sock:
        async with connected(client_kind, sock) as client:
            with pytest.raises(TimeoutError) as caught:
                await client.call(Sleep(seconds=30), timeout=0.25)
            assert type(caught.value) is TimeoutError
            assert str(caught.value) == "no reply to Sleep within 0.25 seconds"
            assert await client.call(Add(a=1, b=2)) == 3  # still usable


async def test_stream_timeout_is_per_item_and_says_how_to_wait_for_ever(client_kind: str) -> None:
    def script(p: Peer) -> None:
        request = p.read_frame()
        p.send(orjson.dumps({"id": request["id"], "item": 0}))  # then nothing
        p.read_all()

    with peer(script) as sock:
        async with connected(client_kind, sock, timeout=0.3) as client:  # the client's default
            with pytest.raises(TimeoutError) as caught:
                await client.items(Count(n=5), 5)
            assert type(caught.value) is TimeoutError
            assert str(caught.value) == (
                "no item from Count within 0.3 seconds (the timeout applies to each item; "
                "timeout=None waits for ever)"
            )


@pytest.mark.parametrize(
    ("api", "method", "message"),
    [
        ("call", Add, r"call() takes a method instance, not the class Add: write client.call(Add(...))"),
        (
            "notify",
            Log,
            r"notify() takes a method instance, not the class Log: write client.notify(Log(...))",
        ),
        (
            "stream",
            Count,
            r"stream() takes a method instance, not the class Count: write client.stream(Count(...))",
        ),
    ],
)
async def test_passing_the_method_class_instead_of_an_instance(
    client_kind: str, api: str, method: type, message: str
) -> None:
    with peer(Peer.serve) as sock:
        async with connected(client_kind, sock, timeout=10) as client:
            attempt = {"call": client.call, "notify": client.notify, "stream": lambda m: client.items(m, 1)}
            with pytest.raises(TypeError) as caught:
                await attempt[api](method)
            assert type(caught.value) is TypeError
            assert str(caught.value) == message
            assert await client.call(Add(a=1, b=2)) == 3


async def test_a_server_that_says_why_it_hangs_up_is_believed(client_kind: str) -> None:
    """Over its connection limit, a server sends an error with id null and closes
    without reading: the call raises that error, not the failed write."""
    sent = threading.Event()

    def script(p: Peer) -> None:
        p.send(
            orjson.dumps({"id": None, "error": {"code": "unixrpc.Busy", "message": "too many connections"}})
        )
        sent.set()  # and hangs up: the client's write fails with EPIPE

    with peer(script) as sock:
        async with connected(client_kind, sock, timeout=10) as client:
            await anyio.to_thread.run_sync(sent.wait, 10)
            await anyio.sleep(0.1)  # (the peer closes its end right after)
            for _ in range(2):
                with pytest.raises(ServerBusyError, match="too many connections"):
                    await client.call(Echo(payload={"pad": "x" * BIG}))


async def test_descriptors_of_a_frame_cut_short_are_closed_with_the_connection(client_kind: str) -> None:
    """A reply that stops after its first bytes (its descriptor with them): the
    call times out, and closing the client closes the descriptor."""
    before = open_fds()
    done = threading.Event()

    def script(p: Peer) -> None:
        request = p.read_frame()
        body = orjson.dumps({"id": request["id"], "result": 0})
        fd = os.open(os.devnull, os.O_RDONLY)
        try:
            header = HEADER.pack(len(body), 1)
            rights = array.array("i", [fd]).tobytes()
            p.sock.sendmsg([header + body[:3]], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
        finally:
            os.close(fd)
        done.wait(30)
        p.read_all()

    with peer(script) as sock:
        async with connected(client_kind, sock) as client:
            with pytest.raises(TimeoutError, match=r"no reply to GetFd within 0\.3 seconds"):
                await client.call(GetFd(), timeout=0.3)
        done.set()
    assert open_fds() <= before
