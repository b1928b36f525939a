"""File descriptors in typed calls: FD fields in requests, results, stream
items and error data, both directions, sync and async (asyncio, trio);
ownership; assignment by declared count; limits; no leaks on any path."""

from __future__ import annotations

import array
import gc
import hashlib
import os
import socket
import stat
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from conftest import open_fds
from rpc_support import Driver, serving, serving_in_thread
from unixrpc import (
    FD,
    AsyncClient,
    Client,
    ConnectionBrokenError,
    FileDescriptor,
    InvalidParamsError,
    LocalProtocolError,
    Method,
    MethodNotFoundError,
    RPCError,
    Server,
    SharedBuffer,
    StreamMethod,
)

pytestmark = [pytest.mark.anyio, pytest.mark.server]  # every test here runs on every engine


class LogHandle(BaseModel):
    name: str
    fd: FD


class OpenLog(Method[LogHandle]):
    name: str


class Upload(Method[str]):
    """Returns the sha256 of what the descriptor holds."""

    data: FD
    label: str = ""


class UploadLoose(Method[str], name="Upload"):
    """Same wire name, a label the server rejects (and a descriptor that must not leak)."""

    data: FD
    label: int


class Pipes(StreamMethod[LogHandle]):
    count: int


class Crash(Method[int]):
    data: FD


class SlowWithFd(Method[LogHandle]):
    seconds: float


class Ping(Method[int]):
    pass


class ManyFds(Method[int]):
    """Returns how many descriptors arrived."""

    fds: list[FD]


class Missing(Method[int]):
    data: FD


class Digest(Method[int]):
    """Maps a SharedBuffer and returns its size and checks its first byte."""

    buffer: FD


class Refused(RPCError, code="files.Refused"):
    """The server refuses, handing back a descriptor to explain why."""

    reason: str
    evidence: FD


def temp_file(content: bytes) -> int:
    fd, path = tempfile.mkstemp()
    os.unlink(path)
    os.write(fd, content)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def read_all(fd: int) -> bytes:
    if not stat.S_ISSOCK(os.fstat(fd).st_mode):
        os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def fd_server(log_dir: str) -> Server:
    server = Server()

    @server.method(OpenLog)
    def open_log(req: OpenLog) -> LogHandle:
        fd = os.open(os.path.join(log_dir, f"{req.name}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return LogHandle(name=req.name, fd=FileDescriptor.transfer(fd))

    @server.method(Upload)
    def upload(req: Upload) -> str:
        return hashlib.sha256(read_all(req.data.fileno())).hexdigest()

    @server.method(Pipes)
    async def pipes(req: Pipes) -> AsyncIterator[LogHandle]:
        for i in range(req.count):
            yield LogHandle(name=str(i), fd=FileDescriptor.transfer(temp_file(f"item {i}".encode())))

    @server.method(Crash)
    async def crash(req: Crash) -> int:
        if req.data.fileno() >= 0:
            raise Refused(reason="no", evidence=FileDescriptor.transfer(temp_file(b"evidence")))
        return 0

    @server.method(SlowWithFd)
    async def slow(req: SlowWithFd) -> LogHandle:
        await anyio.sleep(req.seconds)
        return LogHandle(name="late", fd=FileDescriptor.transfer(temp_file(b"late")))

    @server.method(Ping)
    async def ping(req: Ping) -> int:
        return 1

    @server.method(ManyFds)
    async def many(req: ManyFds) -> int:
        return len({os.fstat(fd.fileno()).st_ino for fd in req.fds}) * len(req.fds)

    @server.method(Digest)
    def digest(req: Digest) -> int:
        view = SharedBuffer.map(req.buffer)
        try:
            return len(view) if view[:1] in (b"", b"x") else -1
        finally:
            view.release()

    return server


@asynccontextmanager
async def rpc(kind: str, sock_dir: str, **client_kwargs: Any) -> AsyncIterator[Driver]:
    server = fd_server(sock_dir)
    path = os.path.join(sock_dir, "fd.sock")
    if kind == "sync":
        with serving_in_thread(server, path), Client(path, **client_kwargs) as client:
            yield Driver(kind, client)
    else:
        async with serving(server, path), AsyncClient(path, **client_kwargs) as client:
            yield Driver(kind, client)


@pytest.fixture
def fd_baseline() -> Iterator[None]:
    """The process's descriptor count is back to where it was."""
    gc.collect()
    before = open_fds()
    yield
    gc.collect()
    leaked = open_fds() - before
    assert not leaked, f"leaked descriptors: {sorted(leaked)}"


# -- in both directions ------------------------------------------------------------------


async def test_result_with_fd(client_kind: str, sock_dir: str, fd_baseline: None) -> None:
    async with rpc(client_kind, sock_dir) as client:
        handle = await client.call(OpenLog(name="app"))
        assert isinstance(handle.fd, FileDescriptor)
        assert handle.fd.owned
        with handle.fd.open("a") as log:
            log.write("hello\n")
        assert handle.fd.closed, "open() hands ownership to the file object"
    with open(os.path.join(sock_dir, "app.log")) as written:
        assert written.read() == "hello\n"


@pytest.mark.parametrize("form", ["file", "int", "socket", "FileDescriptor"])
async def test_request_with_fd_of_every_kind(
    client_kind: str, sock_dir: str, form: str, fd_baseline: None
) -> None:
    content = f"payload as {form}".encode()
    expected = hashlib.sha256(content).hexdigest()
    async with rpc(client_kind, sock_dir) as client:
        if form == "socket":
            left, right = socket.socketpair()
            with left, right:
                right.sendall(content)
                right.shutdown(socket.SHUT_WR)

                class SocketUpload(Method[str], name="Upload"):
                    data: FD

                assert await client.call(SocketUpload(data=left)) == expected
                assert left.fileno() >= 0, "the sender's socket stays open"
            return
        fd = temp_file(content)
        try:
            if form == "file":
                with os.fdopen(os.dup(fd), "rb") as fobj:
                    assert await client.call(Upload(data=fobj)) == expected
                    assert not fobj.closed
            elif form == "int":
                assert await client.call(Upload(data=fd)) == expected
                os.fstat(fd)  # still open
            else:
                with FileDescriptor(os.dup(fd)) as handle:
                    assert await client.call(Upload(data=handle)) == expected
                    assert not handle.closed
        finally:
            os.close(fd)


async def test_transfer_closes_after_send(client_kind: str, sock_dir: str, fd_baseline: None) -> None:
    async with rpc(client_kind, sock_dir) as client:
        fobj = os.fdopen(temp_file(b"given away"), "rb")
        assert (
            await client.call(Upload(data=FileDescriptor.transfer(fobj)))
            == hashlib.sha256(b"given away").hexdigest()
        )
        assert fobj.closed, "ownership passed to the call: closed once sent"


async def test_stream_items_with_fds(client_kind: str, sock_dir: str, fd_baseline: None) -> None:
    async with rpc(client_kind, sock_dir) as client:
        items = await client.stream(Pipes(count=20))
        assert [item.name for item in items] == [str(i) for i in range(20)]
        for i, item in enumerate(items):
            with item.fd:
                assert read_all(item.fd.fileno()) == f"item {i}".encode()


async def test_error_data_with_fd(client_kind: str, sock_dir: str, fd_baseline: None) -> None:
    async with rpc(client_kind, sock_dir) as client:
        fd = temp_file(b"x")
        try:
            with pytest.raises(Refused) as info:
                await client.call(Crash(data=fd))
        finally:
            os.close(fd)
        assert info.value.reason == "no"
        with info.value.evidence as evidence:
            assert read_all(evidence.fileno()) == b"evidence"


async def test_received_fd_closed_by_gc_with_warning(
    client_kind: str, sock_dir: str, fd_baseline: None
) -> None:
    async with rpc(client_kind, sock_dir) as client:
        handle = await client.call(OpenLog(name="forgotten"))
        number = handle.fd.fileno()
        with pytest.warns(ResourceWarning, match="unclosed <FileDescriptor"):  # noqa: PT031
            del handle
            gc.collect()
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.fstat(number)


def test_file_descriptor_api(fd_baseline: None) -> None:
    fd = temp_file(b"abc")
    handle = FileDescriptor(fd)
    assert handle.fileno() == fd
    assert handle.detach() == fd
    assert handle.closed
    with pytest.raises(ValueError, match="closed FileDescriptor"):
        handle.fileno()
    handle.close()  # idempotent; the detached fd is ours again
    os.fstat(fd)
    borrowed = FileDescriptor.borrow(fd)
    borrowed.close()
    os.fstat(fd)  # borrowing never closes
    with FileDescriptor(fd) as owned:
        assert owned.owned
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)
    with pytest.raises(ValueError, match="invalid file descriptor"):
        FileDescriptor(-1)
    with pytest.raises(TypeError, match="expected a file descriptor"):
        FileDescriptor.borrow("nope")
    left, right = socket.socketpair()
    with FileDescriptor(left.detach()).socket() as sock, right:
        sock.sendall(b"ok")
        assert right.recv(2) == b"ok"


# -- frame assignment by declared count (systemd issue 43823) ----------------------------------


async def test_notification_without_fds_then_call_with_fds(
    client_kind: str, sock_dir: str, fd_baseline: None
) -> None:
    """Both frames are queued before the server reads: the kernel may hand the
    second frame's fd over with the first frame's bytes."""

    class Note(Method[None], name="Ping"):
        pass

    async with rpc(client_kind, sock_dir) as client:
        for i in range(50):
            content = f"round {i}".encode()
            fd = temp_file(content)
            try:
                await client.notify(Note())
                assert await client.call(Upload(data=fd)) == hashlib.sha256(content).hexdigest()
            finally:
                os.close(fd)


def _frame(body: bytes, nfds: int = 0) -> bytes:
    return len(body).to_bytes(4, "big") + nfds.to_bytes(2, "big") + body


def _read_requests(sock: socket.socket, count: int) -> list[bytes]:
    import json

    data = b""
    bodies = []
    while len(bodies) < count:
        while len(data) < 6 or len(data) < 6 + int.from_bytes(data[:4], "big"):
            data += sock.recv(65536)
        size = int.from_bytes(data[:4], "big")
        bodies.append(json.loads(data[6 : 6 + size]))
        data = data[6 + size :]
    return bodies


def test_stream_item_then_reply_with_fds_in_one_read(fd_baseline: None) -> None:
    """A foreign server queues a stream item (no fds) and, right behind it, the
    reply of another call with an fd: the client must give the fd to the reply."""
    client_end, server_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with server_end, Client(client_end) as client:
        stream = client.stream(Pipes(count=1))  # call 1
        results: list[Any] = []
        caller = threading.Thread(target=lambda: results.append(client.call(OpenLog(name="x"))))  # call 2
        caller.start()
        requests = _read_requests(server_end, 2)
        assert sorted(r["method"] for r in requests) == ["OpenLog", "Pipes"]
        ids = {r["method"]: r["id"] for r in requests}
        fd = temp_file(b"for the reply")
        item = b'{"id":%d,"item":{"name":"0","fd":0}}' % ids["Pipes"]
        item_fd = temp_file(b"for the item")
        reply = b'{"id":%d,"result":{"name":"x","fd":0}}' % ids["OpenLog"]
        end = b'{"id":%d,"result":null}' % ids["Pipes"]
        # item frame with its fd, then the reply frame with its fd, then the end
        server_end.sendmsg(
            [_frame(item, 1)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [item_fd]))]
        )
        server_end.sendmsg(
            [_frame(reply, 1)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
        )
        server_end.sendall(_frame(end))
        os.close(fd)
        os.close(item_fd)
        (only_item,) = list(stream)
        caller.join(timeout=5)
        with only_item.fd, results[0].fd:
            assert read_all(only_item.fd.fileno()) == b"for the item"
            assert read_all(results[0].fd.fileno()) == b"for the reply"


# -- limits ----------------------------------------------------------------------------------


async def test_too_many_fds_is_refused_before_sending(
    client_kind: str, sock_dir: str, fd_baseline: None
) -> None:
    async with rpc(client_kind, sock_dir, max_fds_per_frame=4) as client:
        fd = temp_file(b"")
        try:
            with pytest.raises(LocalProtocolError, match="at most 4 file descriptors, got 5"):
                await client.call(ManyFds(fds=[fd] * 5))
            assert await client.call(ManyFds(fds=[fd] * 4)) == 4, "nothing was sent; the connection is fine"
        finally:
            os.close(fd)


def test_truncated_control_data_fails_the_connection(fd_baseline: None) -> None:
    client_end, server_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with server_end, Client(client_end, max_fds_per_frame=2) as client:
        errors: list[BaseException] = []

        def call() -> None:
            try:
                client.call(Ping())
            except BaseException as exc:
                errors.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        (request,) = _read_requests(server_end, 1)
        fds = [temp_file(b"") for _ in range(20)]
        body = b'{"id":%d,"result":1}' % request["id"]
        server_end.sendmsg(
            [_frame(body, 20)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        )
        for fd in fds:
            os.close(fd)
        caller.join(timeout=5)
        assert len(errors) == 1
        assert isinstance(errors[0], ConnectionBrokenError)
        assert "truncated" in str(errors[0])
        with pytest.raises(ConnectionBrokenError):
            client.call(Ping())


# -- every failure path closes its descriptors -----------------------------------------------------


async def test_no_leak_across_calls_and_failures(client_kind: str, sock_dir: str, fd_baseline: None) -> None:
    """Every kind of call and failure, 50 times each (``make stress``: 375 to 500 times)."""
    await _calls_and_failures(client_kind, sock_dir, rounds=400)


@pytest.mark.stress
async def test_no_leak_across_many_calls_and_failures(
    client_kind: str, sock_dir: str, fd_baseline: None
) -> None:
    await _calls_and_failures(client_kind, sock_dir, rounds=4_000 if client_kind == "sync" else 3_000)


async def _calls_and_failures(client_kind: str, sock_dir: str, rounds: int) -> None:
    async with rpc(client_kind, sock_dir) as client:
        fd = temp_file(b"data")
        try:
            for i in range(rounds):
                step = i % 8
                if step == 0:
                    handle = await client.call(OpenLog(name="loop"))
                    handle.fd.close()
                elif step == 1:
                    await client.call(Upload(data=fd))
                elif step == 2:  # params fail validation on the server, with an fd attached
                    with pytest.raises(InvalidParamsError):
                        await client.call(UploadLoose(data=fd, label=5))
                elif step == 3:  # unknown method, with an fd attached
                    with pytest.raises(MethodNotFoundError):
                        await client.call(Missing(data=fd))
                elif step == 4:  # the handler raised; request fd and error fd
                    with pytest.raises(Refused) as info:
                        await client.call(Crash(data=fd))
                    info.value.evidence.close()
                elif step == 5:  # timed out: the late reply carries an fd to drop
                    with pytest.raises(TimeoutError):  # (a 100x margin: a loaded machine deschedules)
                        await client.call(SlowWithFd(seconds=0.2), timeout=0.002)
                elif step == 6:
                    for item in await client.stream(Pipes(count=2)):
                        item.fd.close()
                else:
                    assert await client.call(Ping()) == 1
        finally:
            os.close(fd)
        await anyio.sleep(0.4)  # let late replies arrive and be dropped


async def test_connection_lost_mid_frame_closes_fds(
    anyio_backend: str, sock_dir: str, fd_baseline: None
) -> None:
    path = os.path.join(sock_dir, "fd.sock")
    async with serving(fd_server(sock_dir), path):
        for _ in range(20):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(path)
                fd = temp_file(b"half")
                frame = _frame(b'{"id":1,"method":"Upload","params":{"data":0}}', 1)
                sock.sendmsg([frame[:10]], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
                os.close(fd)
            await anyio.sleep(0.01)
        async with AsyncClient(path) as client:
            assert await client.call(Ping()) == 1


# -- SharedBuffer ------------------------------------------------------------------------------


async def test_shared_buffer_handoff(client_kind: str, sock_dir: str, fd_baseline: None) -> None:
    data = b"x" * (3 * 1024 * 1024 + 7)
    async with rpc(client_kind, sock_dir) as client:
        with SharedBuffer.from_bytes(data) as buffer:
            assert SharedBuffer.is_sealed(buffer)
            assert await client.call(Digest(buffer=buffer)) == len(data)
            view = SharedBuffer.map(buffer)
            try:
                assert view == data
            finally:
                view.release()
            with pytest.raises(PermissionError):
                os.write(buffer.fileno(), b"y")  # sealed: nobody can change it


def test_shared_buffer_from_file_and_unsealed(tmp_path: Any, fd_baseline: None) -> None:
    source = tmp_path / "blob"
    source.write_bytes(b"file contents " * 1000)
    with SharedBuffer.from_file(source) as buffer:
        view = SharedBuffer.map(buffer)
        assert bytes(view) == source.read_bytes()
        view.release()
    with FileDescriptor(os.memfd_create("plain", os.MFD_CLOEXEC)) as unsealed:
        os.write(unsealed.fileno(), b"mutable")
        with pytest.raises(ValueError, match="not sealed"):
            SharedBuffer.map(unsealed)
    with SharedBuffer.from_bytes(b"") as empty:
        assert SharedBuffer.map(empty) == b""


# -- regressions found by review --------------------------------------------------------------


class Holder(BaseModel):
    fd: FD


class EchoFd(Method[Holder]):
    fd: FD


class Labelled(BaseModel):
    fd: FD
    label: int


class Plain(BaseModel):
    fd: FD
    text: str


class PickOne(Method[Labelled | Plain]):
    """The result is a union of models with FD fields: pydantic tries both."""

    text: str


def regression_server() -> Server:
    server = Server()

    @server.method(EchoFd)
    async def echo(req: EchoFd) -> Holder:
        return Holder(fd=req.fd)  # hand the request's descriptor back in the reply

    @server.method(PickOne)
    async def pick(req: PickOne) -> Plain:
        return Plain(fd=FileDescriptor.transfer(temp_file(req.text.encode())), text=req.text)

    @server.method(Ping)
    async def ping(req: Ping) -> int:
        return 1

    return server


async def test_reply_may_hand_back_a_request_fd(anyio_backend: str, sock_dir: str, fd_baseline: None) -> None:
    path = os.path.join(sock_dir, "fd.sock")
    async with serving(regression_server(), path), AsyncClient(path) as client:
        fd = temp_file(b"round trip")
        try:
            handle = await client.call(EchoFd(fd=fd))
        finally:
            os.close(fd)
        with handle.fd:
            assert read_all(handle.fd.fileno()) == b"round trip"
        assert await client.call(Ping()) == 1, "the server is still alive"


async def test_fd_fields_in_a_union(anyio_backend: str, sock_dir: str, fd_baseline: None) -> None:
    path = os.path.join(sock_dir, "fd.sock")
    async with serving(regression_server(), path), AsyncClient(path) as client:
        result = await client.call(PickOne(text="second branch"))
        assert isinstance(result, Plain)
        with result.fd:
            assert read_all(result.fd.fileno()) == b"second branch"
