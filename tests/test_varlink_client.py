"""The varlink client (``unixrpc.varlink.client``) against servers nobody
here wrote: python-varlink's ThreadingServer, asyncvarlink's server (fds
both ways) and systemd 252's ``systemd-userwork`` (io.systemd.UserDatabase,
typed with classes generated from its IDL). Real sockets; every async test
on asyncio and trio."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from unixrpc import FD, Method, RPCError, StreamMethod
from unixrpc.exceptions import ConnectionBrokenError, MethodNotFoundError
from unixrpc.varlink.client import AsyncVarlinkClient, VarlinkClient
from unixrpc.varlink.codegen import generate

varlink = pytest.importorskip("varlink", reason="python-varlink is not installed (pip install varlink)")
HERE = Path(__file__).resolve().parent / "varlink"
BIG = 4 * 1024 * 1024


# -- the typed methods --------------------------------------------------------------------

from pydantic import BaseModel  # noqa: E402


class Point(BaseModel):
    x: int
    y: int


class DivisionByZero(RPCError, code="org.example.peer.DivisionByZero"):
    dividend: int


class Add(Method[int], name="org.example.peer.Add"):
    a: int
    b: int


class Where(Method[Point], name="org.example.peer.Where"):
    name: str


class Count(StreamMethod[int], name="org.example.peer.Count"):
    n: int


class Echo(Method[Point], name="org.example.peer.Echo"):  # (data: string) as a model below
    data: str


class EchoReply(BaseModel):
    data: str


class EchoData(Method[EchoReply], name="org.example.peer.Echo"):
    data: str


class Big(Method[EchoReply], name="org.example.peer.Big"):
    size: int


class Remember(Method[None], name="org.example.peer.Remember"):
    note: str


class Recall(Method[list[str]], name="org.example.peer.Recall"):
    pass


class RecallReply(BaseModel):
    notes: list[str]


class RecallNotes(Method[RecallReply], name="org.example.peer.Recall"):
    pass


class Divide(Method[int], name="org.example.peer.Divide"):
    a: int
    b: int


class Nope(Method[int], name="org.example.peer.Nope"):
    pass


# -- python-varlink's ThreadingServer ---------------------------------------------------------


@pytest.fixture(scope="module")
def python_varlink_server() -> Iterator[str]:
    directory = Path(__import__("tempfile").mkdtemp(prefix="vl", dir="/tmp"))
    path = str(directory / "peer.sock")
    service = varlink.Service(vendor="test", product="peer", version="1", url="", interface_dir=str(HERE))
    notes: list[str] = []

    @service.interface("org.example.peer")
    class Peer:
        def Add(self, a: int, b: int) -> dict[str, Any]:
            return {"result": a + b}

        def Where(self, name: str) -> dict[str, Any]:
            return {"x": len(name), "y": 2}

        def Count(self, n: int, _more: bool = False) -> Iterator[dict[str, Any]]:
            for i in range(n):
                yield {"item": i, "_continues": i < n - 1}

        def Echo(self, data: str) -> dict[str, Any]:
            return {"data": data}

        def Big(self, size: int) -> dict[str, Any]:
            return {"data": "z" * size}

        def Remember(self, note: str) -> dict[str, Any]:
            notes.append(note)
            return {}

        def Recall(self) -> dict[str, Any]:
            return {"notes": list(notes)}

        def Divide(self, a: int, b: int) -> dict[str, Any]:
            if b == 0:
                raise varlink.VarlinkError(
                    {"error": "org.example.peer.DivisionByZero", "parameters": {"dividend": a}}
                )
            return {"result": a // b}

    class Handler(varlink.RequestHandler):
        service = None

    Handler.service = service

    class Server(varlink.ThreadingServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            if isinstance(sys.exc_info()[1], BrokenPipeError):
                return  # a test's client that left before its reply (its server prints it otherwise)
            super().handle_error(request, client_address)

    server = Server("unix:" + path, Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(directory, ignore_errors=True)


def test_sync_client_against_python_varlink(python_varlink_server: str) -> None:
    with VarlinkClient(python_varlink_server, timeout=30) as client:
        assert client.call(Add(a=1, b=2)) == 3
        assert client.call(Where(name="abc")) == Point(x=3, y=2)
        assert list(client.stream(Count(n=3))) == [0, 1, 2]
        with pytest.raises(DivisionByZero) as caught:
            client.call(Divide(a=7, b=0))
        assert caught.value.dividend == 7
        with pytest.raises(MethodNotFoundError, match="MethodNotFound"):
            client.call(Nope())
        client.notify(Remember(note="oneway"))
        assert "oneway" in client.call(RecallNotes()).notes
        reply = client.call_by_name("org.example.peer.Add", {"a": 2, "b": 2})
        assert reply is not None
        assert reply.parameters == {"result": 4}
        # pipelined: all sent before any reply is read, answered in order
        assert client.pipeline([Add(a=1, b=1), Where(name="xy"), Add(a=2, b=3)]) == [2, Point(x=2, y=2), 5]
        # a 4 MiB reply (python-varlink's server reads a call one byte at a time,
        # so the 4 MiB call goes to asyncvarlink's server below)
        assert len(client.call(Big(size=BIG)).data) == BIG


def test_sync_client_calls_from_threads_pipeline(python_varlink_server: str) -> None:
    results: dict[int, int] = {}
    with VarlinkClient(python_varlink_server, timeout=30) as client:

        def work(n: int) -> None:
            results[n] = client.call(Add(a=n, b=n))

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert results == {n: 2 * n for n in range(8)}


@pytest.mark.anyio
async def test_async_client_against_python_varlink(python_varlink_server: str) -> None:
    async with AsyncVarlinkClient(python_varlink_server, timeout=30) as client:
        assert await client.call(Add(a=1, b=2)) == 3
        assert [item async for item in client.stream(Count(n=3))] == [0, 1, 2]
        with pytest.raises(DivisionByZero):
            await client.call(Divide(a=7, b=0))
        await client.notify(Remember(note="async oneway"))
        assert "async oneway" in (await client.call(RecallNotes())).notes
        results: list[int] = []

        async def one(n: int) -> None:
            results.append(await client.call(Add(a=n, b=0)))

        import anyio

        async with anyio.create_task_group() as group:
            for n in range(6):
                group.start_soon(one, n)
        assert sorted(results) == list(range(6))
        assert len((await client.call(Big(size=BIG))).data) == BIG


def test_a_stream_left_early_closes_the_connection(python_varlink_server: str) -> None:
    with VarlinkClient(python_varlink_server, timeout=30) as client:
        stream = client.stream(Count(n=100_000))  # more than one read holds
        assert next(stream) == 0
        stream.close()  # type: ignore[attr-defined]
        with pytest.raises(ConnectionBrokenError, match="left before its end"):
            client.call(Add(a=1, b=1))


# -- a stalling server: timeouts and cancels fail what is queued ------------------------------


@pytest.fixture
def silent_server(sock_dir: str) -> Iterator[str]:
    """Accepts and reads, never answers."""
    path = os.path.join(sock_dir, "silent.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def run() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield path
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def test_a_timeout_closes_the_connection_and_fails_what_was_queued(silent_server: str) -> None:
    with VarlinkClient(silent_server, timeout=0.2) as client:
        failures: list[BaseException] = []

        def queued() -> None:
            try:
                client.call(Add(a=1, b=1), timeout=30)
            except BaseException as exc:
                failures.append(exc)

        first_sent = threading.Event()
        thread = threading.Thread(target=lambda: (first_sent.wait(), queued()))
        thread.start()
        first_sent.set()
        with pytest.raises(TimeoutError, match="connection was closed"):
            client.call(Add(a=1, b=1))
        thread.join()
        with pytest.raises(ConnectionBrokenError, match="timed out"):
            client.call(Add(a=1, b=1))
        if failures:  # the second call was queued behind the first one
            assert isinstance(failures[0], (ConnectionBrokenError, TimeoutError))


@pytest.mark.anyio
async def test_a_cancelled_call_closes_the_connection(silent_server: str) -> None:
    import anyio

    async with AsyncVarlinkClient(silent_server) as client:
        with anyio.move_on_after(0.1):
            await client.call(Add(a=1, b=1))
        with pytest.raises(ConnectionBrokenError, match="cancelled"):
            await client.call(Add(a=1, b=1))


# -- asyncvarlink's server: fds both ways -----------------------------------------------------


@pytest.fixture(scope="module")
def asyncvarlink_server() -> Iterator[str]:
    asyncvarlink = pytest.importorskip("asyncvarlink", reason="asyncvarlink is not installed")
    directory = Path(__import__("tempfile").mkdtemp(prefix="avl", dir="/tmp"))
    path = str(directory / "peer.sock")

    from varlink_peers import fd_peer

    ready = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def main() -> None:
        registry = asyncvarlink.VarlinkInterfaceRegistry()
        registry.register_interface(fd_peer())
        server = await asyncvarlink.create_unix_server(registry.protocol_factory, path)
        ready.set()
        async with server:
            await stop.wait()

    def run() -> None:
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(30)
    try:
        yield path
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        shutil.rmtree(directory, ignore_errors=True)


class ReadFrom(Method[str], name="org.example.fds.ReadFrom"):
    fd: FD


class GetPipe(Method[FD], name="org.example.fds.Pipe"):
    pass


class FdAdd(Method[int], name="org.example.fds.Add"):
    a: int
    b: int


class FdEcho(Method[EchoReply], name="org.example.fds.Echo"):
    data: str


class FdCount(StreamMethod[int], name="org.example.fds.Count"):
    n: int


def _pipe_with(data: bytes) -> int:
    read, write = os.pipe()
    os.write(write, data)
    os.close(write)
    return read


def test_fds_both_ways_with_asyncvarlink(asyncvarlink_server: str) -> None:
    from unixrpc import FileDescriptor

    with VarlinkClient(asyncvarlink_server, timeout=30) as client:
        read = _pipe_with(b"to asyncvarlink")
        assert client.call(ReadFrom(fd=FileDescriptor.transfer(read))) == "to asyncvarlink"
        with client.call(GetPipe()) as received:
            assert os.read(received.fileno(), 100) == b"from asyncvarlink"
        # a call without fds, then one with: each gets its own (systemd issue 43823)
        first, pipe, last = client.pipeline([FdAdd(a=1, b=2), GetPipe(), FdAdd(a=3, b=4)])
        with pipe:
            assert (first, os.read(pipe.fileno(), 100), last) == (3, b"from asyncvarlink", 7)
        assert list(client.stream(FdCount(n=3))) == [0, 1, 2]
        big = "x" * BIG
        assert client.call(FdEcho(data=big)).data == big


@pytest.mark.anyio
async def test_async_fds_both_ways_with_asyncvarlink(asyncvarlink_server: str) -> None:
    from unixrpc import FileDescriptor

    async with AsyncVarlinkClient(asyncvarlink_server, timeout=30) as client:
        read = _pipe_with(b"async to asyncvarlink")
        assert await client.call(ReadFrom(fd=FileDescriptor.transfer(read))) == "async to asyncvarlink"
        with await client.call(GetPipe()) as received:
            assert os.read(received.fileno(), 100) == b"from asyncvarlink"
        assert await client.call(FdAdd(a=1, b=2)) == 3
        assert [item async for item in client.stream(FdCount(n=2))] == [0, 1]
        big = "y" * BIG
        assert (await client.call(FdEcho(data=big))).data == big


# -- systemd 252's systemd-userwork ------------------------------------------------------------


def _userwork_binary() -> Path:
    """systemd-userwork from Debian's systemd-userdbd package, unpacked in a cache dir."""
    found = shutil.which("systemd-userwork") or "/lib/systemd/systemd-userwork"
    if os.access(found, os.X_OK):
        return Path(found)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "unixrpc-tests" / "userdbd"
    binary = cache / "root" / "lib" / "systemd" / "systemd-userwork"
    if binary.exists():
        return binary
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("systemd-userwork needs Debian's systemd-userdbd package (no apt-get/dpkg-deb here)")
    cache.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["apt-get", "download", "systemd-userdbd"], cwd=cache, capture_output=True, text=True, check=False
    )
    debs = sorted(cache.glob("systemd-userdbd_*.deb"))
    if done.returncode != 0 or not debs:
        pytest.skip(f"apt-get download systemd-userdbd failed: {done.stderr.strip()[-300:]}")
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(cache / "root")], check=True)
    if not binary.exists():
        pytest.skip("the systemd-userdbd package holds no lib/systemd/systemd-userwork")
    return binary


@pytest.fixture(scope="session")
def userwork() -> Iterator[str]:
    binary = _userwork_binary()
    directory = Path(__import__("tempfile").mkdtemp(prefix="uw", dir="/tmp"))
    path = str(directory / "io.systemd.Multiplexer")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)

    def hand_over() -> None:  # in the child: the listener as fd 3 (sd_listen_fds)
        os.dup2(listener.fileno(), 3, inheritable=True)

    # LISTEN_PID must be the worker's own pid: sh exports it and execs in place;
    # USERDB_FIXED_WORKER keeps it from signalling its parent (userdbd, normally)
    command = f'LISTEN_PID=$$ LISTEN_FDS=1 USERDB_FIXED_WORKER=1 exec "{binary}"'
    process = subprocess.Popen(["sh", "-c", command], preexec_fn=hand_over, close_fds=False)
    listener.close()
    try:
        yield path
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def userdb() -> dict[str, Any]:
    """The Method classes generated from io.systemd.UserDatabase's IDL (systemd 252
    answers neither GetInfo nor GetInterfaceDescription: the IDL ships in tests/)."""
    source = generate((HERE / "io.systemd.UserDatabase.varlink").read_text())
    namespace: dict[str, Any] = {"__name__": "userdb_generated"}
    import sys
    import types

    module = types.ModuleType("userdb_generated")
    sys.modules["userdb_generated"] = module
    exec(compile(source, "userdb_generated.py", "exec"), module.__dict__)
    namespace.update(module.__dict__)
    return namespace


def test_systemd_userwork_answers_a_typed_call(userwork: str, userdb: dict[str, Any]) -> None:
    get_user = userdb["GetUserRecord"]
    with VarlinkClient(userwork, timeout=30) as client:
        reply = client.call(get_user(userName="root", service="io.systemd.NameServiceSwitch"))
        assert reply.record["uid"] == 0
        assert reply.record["userName"] == "root"
        by_uid = list(client.stream(get_user(uid=0, service="io.systemd.NameServiceSwitch")))
        assert [record.record["userName"] for record in by_uid] == ["root"]
        with pytest.raises(userdb["NoRecordFound"]):
            client.call(get_user(userName="no-such-user-here", service="io.systemd.NameServiceSwitch"))
        with pytest.raises(RPCError, match="MethodNotImplemented") as caught:
            client.call_by_name("org.varlink.service.GetInfo")
        assert caught.value.code == "org.varlink.service.MethodNotImplemented"


@pytest.mark.anyio
async def test_systemd_userwork_async(userwork: str, userdb: dict[str, Any]) -> None:
    get_user = userdb["GetUserRecord"]
    async with AsyncVarlinkClient(userwork, timeout=30) as client:
        reply = await client.call(get_user(uid=0, service="io.systemd.NameServiceSwitch"))
        assert reply.record["userName"] == "root"


# -- the IDL of the example methods parses with python-varlink's scanner -------------------------


def test_generated_idl_is_read_by_python_varlink() -> None:
    from unixrpc.varlink.idl import describe

    text = describe("org.example.peer", [Add, Where, Count, EchoData, Remember, Divide], [DivisionByZero])
    interface = varlink.Interface(text)
    assert interface.name == "org.example.peer"
    assert {"Add", "Where", "Count", "Echo", "Remember", "Divide", "DivisionByZero", "Point"} - {
        "Point"
    } <= set(interface.members)


def test_a_read_with_no_time_left_is_a_timeout_not_a_broken_read(sock_dir: str) -> None:
    """A caller that gets the read lock just as its deadline passes reads
    with 0 s left: that must be the call's TimeoutError, not the
    non-blocking socket's ``EAGAIN`` taken for a failed read."""
    path = os.path.join(sock_dir, "silent")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    try:
        with VarlinkClient(path, timeout=5) as client:
            peer, _ = listener.accept()
            try:
                with pytest.raises(TimeoutError):
                    client._read(0.0)
                with pytest.raises(ConnectionBrokenError, match="timed out"):  # the connection is closed
                    client.call_by_name("org.example.Next", {})
            finally:
                peer.close()
    finally:
        listener.close()
