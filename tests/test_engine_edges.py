"""Edges of how the engines run plain ``def`` handlers and generators, on
every engine: a generator stream cancelled while its step runs is still
closed (its ``finally`` runs); a call cancelled while it waits for a free
handler thread never runs; the threads engine needs no event loop thread."""

from __future__ import annotations

import array
import gc
import json
import logging
import os
import socket
import struct
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import suppress

import pytest
from pydantic import BaseModel

import rpc_support
from unixrpc import (
    FD,
    CallCancelledError,
    CallContext,
    Client,
    Method,
    PermissionDeniedError,
    Server,
    ServerBusyError,
    StreamMethod,
)

pytestmark = pytest.mark.server  # every test here runs on every engine


class Ticks(StreamMethod[int]):
    pass


class Hold(Method[str]):
    tag: str


def wait_for(predicate: object, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_a_generator_cancelled_mid_step_is_closed(sock_dir: str) -> None:
    closed, stepping, release = threading.Event(), threading.Event(), threading.Event()
    server = Server()

    @server.method(Ticks)
    def ticks(request: Ticks) -> Iterator[int]:
        try:
            yield 0
            stepping.set()
            release.wait(10)  # busy in the step when the client gives up
            yield 1
        finally:
            closed.set()

    path = os.path.join(sock_dir, "s")
    with rpc_support.serving_in_thread(server, path), Client(path) as client:
        with client.stream(Ticks()) as stream:
            assert next(iter(stream)) == 0
            assert stepping.wait(10)
        # the stream was given up (a cancel went out) while the generator runs its step
        release.set()
        assert closed.wait(10), "the generator's finally never ran"


def _frame(envelope: dict[str, object]) -> bytes:
    body = json.dumps(envelope).encode()
    return struct.pack(">IH", len(body), 0) + body


def _read_frame(sock: socket.socket) -> dict[str, object]:
    data = b""
    while len(data) < 6 or len(data) < 6 + struct.unpack(">IH", data[:6])[0]:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    size = struct.unpack(">IH", data[:6])[0]
    assert len(data) == 6 + size
    return json.loads(data[6:])  # type: ignore[no-any-return]


def test_a_call_cancelled_while_waiting_for_a_thread_never_runs(sock_dir: str) -> None:
    ran: list[str] = []
    gate = threading.Event()
    server = Server(max_threads=1, max_threads_per_connection=1)

    @server.method(Hold)
    def hold(request: Hold) -> str:
        ran.append(request.tag)
        if request.tag == "first":
            gate.wait(10)
        return request.tag

    path = os.path.join(sock_dir, "s")
    try:
        with rpc_support.serving_in_thread(server, path), socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(path)
            sock.sendall(_frame({"id": 1, "method": "Hold", "params": {"tag": "first"}}))
            wait_for(lambda: ran == ["first"])
            # the only handler thread is busy: "second" waits for it, and is cancelled there
            sock.sendall(_frame({"id": 2, "method": "Hold", "params": {"tag": "second"}}))
            sock.sendall(_frame({"cancel": 2}))
            assert _read_frame(sock)["error"]["code"] == "unixrpc.Cancelled"  # type: ignore[index]
            gate.set()
            assert _read_frame(sock) == {"id": 1, "result": "first"}
            sock.sendall(_frame({"id": 3, "method": "Hold", "params": {"tag": "third"}}))
            assert _read_frame(sock) == {"id": 3, "result": "third"}
    finally:
        gate.set()
    assert ran == ["first", "third"], "the cancelled call ran once a thread was free"


def test_cancelled_error_is_what_the_waiting_client_sees(sock_dir: str) -> None:
    gate = threading.Event()
    server = Server()

    @server.method(Hold)
    def hold(request: Hold) -> str:
        gate.wait(10)
        return request.tag

    path = os.path.join(sock_dir, "s")
    try:
        with rpc_support.serving_in_thread(server, path), Client(path) as client:
            with pytest.raises(TimeoutError):
                client.call(Hold(tag="slow"), timeout=0.2)
            gate.set()
            assert client.call(Hold(tag="next")) == "next"
    finally:
        gate.set()
    assert issubclass(CallCancelledError, Exception)


def test_refused_connections_and_denied_calls_are_logged_at_info(
    sock_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = Server(max_connections_per_uid=1, authorize=lambda ctx, request: request.tag != "no")

    @server.method(Hold)
    def hold(request: Hold) -> str:
        return request.tag

    path = os.path.join(sock_dir, "s")
    with (
        caplog.at_level(logging.DEBUG, logger="unixrpc.server"),
        rpc_support.serving_in_thread(server, path),
        Client(path) as client,
    ):
        assert client.call(Hold(tag="yes")) == "yes"
        with pytest.raises(PermissionDeniedError):
            client.call(Hold(tag="no"))
        with Client(path) as second, pytest.raises(ServerBusyError, match="limit 1 per uid"):
            second.call(Hold(tag="x"))
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any(m.startswith("denied Hold to pid") for m in infos), infos
    assert any("refused a connection" in m and "limit 1 per uid" in m for m in infos), infos
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any(m.startswith("call Hold id=") and ": ok in " in m for m in debug), debug
    assert any(m.startswith("call Hold id=") and "unixrpc.PermissionDenied" in m for m in debug), debug


def test_handlers_see_shutdown_begin(sock_dir: str) -> None:
    seen: list[bool] = []
    started, finish = threading.Event(), threading.Event()
    server = Server(shutdown_grace=10)

    @server.method(Hold)
    def hold(request: Hold, ctx: CallContext) -> str:
        started.set()
        seen.append(ctx.shutting_down)
        finish.wait(10)
        seen.append(ctx.shutting_down)
        return request.tag

    path = os.path.join(sock_dir, "s")
    with rpc_support.serving_in_thread(server, path), Client(path) as client:
        results: list[str] = []
        caller = threading.Thread(target=lambda: results.append(client.call(Hold(tag="t"))))
        caller.start()
        assert started.wait(10)
        server.shutdown()
        finish.set()
        caller.join(10)
        assert results == ["t"]  # a unary call gets the grace period
    assert seen == [False, True]


def test_the_server_wide_budget_of_buffered_bytes_closes_the_connection_that_grows(sock_dir: str) -> None:
    server = Server(max_buffered_bytes=6 * 1024 * 1024, max_frame_size=8 * 1024 * 1024)

    @server.method(Hold)
    def hold(request: Hold) -> str:
        return request.tag

    path = os.path.join(sock_dir, "s")
    body = b'{"id":1,"method":"Hold","params":{"tag":"' + b"x" * (4 * 1024 * 1024)
    header = struct.pack(">IH", len(body) + 3, 0)
    with rpc_support.serving_in_thread(server, path):
        first, second = socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX)
        with first, second:
            for sock in (first, second):
                sock.connect(path)
                sock.settimeout(10)
            first.sendall(header + body[: 2 * 1024 * 1024])  # 4 MiB announced, 2 MiB sent: held
            # the first has taken in all it was sent (its buffer grows with what arrived:
            # over 3 MiB on every engine, then no more) before the second starts, so the
            # second is the one that grows past the budget
            wait_for(lambda: server._rules.memory.total >= 3 * 1024 * 1024)
            held = [-1, server._rules.memory.total]
            while held[-1] != held[-2]:
                time.sleep(0.1)
                held.append(server._rules.memory.total)
            # 4 + 4 MiB is over the 6 MiB budget: the second is closed
            with suppress(BrokenPipeError, ConnectionResetError):
                second.sendall(header + body[: 2 * 1024 * 1024])
            notice = _read_frame(second)
            assert notice["id"] is None
            assert "budget of 6291456 bytes in buffers" in notice["error"]["message"]  # type: ignore[index]
            with suppress(ConnectionResetError):  # closed with our bytes unread: a reset
                assert second.recv(1) == b""
            first.sendall(body[2 * 1024 * 1024 :] + b'"}}')  # the first one completes and is served
            assert _read_frame(first) == {"id": 1, "result": "x" * (4 * 1024 * 1024)}
    assert server._rules.memory.total == 0


class Back(BaseModel):
    fd: FD


class GiveBack(StreamMethod[Back]):
    data: FD


class Ping(Method[int]):
    pass


def _read_frames_with_fds(sock: socket.socket, count: int) -> tuple[list[dict[str, object]], list[int]]:
    frames: list[dict[str, object]] = []
    fds: list[int] = []
    data = b""
    while len(frames) < count:
        chunk, ancdata, _, _ = sock.recvmsg(1 << 16, socket.CMSG_SPACE(4 * 8))
        assert chunk, "the server closed the connection"
        for _, _, payload in ancdata:
            fds.extend(array.array("i", payload[: len(payload) - len(payload) % 4]))
        data += chunk
        while len(data) >= 6 and len(data) >= 6 + struct.unpack(">IH", data[:6])[0]:
            size = struct.unpack(">IH", data[:6])[0]
            frames.append(json.loads(data[6 : 6 + size]))
            data = data[6 + size :]
    return frames, fds


def test_a_stream_item_handing_back_the_request_descriptor_is_sent(sock_dir: str) -> None:
    """Found by review: the item was still queued (replies held back while
    the reader had more requests in hand) when the stream ended and the core
    closed the request's descriptors: the anyio server crashed on a closed
    FileDescriptor, the threads engine lost the item and the final reply."""
    server = Server()

    @server.method(Ping)
    def ping(request: Ping) -> int:
        return 1

    @server.method(GiveBack)
    async def give_back(request: GiveBack) -> AsyncIterator[Back]:
        yield Back(fd=request.data)

    path = os.path.join(sock_dir, "s")
    with rpc_support.serving_in_thread(server, path), socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        r, w = os.pipe()
        try:
            data = _frame({"id": 1, "method": "GiveBack", "params": {"data": 0}, "stream": 4})
            data = struct.pack(">IH", len(data) - 6, 1) + data[6:]  # declares the descriptor
            data += _frame({"id": 2, "method": "Ping", "params": {}})  # in the same write
            rights = array.array("i", [r]).tobytes()
            sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
        finally:
            os.close(r)
        frames, fds = _read_frames_with_fds(sock, 3)
        try:
            assert {"id": 1, "item": {"fd": 0}} in frames
            assert {"id": 1, "result": None} in frames
            assert {"id": 2, "result": 1} in frames
            assert len(fds) == 1
            os.write(w, b"through")
            assert os.read(fds[0], 16) == b"through"  # the very pipe handed in
        finally:
            for fd in fds:
                os.close(fd)
            os.close(w)
    with rpc_support.serving_in_thread(server, path), Client(path) as client:  # and it serves again
        assert client.call(Ping()) == 1


class Slow(Method[str]):
    data: FD
    seconds: float


def test_calls_cut_off_at_shutdown_release_their_descriptors(sock_dir: str) -> None:
    """Found by review: calls cut off at the end of the grace period, or that
    never got a thread, kept their request descriptors until the garbage
    collector closed them (ResourceWarning: unclosed FileDescriptor)."""
    server = Server(shutdown_grace=0.2, max_threads=1, max_threads_per_connection=1)

    @server.method(Slow)
    def slow(request: Slow) -> str:
        time.sleep(request.seconds)
        return "done"

    path = os.path.join(sock_dir, "s")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with rpc_support.serving_in_thread(server, path), socket.socket(socket.AF_UNIX) as sock:
            sock.connect(path)
            for call_id in (1, 2, 3):
                r, w = os.pipe()
                body = _frame({"id": call_id, "method": "Slow", "params": {"data": 0, "seconds": 0.6}})
                body = struct.pack(">IH", len(body) - 6, 1) + body[6:]
                rights = array.array("i", [r]).tobytes()
                sock.sendmsg([body], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
                os.close(r)
                os.close(w)
            time.sleep(0.1)  # the first runs, the others wait for the only thread
        time.sleep(1.0)  # the running handler returns after the server stopped
        gc.collect()
    unclosed = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert unclosed == [], [str(w.message) for w in unclosed]
