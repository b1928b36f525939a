"""The daemon side: the socket file, limits, the authorization hook, graceful
shutdown and signals, robustness against peers that break the wire format,
handler errors, and descriptor hygiene. Real Unix sockets throughout; raw
peers speak the wire format by hand (u32 body length | u16 fd count | JSON)."""

from __future__ import annotations

import array
import errno
import gc
import grp
import json
import logging
import os
import random
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.from_thread import start_blocking_portal
from pydantic import field_validator

import rpc_support
from conftest import open_fds
from rpc_support import Add, Events, Fail, Log, Sleep, make_server, serving, serving_in_thread
from unixrpc import (
    FD,
    AsyncClient,
    CallContext,
    Client,
    ConnectionBrokenError,
    InternalError,
    Method,
    PermissionDeniedError,
    Server,
    ServerBusyError,
    ServerShuttingDownError,
    UnixCredentials,
)

pytestmark = pytest.mark.server  # every test here runs on every engine

BACKENDS = ["asyncio", "trio"]
PROTOCOL_ERROR = "unixrpc.ProtocolError"


# -- helpers -------------------------------------------------------------------------------------


def sock_path(sock_dir: str, name: str = "s.sock") -> str:
    return os.path.join(sock_dir, name)


def mode_of(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def wait_until(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    with anyio.fail_after(seconds):
        while not predicate():
            await anyio.sleep(0.005)


def wait_until_sync(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


class _Immediate:
    """What cancels serving at once on the threads engine (no cancel scope there)."""

    def __init__(self, server: Server) -> None:
        self._server = server

    def cancel(self) -> None:
        self._server.shutdown(grace=0)


@asynccontextmanager
async def running(server: Server, path: str | bytes) -> AsyncIterator[tuple[anyio.Event, Any]]:
    """Serve for the block (in the current loop on the anyio engine, in a
    thread on the threads engine). Yields an event set once serving has
    ended, and what cancels serving alone, at once (a cancel scope)."""
    stopped = anyio.Event()
    if rpc_support.ENGINE == "threads":
        failure: list[BaseException] = []
        ready = threading.Event()

        def run() -> None:
            try:
                server._serving.blocking("threads", lambda _: ready.set(), path)
            except BaseException as exc:
                failure.append(exc)
            finally:
                ready.set()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        await anyio.to_thread.run_sync(ready.wait)
        if failure:
            raise failure[0]
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                await anyio.to_thread.run_sync(thread.join)
                stopped.set()

            tg.start_soon(watch)
            try:
                yield stopped, _Immediate(server)
            finally:
                server.shutdown(grace=0)
        return
    scope = anyio.CancelScope()

    async def serve(*, task_status: anyio.abc.TaskStatus[Any]) -> None:
        try:
            with scope:
                await server.serve(path, task_status=task_status)
        finally:
            stopped.set()

    async with anyio.create_task_group() as tg:
        await tg.start(serve)
        try:
            yield stopped, scope
        finally:
            tg.cancel_scope.cancel()


async def add_via_new_client(path: str | bytes, a: int = 2, b: int = 3) -> int:
    async with AsyncClient(path) as client:
        return await client.call(Add(a=a, b=b))


# raw peers: the wire format by hand


def frame(body: bytes, nfds: int = 0) -> bytes:
    return struct.pack(">IH", len(body), nfds) + body


def envelope(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def request(call_id: int, method: str, params: Any) -> bytes:
    return envelope(id=call_id, method=method, params=params)


def raw_connect(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(5)
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def send_with_fds(sock: socket.socket, data: bytes, count: int) -> None:
    """Send *data* with *count* descriptors (of /dev/null); our copies are closed after."""
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(count)]
    try:
        rights = array.array("i", fds).tobytes()
        sent = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
        if sent < len(data):
            sock.sendall(data[sent:])
    finally:
        for fd in fds:
            os.close(fd)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def recv_envelope(sock: socket.socket) -> dict[str, Any] | None:
    """The next envelope, or None at end of stream."""
    header = recv_exactly(sock, 6)
    if not header:
        return None
    size, nfds = struct.unpack(">IH", header)
    assert nfds == 0
    body = recv_exactly(sock, size)
    assert len(body) == size, "connection closed in the middle of a frame"
    return json.loads(body)  # type: ignore[no-any-return]


def ask(sock: socket.socket, body: bytes) -> dict[str, Any] | None:
    sock.sendall(frame(body))
    return recv_envelope(sock)


def assert_add_works(sock: socket.socket, call_id: int) -> None:
    assert ask(sock, request(call_id, "Add", {"a": call_id, "b": 1})) == {
        "id": call_id,
        "result": call_id + 1,
    }


def assert_protocol_error(reply: dict[str, Any] | None, call_id: int | None, fragment: str) -> None:
    assert reply is not None, "connection closed instead of an error reply"
    assert reply["id"] == call_id
    assert reply["error"]["code"] == PROTOCOL_ERROR
    assert fragment in reply["error"]["message"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def server_path(sock_dir: str, backend: str) -> Iterator[str]:
    """The test server, running in a thread on *backend* (for raw, blocking peers)."""
    with serving_in_thread(make_server(max_frame_size=1024), sock_path(sock_dir), backend) as path:
        yield path


# -- 1. the socket file --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_socket_file_is_private_by_default(anyio_backend: str, sock_dir: str) -> None:
    path = sock_path(sock_dir)
    previous = os.umask(0)  # even with a permissive umask, never world-connectable
    try:
        async with serving(make_server(), path):
            assert stat.S_ISSOCK(os.stat(path).st_mode)
            assert mode_of(path) == 0o600
            assert await add_via_new_client(path) == 5
    finally:
        os.umask(previous)
    assert not os.path.exists(path), "removed when the server is cancelled"


def other_gid() -> int:
    """A gid the socket can be given that is not our primary one, if we may."""
    if os.getuid() == 0:
        return next(g.gr_gid for g in grp.getgrall() if g.gr_gid != os.getgid())
    others = [g for g in os.getgroups() if g != os.getgid()]
    return others[0] if others else os.getgid()


@pytest.mark.anyio
@pytest.mark.parametrize("group_kind", ["own-gid", "other-gid", "group-name"])
async def test_socket_mode_and_group_are_honoured(anyio_backend: str, sock_dir: str, group_kind: str) -> None:
    gid = os.getgid() if group_kind == "own-gid" else other_gid()
    group: int | str = grp.getgrgid(gid).gr_name if group_kind == "group-name" else gid
    path = sock_path(sock_dir)
    async with serving(make_server(socket_mode=0o660, socket_group=group), path):
        st = os.stat(path)
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_gid == gid
        assert await add_via_new_client(path) == 5


@pytest.mark.anyio
async def test_socket_file_removed_on_graceful_shutdown(anyio_backend: str, sock_dir: str) -> None:
    path = sock_path(sock_dir)
    server = make_server()
    with anyio.fail_after(5):
        async with running(server, path) as (stopped, _):
            assert os.path.exists(path)
            assert server.address is not None
            assert str(server.address) == path
            server.shutdown()
            await stopped.wait()
    assert not os.path.exists(path)
    assert server.address is None


@pytest.mark.anyio
async def test_a_stopped_server_can_serve_again(anyio_backend: str, sock_dir: str) -> None:
    path = sock_path(sock_dir)
    server = make_server()
    for _ in range(2):
        async with anyio.create_task_group() as tg:
            address = await tg.start(server.serve, path)
            assert str(address) == path
            assert not server.is_shutting_down()
            assert await add_via_new_client(path) == 5
            server.shutdown()
        assert not os.path.exists(path)


@pytest.mark.anyio
async def test_unknown_group_leaves_no_socket_file(anyio_backend: str, sock_dir: str) -> None:
    path = sock_path(sock_dir)
    server = make_server(socket_group="no-such-group-for-unixrpc-tests")
    with pytest.raises(KeyError, match="no-such-group-for-unixrpc-tests"), anyio.fail_after(5):
        await server.serve(path)
    assert server.address is None
    assert not os.path.exists(path), "the half-made socket file is left behind"


@pytest.mark.anyio
async def test_cancelling_serve_cancels_calls_and_removes_the_socket_file(
    anyio_backend: str, sock_dir: str
) -> None:
    path = sock_path(sock_dir)
    events = Events()
    with anyio.fail_after(5):
        async with running(make_server(events), path) as (stopped, serve_scope), AsyncClient(path) as client:

            async def stuck() -> None:
                # cancelled serve() closes at once; the threads engine (no cancel scope) is told
                # shutdown(grace=0), and then says why
                expected = ConnectionBrokenError if rpc_support.ENGINE == "anyio" else ServerShuttingDownError
                with pytest.raises(expected):
                    await client.call(Sleep(seconds=30, tag="stuck"))

            async with anyio.create_task_group() as tg:
                tg.start_soon(stuck)
                await wait_until(lambda: events.started == ["stuck"])
                assert os.path.exists(path)
                serve_scope.cancel()
                await stopped.wait()
    assert events.cancelled == ["stuck"]
    assert not os.path.exists(path)


@pytest.mark.anyio
async def test_socket_file_replaced_behind_our_back_is_left_alone(anyio_backend: str, sock_dir: str) -> None:
    path = sock_path(sock_dir)
    async with serving(make_server(), path):
        os.unlink(path)
        with open(path, "w") as file:
            file.write("someone else's")
    with open(path) as file:
        assert file.read() == "someone else's", "only the server's own socket file is removed"


@pytest.mark.anyio
async def test_stale_socket_file_is_replaced(anyio_backend: str, sock_dir: str) -> None:
    path = sock_path(sock_dir)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(path)  # bound, never listening: connecting to it is refused
        async with serving(make_server(), path):
            assert mode_of(path) == 0o600
            assert await add_via_new_client(path) == 5
    assert not os.path.exists(path)


@pytest.mark.anyio
async def test_live_server_is_not_displaced(anyio_backend: str, sock_dir: str) -> None:
    path = sock_path(sock_dir)
    async with serving(make_server(), path):
        identity = os.stat(path).st_ino
        with pytest.raises(OSError, match="already listening") as info, anyio.fail_after(5):
            await make_server().serve(path)
        assert info.value.errno == errno.EADDRINUSE
        assert os.stat(path).st_ino == identity
        assert await add_via_new_client(path) == 5, "the live server keeps working"


@pytest.mark.anyio
async def test_regular_file_is_not_replaced(anyio_backend: str, sock_dir: str) -> None:
    path = sock_path(sock_dir)
    with open(path, "w") as file:
        file.write("precious")
    server = make_server()
    with pytest.raises(FileExistsError, match="is not a socket"), anyio.fail_after(5):
        await server.serve(path)
    with open(path) as file:
        assert file.read() == "precious"
    assert server.address is None


@pytest.mark.anyio
async def test_abstract_address(anyio_backend: str, sock_dir: str) -> None:
    name = b"\0unixrpc-test-" + f"{os.getpid()}-{time.monotonic_ns()}".encode()
    server = make_server()
    async with serving(server, name):  # type: ignore[arg-type]
        assert server.address is not None
        assert server.address.as_raw() == name
        assert server.address.as_pathname() is None
        assert await add_via_new_client(name) == 5
    assert server.address is None
    with pytest.raises(ConnectionRefusedError):
        raw_connect(name)


async def fail_to_connect(path: str) -> None:
    try:
        async with AsyncClient(path):
            raise AssertionError("connected to nothing")
    except FileNotFoundError:
        pass


@pytest.mark.anyio
async def test_async_client_failing_to_connect_leaves_nothing_open(anyio_backend: str, sock_dir: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await fail_to_connect(sock_path(sock_dir, "nobody-listens.sock"))
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


@pytest.mark.anyio
async def test_serving_twice_is_refused(anyio_backend: str, sock_dir: str) -> None:
    server = make_server()
    async with serving(server, sock_path(sock_dir)):
        with pytest.raises(RuntimeError, match="already serving"), anyio.fail_after(5):
            await server.serve(sock_path(sock_dir, "other.sock"))
    assert not os.path.exists(sock_path(sock_dir, "other.sock"))


# -- 2./3. limits --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_max_connections(anyio_backend: str, sock_dir: str) -> None:
    path = sock_path(sock_dir)
    with anyio.fail_after(10):
        async with serving(make_server(max_connections=1), path):
            async with AsyncClient(path) as first:
                assert await first.call(Add(a=1, b=1)) == 2  # the first connection is being served
                async with AsyncClient(path) as second:
                    with pytest.raises(ServerBusyError, match=r"too many connections \(limit 1\)"):
                        await second.call(Add(a=1, b=2))
                assert await first.call(Add(a=2, b=2)) == 4, "the first client is unaffected"
            # the server notices the first client left, then has room again
            while True:
                try:
                    assert await add_via_new_client(path) == 5
                    break
                except ServerBusyError:
                    await anyio.sleep(0.01)


def wait_for_hang_up(sock: Any) -> None:
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLHUP)
    wait_until_sync(lambda: bool(poller.poll(10)))


def test_sync_client_refused_for_too_many_connections_sees_busy(sock_dir: str) -> None:
    with (
        serving_in_thread(make_server(max_connections=1), sock_path(sock_dir)) as path,
        Client(path) as first,
    ):
        assert first.call(Add(a=1, b=1)) == 2
        with Client(path, timeout=5) as second:
            wait_for_hang_up(second.raw.socket)  # the server has told it "busy" and closed it
            with pytest.raises(ServerBusyError, match="too many connections"):
                second.call(Add(a=1, b=2))


@pytest.mark.anyio
async def test_max_calls_per_connection(anyio_backend: str, sock_dir: str) -> None:
    path = sock_path(sock_dir)
    events = Events()
    results: dict[str, str] = {}
    with anyio.fail_after(10):
        async with (
            serving(make_server(events, max_calls_per_connection=2), path),
            AsyncClient(path) as client,
        ):

            async def slow(tag: str) -> None:
                results[tag] = await client.call(Sleep(seconds=0.5, tag=tag))

            async with anyio.create_task_group() as tg:
                tg.start_soon(slow, "one")
                tg.start_soon(slow, "two")
                await wait_until(lambda: sorted(events.started) == ["one", "two"])
                with pytest.raises(ServerBusyError, match=r"too many calls in flight .*\(limit 2\)"):
                    await client.call(Add(a=1, b=2))
            assert results == {"one": "one", "two": "two"}
            assert events.cancelled == []
            assert await client.call(Add(a=1, b=2)) == 3, "room again once the slow calls are done"


def test_invalid_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="max_connections must be at least 1, got 0"):
        Server(max_connections=0)
    with pytest.raises(ValueError, match="max_calls_per_connection must be at least 1, got -1"):
        Server(max_calls_per_connection=-1)


# -- 4. the authorization hook -------------------------------------------------------------------


def deny_sleep_hook(seen: list[tuple[CallContext, Any]], kind: str) -> Callable[..., Any]:
    def decide(context: CallContext, request: Any) -> bool:
        seen.append((context, request))
        return not isinstance(request, Sleep)

    if kind == "sync":
        return decide

    async def decide_async(context: CallContext, request: Any) -> bool:
        await anyio.sleep(0)
        return decide(context, request)

    return decide_async


@pytest.mark.anyio
@pytest.mark.parametrize("hook_kind", ["sync", "async"])
async def test_authorize_hook(anyio_backend: str, sock_dir: str, hook_kind: str) -> None:
    path = sock_path(sock_dir)
    events = Events()
    seen: list[tuple[CallContext, Any]] = []
    server = make_server(events, authorize=deny_sleep_hook(seen, hook_kind))
    async with serving(server, path), AsyncClient(path) as client:
        assert await client.call(Add(a=1, b=2)) == 3
        with pytest.raises(PermissionDeniedError) as info:
            await client.call(Sleep(seconds=0, tag="denied"))
        assert await client.call(Add(a=3, b=4)) == 7
    assert "Sleep is not allowed" in info.value.message
    assert f"uid {os.getuid()}" in info.value.message
    assert info.value.code == "unixrpc.PermissionDenied"
    assert events.started == [], "the handler of a refused call never runs"
    me = UnixCredentials(os.getpid(), os.getuid(), os.getgid())
    assert [context.peer for context, _ in seen] == [me, me, me]
    assert [context.method for context, _ in seen] == ["Add", "Sleep", "Add"]
    assert [request for _, request in seen] == [Add(a=1, b=2), Sleep(seconds=0, tag="denied"), Add(a=3, b=4)]
    assert all(type(context.call_id) is int for context, _ in seen)
    assert len({context.call_id for context, _ in seen}) == 3
    assert len({context.connection_id for context, _ in seen}) == 1


# -- 5. graceful shutdown ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_graceful_shutdown_lets_calls_in_flight_finish(anyio_backend: str, sock_dir: str) -> None:
    path = sock_path(sock_dir)
    events = Events()
    server = make_server(events)
    results: dict[str, str] = {}
    with anyio.fail_after(10):
        async with running(server, path) as (stopped, _):
            async with AsyncClient(path) as client:

                async def slow() -> None:
                    results["slow"] = await client.call(Sleep(seconds=0.3, tag="slow"))

                async with anyio.create_task_group() as tg:
                    tg.start_soon(slow)
                    await wait_until(lambda: events.started == ["slow"])
                    server.shutdown()
                    assert server.is_shutting_down()
                    await wait_until(lambda: not os.path.exists(path))
                    with pytest.raises(FileNotFoundError):
                        raw_connect(path)
                    with pytest.raises(ServerBusyError, match="shutting down"):
                        await client.call(Add(a=1, b=2))
                assert results == {"slow": "slow"}
            await stopped.wait()
    assert events.cancelled == []


@pytest.mark.anyio
async def test_shutdown_grace_elapsed_cancels_calls(anyio_backend: str, sock_dir: str) -> None:
    path = sock_path(sock_dir)
    events = Events()
    server = make_server(events, shutdown_grace=0.1)
    with anyio.fail_after(10):
        async with running(server, path) as (stopped, _), AsyncClient(path) as client:

            async def stuck() -> None:
                # told why, not a bare close like a crash
                with pytest.raises(ServerShuttingDownError, match="did not finish within the grace period"):
                    await client.call(Sleep(seconds=30, tag="stuck"))

            async with anyio.create_task_group() as tg:
                tg.start_soon(stuck)
                await wait_until(lambda: events.started == ["stuck"])
                server.shutdown()
                await stopped.wait()
    assert events.cancelled == ["stuck"]
    assert not os.path.exists(path)


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def test_shutdown_lets_a_reply_being_sent_finish(sock_dir: str, backend: str) -> None:
    server = make_server()  # shutdown_grace 10 s
    payload = {"blob": "x" * 2_000_000}  # far more than a socket buffer holds
    with start_blocking_portal(backend) as portal:
        future, _ = portal.start_task(server.serve, sock_path(sock_dir))
        try:
            with raw_connect(sock_path(sock_dir)) as sock:
                sock.sendall(frame(request(1, "Echo", {"payload": payload})))
                select.select([sock], [], [], 5)  # the reply has started: its sender waits for us to read
                portal.call(server.shutdown)
                # the listener is closed right before the calls in flight are drained
                wait_until_sync(lambda: not os.path.exists(sock_path(sock_dir)))
                data = recv_all(sock)
        finally:
            portal.call(server.shutdown)
            future.result(timeout=30)
    assert len(data) >= 6
    size, _ = struct.unpack(">IH", data[:6])
    assert len(data) >= 6 + size, f"reply cut after {len(data)} of {6 + size} bytes"
    assert json.loads(data[6 : 6 + size]) == {"id": 1, "result": payload}
    # then the peer is told why the connection ends (not a bare close, as after a crash)
    rest = data[6 + size :]
    notice_size, _ = struct.unpack(">IH", rest[:6])
    assert len(rest) == 6 + notice_size
    assert json.loads(rest[6:])["error"]["code"] == "unixrpc.ShuttingDown"


# -- 6. serve_forever and signals ----------------------------------------------------------------

DAEMON = """
import sys

from unixrpc import Method, Server


class Add(Method[int]):
    a: int
    b: int


server = Server()


@server.method(Add)
async def add(request: Add) -> int:
    return request.a + request.b


server.serve_forever(sys.argv[1], backend=sys.argv[2])
print("serve_forever returned", flush=True)
"""


def connect_to_daemon(path: str, proc: subprocess.Popen[bytes]) -> Client:
    """A client of the daemon once it listens (its socket file appears at bind(), just before listen())."""
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, proc.communicate()
        try:
            return Client(path, timeout=10)
        except (FileNotFoundError, ConnectionRefusedError):
            assert time.monotonic() < deadline, "the daemon never listened"
            time.sleep(0.01)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_forever_stops_on_signal(
    sock_dir: str, tmp_path: Any, backend: str, signum: signal.Signals
) -> None:
    script = tmp_path / "daemon.py"
    script.write_text(textwrap.dedent(DAEMON))
    path = sock_path(sock_dir)
    with subprocess.Popen(
        [sys.executable, str(script), path, backend], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        try:
            with connect_to_daemon(path, proc) as client:
                assert client.call(Add(a=20, b=22)) == 42
                assert client.get_peer_credentials().pid == proc.pid
            proc.send_signal(signum)
            out, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert out == b"serve_forever returned\n"
    assert not os.path.exists(path)


# -- 7. robustness against peers that break the wire format -------------------------------------


def test_body_that_is_not_json(server_path: str) -> None:
    with raw_connect(server_path) as sock:
        reply = ask(sock, b"{this is not json")
        assert_protocol_error(reply, None, "invalid envelope")
        assert_add_works(sock, 1)
        assert_protocol_error(ask(sock, b"\xff\xfe"), None, "invalid envelope")
        assert_add_works(sock, 2)
    assert add_sync(server_path) == 5


def add_sync(path: str) -> int:
    with Client(path, timeout=5) as client:
        return client.call(Add(a=2, b=3))


@pytest.mark.parametrize(
    ("body", "call_id", "fragment"),
    [
        (b"[1, 2]", None, "envelope must be a JSON object, got list"),
        (b'{"foo": 1}', None, "envelope has none of method, id, cancel, credit"),
        (b"42", None, "envelope must be a JSON object, got int"),
        (b'{"id": 5, "foo": 1}', 5, "envelope with an id has none of result, item, error"),
        (b'{"id": 6, "method": 7, "params": {}}', 6, '"method" must be a string'),
        (b'{"id": -1, "method": "Add", "params": {}}', None, '"id" must be an integer'),
        (b'{"id": 8, "result": 1}', None, "a client may not send result messages"),
    ],
    ids=["list", "unknown-members", "number", "id-only", "method-not-a-string", "negative-id", "result"],
)
def test_json_that_is_not_an_envelope(
    server_path: str, body: bytes, call_id: int | None, fragment: str
) -> None:
    with raw_connect(server_path) as sock:
        assert_protocol_error(ask(sock, body), call_id, fragment)
        assert_add_works(sock, 1)
    assert add_sync(server_path) == 5


def test_invalid_params(server_path: str) -> None:
    with raw_connect(server_path) as sock:
        reply = ask(sock, request(7, "Add", {"a": "seven", "b": 2}))
        assert reply is not None
        assert reply["id"] == 7
        error = reply["error"]
        assert error["code"] == "unixrpc.InvalidParams"
        assert error["message"] == (
            "invalid params for Add: a: input should be a valid integer, "
            "unable to parse string as an integer (got 'seven')"
        )
        assert isinstance(error["data"], list)
        assert [item["loc"] for item in error["data"]] == [["a"]]
        assert "integer" in error["data"][0]["msg"]
        reply = ask(sock, request(8, "Add", [1, 2]))
        assert reply is not None
        assert reply["id"] == 8
        assert reply["error"]["code"] == "unixrpc.InvalidParams"
        assert_add_works(sock, 9)
    assert add_sync(server_path) == 5


def test_unknown_method(server_path: str) -> None:
    with raw_connect(server_path) as sock:
        reply = ask(sock, request(3, "NoSuchMethod", {}))
        assert reply is not None
        assert reply["id"] == 3
        assert reply["error"]["code"] == "unixrpc.MethodNotFound"
        message = reply["error"]["message"]
        assert message.startswith("no method named 'NoSuchMethod'")
        assert "`unixrpc describe SOCKET` lists the" in message
        reply = ask(sock, request(4, "add", {}))
        assert reply is not None
        assert reply["error"]["message"].startswith("no method named 'add'; did you mean 'Add'?")
        assert_add_works(sock, 5)
    assert add_sync(server_path) == 5


def test_oversized_frame_closes_only_that_connection(server_path: str) -> None:
    with raw_connect(server_path) as bystander, raw_connect(server_path) as sock:
        assert_add_works(bystander, 1)
        sock.sendall(struct.pack(">IH", 2000, 0))  # the server's max_frame_size is 1024
        assert_protocol_error(
            recv_envelope(sock), None, "frame of 2000 bytes is over the limit of 1024 bytes"
        )
        assert recv_envelope(sock) is None, "the server closes the connection"
        assert_add_works(bystander, 2)
    assert add_sync(server_path) == 5


def test_descriptors_that_never_came_close_the_connection(server_path: str) -> None:
    with raw_connect(server_path) as sock:
        sock.sendall(frame(request(1, "Add", {"a": 1, "b": 1}), nfds=2))
        assert_protocol_error(
            recv_envelope(sock), None, "frame declares 2 file descriptors but only 0 arrived"
        )
        assert recv_envelope(sock) is None
    assert add_sync(server_path) == 5


# -- 8. handler exceptions -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_handler_exception_is_hidden_and_logged(
    anyio_backend: str, sock_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = sock_path(sock_dir)
    caplog.set_level(logging.ERROR, logger="unixrpc.server")
    async with serving(make_server(), path), AsyncClient(path) as client:
        with pytest.raises(InternalError) as info:
            await client.call(Fail(kind="value"))
        assert await client.call(Add(a=1, b=1)) == 2
    assert info.value.message == "handler of Fail raised ValueError"
    assert "secret" not in info.value.message
    assert info.value.data is None
    records = [r for r in caplog.records if r.name == "unixrpc.server" and r.levelno == logging.ERROR]
    assert len(records) == 1
    assert "handler of Fail raised" in records[0].getMessage()
    assert records[0].exc_info is not None
    assert records[0].exc_info[0] is ValueError
    assert "secret internal detail" in caplog.text


@pytest.mark.anyio
async def test_handler_traceback_exposed_on_request(anyio_backend: str, sock_dir: str) -> None:
    path = sock_path(sock_dir)
    async with serving(make_server(expose_tracebacks=True), path), AsyncClient(path) as client:
        with pytest.raises(InternalError) as info:
            await client.call(Fail(kind="value"))
    assert info.value.message == "handler of Fail raised ValueError"
    assert isinstance(info.value.data, dict)
    trace = info.value.data["traceback"]
    assert isinstance(trace, str)
    assert trace.startswith("Traceback (most recent call last)")
    assert "ValueError: secret internal detail" in trace


@pytest.mark.anyio
async def test_handler_result_of_the_wrong_type(anyio_backend: str, sock_dir: str) -> None:
    path = sock_path(sock_dir)
    async with serving(make_server(), path), AsyncClient(path) as client:
        with pytest.raises(InternalError, match="handler of Fail returned an invalid result"):
            await client.call(Fail(kind="bad-result"))
        assert await client.call(Add(a=1, b=1)) == 2


# -- 9. descriptor hygiene -----------------------------------------------------------------------


BAD_FRAMES_WITH_FDS = {
    "not-json": b"{not json",
    "not-an-envelope": b"[1, 2]",
    "unknown-method": request(1, "NoSuchMethod", {}),
    "invalid-params": request(2, "Add", {"a": "x", "b": 1}),
    "cancel": envelope(cancel=99),
    "unused-by-method": request(3, "Add", {"a": 1, "b": 2}),
}


@pytest.mark.parametrize("case", list(BAD_FRAMES_WITH_FDS))
def test_descriptors_of_dropped_frames_are_closed_at_once(
    no_fd_leak: None, server_path: str, case: str
) -> None:
    with raw_connect(server_path) as sock:
        assert_add_works(sock, 10)
        baseline = open_fds()  # the server, its loop and this connection, settled
        send_with_fds(sock, frame(BAD_FRAMES_WITH_FDS[case], nfds=3), 3)
        if case != "cancel":  # everything else is answered
            assert recv_envelope(sock) is not None
        assert_add_works(sock, 11)  # so the frame before it was handled
        assert open_fds() == baseline
    assert add_sync(server_path) == 5


FATAL_FRAMES_WITH_FDS = {  # (what is sent with 2 descriptors, what the server says before closing)
    "oversized": (struct.pack(">IH", 5000, 2), "frame of 5000 bytes is over the limit of 1024 bytes"),
    "never-came": (
        frame(request(1, "Add", {"a": 1, "b": 1}), nfds=4),
        "frame declares 4 file descriptors but only 2 arrived",
    ),
}


@pytest.mark.parametrize("case", [*FATAL_FRAMES_WITH_FDS, "undeclared"])
def test_descriptors_are_closed_when_a_connection_ends(
    no_fd_leak: None, sock_dir: str, backend: str, case: str
) -> None:
    with serving_in_thread(make_server(max_frame_size=1024), sock_path(sock_dir), backend) as path:
        baseline = open_fds()  # before any connection
        with raw_connect(path) as sock:
            if case == "undeclared":  # the frame declares none: fds that belong to no frame are fatal
                send_with_fds(sock, frame(request(1, "Add", {"a": 1, "b": 1})), 2)
                received = []
                while (envelope := recv_envelope(sock)) is not None:
                    received.append(envelope)
                errors = [e for e in received if "error" in e]
                assert len(errors) == 1
                assert_protocol_error(errors[0], None, "2 file descriptors came with no frame")
                assert [e for e in received if "result" in e] in ([], [{"id": 1, "result": 2}])
            else:
                data, message = FATAL_FRAMES_WITH_FDS[case]
                send_with_fds(sock, data, 2)
                assert_protocol_error(recv_envelope(sock), None, message)
                assert recv_envelope(sock) is None
        wait_until_sync(lambda: open_fds() == baseline)
        assert add_sync(path) == 5


class Greet(Method[str]):
    name: str

    @field_validator("name", mode="before")
    @classmethod
    def tidy(cls, value: Any) -> Any:
        return value.strip()  # AttributeError on anything but a str


class GreetLoose(Method[str], name="Greet"):
    name: int


@pytest.mark.anyio
async def test_a_validator_that_raises_fails_the_call_not_the_server(
    anyio_backend: str, sock_dir: str
) -> None:
    server = make_server()

    @server.method(Greet)
    async def greet(req: Greet) -> str:
        return f"hello {req.name}"

    path = sock_path(sock_dir)
    async with serving(server, path), AsyncClient(path) as client:
        with pytest.raises(InternalError, match="validating the params of Greet raised AttributeError"):
            await client.call(GreetLoose(name=5))
        assert await client.call(Greet(name=" you ")) == "hello you"
        assert await add_via_new_client(path) == 5


class Blocked(Method[str]):
    """A plain-def handler that blocks until the test releases it (or its call is cancelled)."""

    fd: FD | None = None


def blocked_server(
    release: threading.Event, started: threading.Event, saw: list[str] | None = None
) -> Server:
    server = Server()

    @server.method(Blocked)
    def blocked(req: Blocked, ctx: CallContext) -> str:
        started.set()
        release.wait(10)
        if saw is not None:
            saw.append("cancelled" if ctx.cancelled else "not cancelled")
        if req.fd is not None:
            os.fstat(req.fd.fileno())  # still open: the server keeps it while we run
            if saw is not None:
                saw.append("fd open")
        return "done"

    return server


def _fd_targets() -> list[str]:
    targets = []
    for fd in open_fds():
        with suppress(OSError):
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
    return targets


@pytest.mark.parametrize("with_fd", [False, True])
def test_cancelled_thread_handler_is_answered_at_once_and_its_fds_kept_until_it_returns(
    sock_dir: str, with_fd: bool
) -> None:
    release, started, saw = threading.Event(), threading.Event(), []
    marker = os.path.join(sock_dir, "marker")
    try:
        with (
            serving_in_thread(blocked_server(release, started, saw), sock_path(sock_dir)) as path,
            raw_connect(path) as sock,
        ):
            if with_fd:
                with open(marker, "w") as f:
                    rights = array.array("i", [f.fileno()]).tobytes()
                    data = frame(request(1, "Blocked", {"fd": 0}), nfds=1)
                    assert sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)]) == len(data)
            else:
                sock.sendall(frame(request(1, "Blocked", {})))
            assert started.wait(10)
            sock.sendall(frame(b'{"cancel":1}'))
            reply = recv_envelope(sock)  # at once: the handler still runs
            assert reply is not None
            assert reply["error"]["code"] == "unixrpc.Cancelled"
            assert not release.is_set()
            # the handler may still use the request's descriptor: the server keeps it open
            assert (marker in _fd_targets()) == with_fd
            release.set()
            wait_until_sync(lambda: len(saw) == (2 if with_fd else 1))
            assert saw[0] == "cancelled"  # the handler could see it through its context
            if with_fd:
                assert saw[1] == "fd open"
            wait_until_sync(lambda: marker not in _fd_targets())  # released once it returned
            sock.sendall(frame(request(2, "Blocked", {})))
            assert recv_envelope(sock) == {"id": 2, "result": "done"}
    finally:
        release.set()


# -- how calls run: in place in the reading task, handed over when they wait --


class TaskProbe(Method[list[bool]]):
    """Answers whether the handler kept its task (and its cancel scope) across waits."""

    waits: int


class Spin(Method[int]):
    """Yields to the loop *n* times without sleeping (each a suspension)."""

    n: int


def probe_server() -> Server:
    server = Server()

    @server.method(TaskProbe)
    async def task_probe(req: TaskProbe) -> list[bool]:
        task = anyio.get_current_task()
        same = []
        with anyio.move_on_after(30) as scope:  # entered before the first wait
            for _ in range(req.waits):
                await anyio.sleep(0.001)
                same.append(anyio.get_current_task().id == task.id)
        same.append(not scope.cancelled_caught)
        return same

    @server.method(Spin)
    async def spin(req: Spin) -> int:
        for _ in range(req.n):
            await anyio.lowlevel.checkpoint()
        return req.n

    @server.method(Add)
    async def add(req: Add) -> int:
        return req.a + req.b

    return server


async def test_a_call_that_waits_keeps_its_task_and_scopes(anyio_backend: str, sock_dir: str) -> None:
    # the first step runs in the reading task; after it waits, the same task
    # finishes it (so a cancel scope entered before the wait still works)
    path = sock_path(sock_dir)
    with anyio.fail_after(10):
        async with serving(probe_server(), path), AsyncClient(path) as client:
            assert await client.call(TaskProbe(waits=0)) == [True]
            assert await client.call(TaskProbe(waits=3)) == [True, True, True, True]
            results: list[list[bool]] = []

            async def probe() -> None:
                results.append(await client.call(TaskProbe(waits=5)))

            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(probe)
            assert results == [[True] * 6] * 20


async def test_waiting_calls_hand_the_reading_on(anyio_backend: str, sock_dir: str) -> None:
    # 50 calls that each yield many times, interleaved with calls that answer
    # at once, on one connection: every one is answered, and the pool of
    # tasks that took turns reading ends with the connection
    path = sock_path(sock_dir)
    fds_before = open_fds()
    with anyio.fail_after(20):
        async with serving(probe_server(), path):
            async with AsyncClient(path) as client:
                spun: list[int] = []
                added: list[int] = []

                async def spin(n: int) -> None:
                    spun.append(await client.call(Spin(n=n)))

                async def add(i: int) -> None:
                    added.append(await client.call(Add(a=i, b=1)))

                async with anyio.create_task_group() as tg:
                    for i in range(50):
                        tg.start_soon(spin, 1 + i % 7)
                        tg.start_soon(add, i)
                assert sorted(spun) == sorted(1 + i % 7 for i in range(50))
                assert sorted(added) == [i + 1 for i in range(50)]
            for _ in range(100):  # the server notices the hang-up and its tasks end
                if open_fds() == fds_before:
                    break
                await anyio.sleep(0.02)
    assert open_fds() == fds_before


def test_a_flood_of_instant_calls_does_not_starve_another_connection(sock_dir: str) -> None:
    # one client pipelines thousands of calls that answer at once; the reader
    # runs them in place but yields now and then, so another connection's
    # call is answered while the flood goes on
    path = sock_path(sock_dir)
    with serving_in_thread(probe_server(), path):
        flood = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        flood.connect(path)
        try:
            body = b'{"id":1,"method":"Add","params":{"a":1,"b":2}}'
            frame = struct.pack(">IH", len(body), 0) + body
            stop = threading.Event()
            answered = threading.Event()

            def pump() -> None:
                # send floods and drain replies so the server never blocks on us
                flood.setblocking(False)
                while not stop.is_set():
                    with suppress(BlockingIOError):
                        flood.send(frame * 200)
                    with suppress(BlockingIOError):
                        while flood.recv(1 << 16):
                            pass

            thread = threading.Thread(target=pump)
            thread.start()
            try:
                with Client(path, timeout=10) as other:
                    for i in range(20):
                        assert other.call(Add(a=i, b=1)) == i + 1
                    answered.set()
            finally:
                stop.set()
                thread.join(timeout=10)
            assert answered.is_set()
        finally:
            flood.close()


# -- regressions found in review of the in-place execution and reply corking --


def _frame(envelope: dict[str, Any]) -> bytes:
    body = json.dumps(envelope).encode()
    return struct.pack(">IH", len(body), 0) + body


def _read_frames(sock: socket.socket, count: int, timeout: float) -> list[dict[str, Any]]:
    sock.settimeout(timeout)
    buf = bytearray()
    out: list[dict[str, Any]] = []
    while len(out) < count:
        try:
            chunk = sock.recv(1 << 16)
        except TimeoutError:
            break
        if not chunk:
            break
        buf += chunk
        while len(buf) >= 6 and len(buf) >= 6 + struct.unpack_from(">I", buf)[0]:
            size = struct.unpack_from(">I", buf)[0]
            out.append(json.loads(bytes(buf[6 : 6 + size])))
            del buf[: 6 + size]
    return out


async def test_a_client_may_pipeline_everything_before_reading(anyio_backend: str, sock_dir: str) -> None:
    # more requests than the socket buffers hold, all sent before reading a
    # reply: the server keeps reading while its replies wait for room, up to
    # max_unsent (1 MiB, each queued reply counted with its 64 bytes of
    # overhead: about 11,000 small ones). 8,000 (440 KB of requests, 260 KB of
    # replies: twice a 208 KiB buffer, or more)
    path = sock_path(sock_dir)
    count = 8000
    data = b"".join(
        _frame({"id": i, "method": "Add", "params": {"a": i, "b": 1}}) for i in range(1, count + 1)
    )

    # (the timeouts only catch a server that stopped: the threads engine needs some 5 s of
    # CPU for 20,000 calls, and under pytest -n on a loaded machine gets a share of it)
    def client() -> tuple[str, int]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(path)
            sock.settimeout(45)  # for the whole sendall
            try:
                sock.sendall(data)
            except TimeoutError:
                return "the server stopped reading", 0
            replies = _read_frames(sock, count, timeout=20)
            ok = all(reply == {"id": reply["id"], "result": reply["id"] + 1} for reply in replies)
            return ("ok" if ok else "wrong reply"), len({reply["id"] for reply in replies})

    with anyio.fail_after(100):
        async with serving(make_server(), path):
            assert await anyio.to_thread.run_sync(client) == ("ok", count)


class Big(Method[str]):
    size: int


async def test_graceful_shutdown_waits_for_replies_not_yet_written(anyio_backend: str, sock_dir: str) -> None:
    # a big reply corked behind a notification, to a peer slow to read: the
    # call is over, but shutdown waits for its reply to be written
    path = sock_path(sock_dir)
    server = Server(shutdown_grace=5)

    @server.method(Big)
    async def big(req: Big) -> str:
        return "x" * req.size

    @server.method(Log)
    async def log(req: Log) -> None:
        pass

    with anyio.fail_after(20):
        async with running(server, path) as (stopped, _):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(path)
                sock.sendall(
                    _frame({"id": 1, "method": "Big", "params": {"size": 2_000_000}})
                    + _frame({"method": "Log", "params": {"line": "then"}})
                )
                await anyio.sleep(0.3)  # the reply fills the socket buffers and waits
                server.shutdown()
                replies = await anyio.to_thread.run_sync(_read_frames, sock, 1, 5.0)
            await stopped.wait()
    assert replies[0]["id"] == 1
    assert len(replies[0]["result"]) == 2_000_000
    # (read together with it, sometimes: the notice that the connection ends, and nothing else)
    assert [(reply["id"], reply["error"]["code"]) for reply in replies[1:]] in (
        [],
        [(None, "unixrpc.ShuttingDown")],
    )


async def test_a_peer_that_resets_the_connection_does_not_stop_the_server(
    anyio_backend: str, sock_dir: str
) -> None:
    # closing with a reply unread makes the server's next read fail with
    # ECONNRESET: that ends this connection like EOF, and nothing else
    path = sock_path(sock_dir)
    fds_before = open_fds()
    with anyio.fail_after(10):
        async with serving(make_server(), path):

            def reset_peer() -> None:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.connect(path)
                    sock.sendall(_frame({"id": 1, "method": "Add", "params": {"a": 1, "b": 2}}))
                    time.sleep(0.2)  # the reply is now unread in our buffer

            for _ in range(3):
                await anyio.to_thread.run_sync(reset_peer)
            await anyio.sleep(0.2)
            async with AsyncClient(path, timeout=5) as client:
                assert await client.call(Add(a=2, b=3)) == 5
        await wait_until(lambda: open_fds() == fds_before)
    assert open_fds() == fds_before


@pytest.mark.parametrize("seed", range(4))
async def test_random_pipelined_traffic_gets_exactly_one_final_reply(
    anyio_backend: str, sock_dir: str, seed: int
) -> None:
    # a seeded mix of instant calls, calls that wait, streams with small
    # windows, threaded handlers, cancels and credits, sent in random
    # batches: every call ends with exactly one final reply, correct when it
    # is a result, and no stream item comes out of order or after the end
    path = sock_path(sock_dir)

    def traffic() -> tuple[list[str], dict[int, str], dict[int, dict[str, Any]]]:
        rnd = random.Random(seed)
        calls: dict[int, str] = {}
        batch: list[bytes] = []
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(path)
            next_id = 1
            for _ in range(300):
                roll = rnd.random()
                if roll < 0.3:
                    envelope: dict[str, Any] = {
                        "id": next_id,
                        "method": "Add",
                        "params": {"a": next_id, "b": 1},
                    }
                    calls[next_id] = "add"
                elif roll < 0.45:
                    params = {"seconds": rnd.choice([0, 0.001, 0.01]), "tag": str(next_id)}
                    envelope = {"id": next_id, "method": "Sleep", "params": params}
                    calls[next_id] = "sleep"
                elif roll < 0.6:
                    params = {"n": rnd.randint(0, 5), "delay": rnd.choice([0, 0.001])}
                    envelope = {
                        "id": next_id,
                        "method": "Count",
                        "params": params,
                        "stream": rnd.randint(1, 3),
                    }
                    calls[next_id] = "count"
                elif roll < 0.7:
                    envelope = {"id": next_id, "method": "Echo", "params": {"payload": {"n": next_id}}}
                    calls[next_id] = "echo"
                elif roll < 0.85 and next_id > 1:
                    envelope = {"cancel": rnd.randint(max(1, next_id - 5), next_id - 1)}
                elif next_id > 1:
                    envelope = {
                        "credit": rnd.randint(max(1, next_id - 5), next_id - 1),
                        "n": rnd.randint(0, 3),
                    }
                else:
                    continue
                if "id" in envelope:
                    next_id += 1
                batch.append(_frame(envelope))
                if rnd.random() < 0.3:
                    sock.sendall(b"".join(batch))
                    batch.clear()
            sock.sendall(b"".join(batch))
            # enough credit for every stream to finish
            sock.sendall(
                b"".join(_frame({"credit": i, "n": 100}) for i, kind in calls.items() if kind == "count")
            )
            problems: list[str] = []
            finals: dict[int, dict[str, Any]] = {}
            items: dict[int, list[int]] = {}
            received: list[dict[str, Any]] = []
            buf = bytearray()
            sock.settimeout(5)
            deadline = time.monotonic() + 20
            while len(finals) < len(calls) and time.monotonic() < deadline:
                while not received:
                    chunk = sock.recv(1 << 16)
                    if not chunk:
                        problems.append("the server closed the connection")
                        return problems, calls, finals
                    buf += chunk
                    while len(buf) >= 6 and len(buf) >= 6 + struct.unpack_from(">I", buf)[0]:
                        size = struct.unpack_from(">I", buf)[0]
                        received.append(json.loads(bytes(buf[6 : 6 + size])))
                        del buf[: 6 + size]
                message = received.pop(0)
                call_id = message["id"]
                if "item" in message:
                    if call_id in finals:
                        problems.append(f"item after the end of {call_id}")
                    if message["item"] != len(items.setdefault(call_id, [])):
                        problems.append(f"item {message['item']} of {call_id} out of order")
                    items[call_id].append(message["item"])
                elif call_id in finals:
                    problems.append(f"second final reply for {call_id}")
                else:
                    finals[call_id] = message
        return problems, calls, finals

    with anyio.fail_after(60):
        async with serving(make_server(), path):
            problems, calls, finals = await anyio.to_thread.run_sync(traffic)
    assert problems == []
    assert sorted(finals) == sorted(calls)
    for call_id, final in finals.items():
        if "result" not in final:
            assert final["error"]["code"] == "unixrpc.Cancelled", final
        elif calls[call_id] == "add":
            assert final["result"] == call_id + 1
        elif calls[call_id] == "echo":
            assert final["result"] == {"n": call_id}


class Gate(Method[str]):
    name: str


class Open(Method[bool]):
    name: str


async def test_calls_after_a_waiting_one_in_the_same_read_are_answered(
    anyio_backend: str, sock_dir: str
) -> None:
    # one write carries a call that waits and calls that answer at once: the
    # reader takes all of them in one read, runs the first until it waits,
    # and the next reader must answer the others from what was already read
    # (the frames after the waiting call are not lost with its task)
    path = sock_path(sock_dir)
    server = make_server()
    gates: dict[str, anyio.Event] = {}

    @server.method(Gate)
    async def gate(req: Gate) -> str:
        gates.setdefault(req.name, anyio.Event())
        await gates[req.name].wait()
        return req.name

    @server.method(Open)
    async def open_gate(req: Open) -> bool:
        gates.setdefault(req.name, anyio.Event()).set()
        return True

    def client() -> list[dict[str, Any]]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(path)
            first = [_frame({"id": 1, "method": "Gate", "params": {"name": "g"}})]
            first += [_frame({"id": i, "method": "Add", "params": {"a": i, "b": 1}}) for i in range(2, 6)]
            sock.sendall(b"".join(first))
            replies = _read_frames(sock, 4, timeout=5)  # answered while call 1 still waits
            sock.sendall(_frame({"id": 6, "method": "Open", "params": {"name": "g"}}))
            return replies + _read_frames(sock, 2, timeout=5)

    with anyio.fail_after(20):
        async with serving(server, path):
            replies = await anyio.to_thread.run_sync(client)
    # (in order on the anyio engine; the threads engine runs them on several threads)
    assert sorted(replies[:4], key=lambda r: r["id"]) == [{"id": i, "result": i + 1} for i in range(2, 6)]
    assert sorted(replies[4:], key=lambda r: r["id"]) == [{"id": 1, "result": "g"}, {"id": 6, "result": True}]
