"""A unixrpc daemon answering varlink clients on its own socket (issue 17,
server half), on every engine, real sockets: python-varlink's client and
``python -m varlink.cli``, asyncvarlink's client (descriptors both ways),
unixrpc's own varlink client (pipelining in order, streams, oneway,
descriptors), raw sockets for what clients never send (malformed and
oversized messages, descriptors on merged messages), introspection, and
what is left open afterwards (descriptors, the memory budget)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from unixrpc import FD, Client, FileDescriptor, Method, RPCError, Server, StreamMethod
from unixrpc.varlink.client import VarlinkClient
from unixrpc.varlink.idl import parse

varlink = pytest.importorskip("varlink", reason="python-varlink is not installed (pip install varlink)")

pytestmark = pytest.mark.server

IFACE = "org.example.calc"


class DivisionByZero(RPCError, code="calc.DivisionByZero"):
    dividend: int


class Add(Method[int], name="calc.Add"):
    """a + b."""

    a: int
    b: int


class Divide(Method[int], name="calc.Divide", errors=[DivisionByZero]):
    a: int
    b: int


class Slow(Method[str], name="calc.Slow"):
    seconds: float
    tag: str


class Count(StreamMethod[int], name="calc.Count"):
    n: int


class Forever(StreamMethod[int], name="calc.Forever"):
    pass


class Remember(Method[None], name="calc.Remember"):
    note: str


class Recall(Method[list[str]], name="calc.Recall"):
    pass


class ReadFrom(Method[str], name="calc.ReadFrom"):
    fd: FD


class Piped(BaseModel):
    fd: FD
    note: str


class Pipe(Method[Piped], name="calc.Pipe"):
    note: str


class State:
    def __init__(self) -> None:
        self.notes: list[str] = []
        self.running = 0
        self.most = 0
        self.ended = threading.Event()  # a Forever stream's generator was closed


def make_server(state: State, **options: Any) -> Server:
    server = Server(name=IFACE, version="1.0", varlink_vendor="unixrpc tests", **options)

    @server.method(Add)
    async def add(request: Add) -> int:
        return request.a + request.b

    @server.method(Divide)
    def divide(request: Divide) -> int:
        if request.b == 0:
            raise DivisionByZero(dividend=request.a)
        return request.a // request.b

    @server.method(Slow)
    async def slow(request: Slow) -> str:
        state.running += 1
        state.most = max(state.most, state.running)
        try:
            await anyio.sleep(request.seconds)
        finally:
            state.running -= 1
        return request.tag

    @server.method(Count)
    def count(request: Count) -> Iterator[int]:
        yield from range(request.n)

    @server.method(Forever)
    async def forever(request: Forever) -> AsyncIterator[int]:
        try:
            n = 0
            while True:
                yield n
                n += 1
                await anyio.sleep(0.005)
        finally:
            state.ended.set()

    @server.method(Remember)
    def remember(request: Remember) -> None:
        state.notes.append(request.note)

    @server.method(Recall)
    def recall(request: Recall) -> list[str]:
        return list(state.notes)

    @server.method(ReadFrom)
    def read_from(request: ReadFrom) -> str:
        return os.read(request.fd.fileno(), 100).decode()

    @server.method(Pipe)
    def pipe(request: Pipe) -> Piped:
        return Piped(fd=FileDescriptor.transfer(_pipe_with(request.note.encode())), note=request.note)

    return server


def as_varlink(cls: Any) -> Any:
    """*cls* under its qualified varlink name (what a varlink client sends)."""
    return type(cls.__name__, (cls,), {}, name=f"{IFACE}.{cls.__name__}")


VAdd, VDivide, VSlow, VCount, VRemember, VRecall, VReadFrom, VPipe = map(
    as_varlink, (Add, Divide, Slow, Count, Remember, Recall, ReadFrom, Pipe)
)


def _pipe_with(data: bytes) -> int:
    read, write = os.pipe()
    os.write(write, data)
    os.close(write)
    return read


@contextmanager
def serving(server: Server, sock_dir: str, backend: str) -> Iterator[str]:
    path = os.path.join(sock_dir, "calc.sock")
    with server.serve_in_thread(path, backend=backend):
        yield path
    assert server._rules.memory.total == 0  # every connection gave its charge back
    assert server._rules.fd_budget.total == 0


@pytest.fixture
def state() -> State:
    return State()


@pytest.fixture
def calc(state: State, sock_dir: str, server_backend: str, no_fd_leak: None) -> Iterator[str]:
    with serving(make_server(state), sock_dir, server_backend) as path:
        yield path


def raw(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    return sock


def replies(sock: socket.socket, count: int) -> list[dict[str, Any]]:
    data = b""
    while data.count(b"\0") < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return [json.loads(part) for part in data.split(b"\0")[:count]]


def message(method: str, **fields: Any) -> bytes:
    return json.dumps({"method": f"{IFACE}.{method}", **fields}).encode() + b"\0"


# -- peers nobody here wrote ------------------------------------------------------------------


def test_python_varlink_calls_streams_errors_and_introspects(calc: str, state: State) -> None:
    with varlink.Client(address="unix:" + calc) as client:
        with client.open(IFACE) as calc_iface:  # reads our GetInterfaceDescription with its scanner
            assert calc_iface.Add(a=1, b=2) == {"result": 3}
            assert list(calc_iface.Count(3, _more=True)) == [{"item": 0}, {"item": 1}, {"item": 2}, {}]
            with pytest.raises(varlink.VarlinkError) as caught:
                calc_iface.Divide(a=7, b=0)
            assert caught.value.error() == f"{IFACE}.DivisionByZero"
            assert caught.value.parameters() == {"dividend": 7}
            calc_iface.Remember(note="one", _oneway=True)
            assert calc_iface.Recall() == {"result": ["one"]}
        with client.open("org.varlink.service") as service:
            info = service.GetInfo()
            assert info == {
                "vendor": "unixrpc tests",
                "product": IFACE,
                "version": "1.0",
                "url": "",
                "interfaces": [IFACE, "org.varlink.service"],
            }
            description = service.GetInterfaceDescription(IFACE)["description"]
            assert "method Add(a: int, b: int) -> (result: int)" in description
            assert "error DivisionByZero (dividend: int)" in description
            assert parse(description).name == IFACE
            assert (
                "interface org.varlink.service"
                in service.GetInterfaceDescription("org.varlink.service")["description"]
            )
            with pytest.raises(varlink.VarlinkError) as caught:
                service.GetInterfaceDescription("org.example.nope")
            assert caught.value.error() == "org.varlink.service.InterfaceNotFound"
            assert caught.value.parameters() == {"interface": "org.example.nope"}
    assert state.notes == ["one"]


def test_python_varlink_cli(calc: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-m", "varlink.cli", "call", f"unix:{calc}/{IFACE}.Add", '{"a": 40, "b": 2}'],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"result": 42}
    out = subprocess.run(
        [sys.executable, "-m", "varlink.cli", "info", f"unix:{calc}"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert IFACE in out.stdout


def test_asyncvarlink_client_with_descriptors_both_ways(calc: str) -> None:
    asyncvarlink = pytest.importorskip("asyncvarlink", reason="asyncvarlink is not installed")
    from varlink_peers import calc_interface

    async def main() -> None:
        transport, protocol = await asyncvarlink.connect_unix_varlink(
            asyncvarlink.VarlinkClientProtocol, calc
        )
        try:
            proxy = protocol.make_proxy(calc_interface())
            assert await proxy.Add(a=2, b=3) == {"result": 5}
            read = _pipe_with(b"to the daemon")
            try:
                reply = await proxy.ReadFrom(fd=asyncvarlink.FileDescriptor(read))
                assert reply == {"result": "to the daemon"}
            finally:
                os.close(read)
            with await proxy.Pipe(note="back") as piped:
                assert piped["note"] == "back"
                assert os.read(piped["fd"].fileno(), 100) == b"back"
            assert [item async for item in proxy.Count(n=2)] == [{"item": 0}, {"item": 1}, {}]
        finally:
            transport.close()

    asyncio.run(main())


# -- unixrpc's own varlink client --------------------------------------------------------------


def test_pipelined_calls_run_one_at_a_time_and_are_answered_in_order(calc: str, state: State) -> None:
    with VarlinkClient(calc, timeout=30) as client:
        batch: list[Method[Any]] = [
            VSlow(seconds=0.05, tag="first"),
            VAdd(a=1, b=1),
            VSlow(seconds=0.01, tag="third"),
            VDivide(a=9, b=3),
        ]
        assert client.pipeline(batch) == ["first", 2, "third", 3]
    assert state.most == 1


def test_streams_oneway_and_descriptors(calc: str, state: State) -> None:
    with VarlinkClient(calc, timeout=30) as client:
        assert list(client.stream(VCount(n=4))) == [0, 1, 2, 3]
        client.notify(VRemember(note="quiet"))
        assert client.call(VRecall()) == ["quiet"]
        read = _pipe_with(b"by index")
        with FileDescriptor.transfer(read) as handle:
            assert client.call(VReadFrom(fd=handle)) == "by index"
        piped = client.call(VPipe(note="fd back"))
        with piped.fd:
            assert os.read(piped.fd.fileno(), 100) == b"fd back"


def test_unixrpc_and_varlink_clients_share_the_socket(calc: str) -> None:
    with VarlinkClient(calc, timeout=30) as vl, Client(calc) as rpc:
        for n in range(20):
            assert vl.call(VAdd(a=n, b=1)) == rpc.call(Add(a=n, b=1)) == n + 1


# -- what clients never send -------------------------------------------------------------------


def test_descriptors_of_messages_the_kernel_joins_go_to_their_own_message(calc: str) -> None:
    """systemd issue 43823: a oneway call without descriptors then a call
    with one, sent back to back (one read may hold both), and the reverse."""
    with raw(calc) as sock:
        for _ in range(20):
            read = _pipe_with(b"mine")
            sock.send(message("Remember", parameters={"note": "x"}, oneway=True))
            sock.sendmsg(
                [message("ReadFrom", parameters={"fd": 0})],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, read.to_bytes(4, sys.byteorder))],
            )
            os.close(read)
            read = _pipe_with(b"again")
            sock.sendmsg(
                [message("ReadFrom", parameters={"fd": 0})],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, read.to_bytes(4, sys.byteorder))],
            )
            os.close(read)
            sock.send(message("Add", parameters={"a": 1, "b": 2}))
            assert replies(sock, 3) == [
                {"parameters": {"result": "mine"}},
                {"parameters": {"result": "again"}},
                {"parameters": {"result": 3}},
            ]


def test_a_malformed_message_is_answered_and_the_connection_goes_on(calc: str) -> None:
    with raw(calc) as sock:
        sock.send(b"{not json}\0" + message("Add", parameters={"a": 1, "b": 1}, bogus=True))
        sock.send(message("Add", parameters={"a": 1, "b": 1}))
        sock.send(message("Nope") + message("Add", parameters={"a": "x", "b": 1}))
        got = replies(sock, 5)
        assert [reply.get("error") for reply in got] == [
            "org.unixrpc.ProtocolError",
            "org.unixrpc.ProtocolError",
            None,
            "org.varlink.service.MethodNotFound",
            "org.varlink.service.InvalidParameter",
        ]
        assert got[2] == {"parameters": {"result": 2}}
        assert got[3]["parameters"] == {"method": f"{IFACE}.Nope"}
        assert got[4]["parameters"] == {"parameter": "a"}


def test_a_message_over_the_limit_closes_the_connection(
    state: State, sock_dir: str, server_backend: str, no_fd_leak: None
) -> None:
    with (
        serving(make_server(state, max_frame_size=4096), sock_dir, server_backend) as path,
        raw(path) as sock,
    ):
        sock.send(message("Add", parameters={"a": 1, "b": 2}))
        assert replies(sock, 1) == [{"parameters": {"result": 3}}]
        with contextlib.suppress(OSError):  # the server may reset it while this still sends
            sock.sendall(b'{"method":"' + b"x" * 8192)
        assert sock.recv(100) == b""  # closed, with no reply (varlink has none about the connection)


def test_a_client_that_leaves_cancels_its_call(calc: str, state: State) -> None:
    with raw(calc) as sock:
        sock.send(message("Forever", more=True))
        first = replies(sock, 2)
        assert first == [
            {"parameters": {"item": 0}, "continues": True},
            {"parameters": {"item": 1}, "continues": True},
        ]
    assert state.ended.wait(10)
    with VarlinkClient(calc, timeout=30) as client:  # the server goes on
        assert client.call(VAdd(a=1, b=2)) == 3


def test_with_varlink_off_varlink_bytes_are_a_protocol_error(
    state: State, sock_dir: str, server_backend: str, no_fd_leak: None
) -> None:
    with serving(make_server(state, varlink=False), sock_dir, server_backend) as path:
        with raw(path) as sock:
            sock.send(message("Add", parameters={"a": 1, "b": 2}))
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert b"unixrpc.ProtocolError" in data  # a unixrpc frame, then the end
        with Client(path) as client:
            assert client.call(Add(a=1, b=2)) == 3


def test_pipelined_calls_after_which_the_client_stops_sending_are_all_answered(calc: str) -> None:
    with raw(calc) as sock:
        sock.send(b"".join(message("Slow", parameters={"seconds": 0.01, "tag": str(n)}) for n in range(5)))
        sock.shutdown(socket.SHUT_WR)
        assert [reply["parameters"]["result"] for reply in replies(sock, 5)] == ["0", "1", "2", "3", "4"]
        assert sock.recv(10) == b""


def test_many_connections_leave_nothing_behind(calc: str) -> None:
    for _ in range(10):
        with VarlinkClient(calc, timeout=30) as client:
            read = _pipe_with(b"x")
            with FileDescriptor.transfer(read) as handle:
                assert client.call(VReadFrom(fd=handle)) == "x"
            assert list(client.stream(VCount(n=3))) == [0, 1, 2]
        time.sleep(0)


# -- the unixrpc command -----------------------------------------------------------------------


def test_the_command_calls_streams_lists_describes_and_generates(
    calc: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from unixrpc.cli import main

    where = f"varlink:{calc}"
    assert main(["call", where, f"{IFACE}.Add", "a=1", "b=2", "--compact"]) == 0
    assert json.loads(capsys.readouterr().out) == {"result": 3}
    assert main(["call", where, f"{IFACE}.Divide", '{"a": 1, "b": 0}']) == 1
    assert json.loads(capsys.readouterr().err)["error"]["data"] == {"dividend": 1}
    assert main(["call", where, f"{IFACE}.Nope"]) == 4
    capsys.readouterr()
    source = tmp_path / "note.txt"
    source.write_text("pushed")
    assert main(["call", where, f"{IFACE}.ReadFrom", "fd=0", "--push-fd", str(source)]) == 0
    assert json.loads(capsys.readouterr().out) == {"result": "pushed"}
    saved = tmp_path / "saved.txt"
    assert main(["call", where, f"{IFACE}.Pipe", "note=back", "--save-fd", str(saved)]) == 0
    capsys.readouterr()
    assert saved.read_text() == "back"
    assert main(["stream", where, f"{IFACE}.Count", "n=2"]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == [{"item": 0}, {"item": 1}]
    assert main(["list", where]) == 0
    assert f"{IFACE}.Add" in capsys.readouterr().out.split()
    assert main(["describe", where, IFACE]) == 0
    assert "method Add(a: int, b: int) -> (result: int)" in capsys.readouterr().out
    assert main(["varlink-codegen", where, "--stream", "Count", "-o", str(tmp_path / "calc.py")]) == 0
    code = (tmp_path / "calc.py").read_text()
    assert "class Add(Method[int], name='org.example.calc.Add'):" in code
    assert "StreamMethod" in code
    assert main(["ping", where]) == 2
